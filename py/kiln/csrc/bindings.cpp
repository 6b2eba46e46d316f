// kiln._C: Python bindings of the engine. Handles are plain ids and names here; py/kiln wraps
// them into the Pythonic API (numpy arrays and torch tensors in, Tensor/Layer objects out).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <stdexcept>
#include <variant>

#include "core/builder.h"
#include "core/calibration.h"
#include "core/engine.h"
#include "core/engine_cache.h"
#include "core/plugin.h"
#include "core/refit.h"
#include "ir/error.h"
#include "ir/logging.h"
#include "ir/op_schema.h"
#include "ir/progress.h"
#include "kernels/device.h"
#include "kernels/fused_pointwise_codegen.h"
#include "kernels/plan_kernel_trust.h"

namespace py = pybind11;
using namespace kiln;

namespace {

// The GIL is handled with the plain CPython API, not pybind11's helpers: torch loads its own
// pybind11 into the process, and pybind11's GIL bookkeeping lives in state the two may share.

// Releases the GIL for the scope (long C++ work that never touches Python objects).
class GilRelease {
 public:
  GilRelease() : state_(PyEval_SaveThread()) {}
  ~GilRelease() { PyEval_RestoreThread(state_); }
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* state_;
};

// A `with` block of kiln._C.plan_kernel_trust: the scope lives from __enter__ to __exit__, on the
// thread running the block.
struct PlanKernelTrustBlock {
  explicit PlanKernelTrustBlock(bool t) : trusted(t) {}
  bool trusted;
  std::optional<ScopedPlanKernelTrust> scope;
};

// A Python callable that C++ may call from any thread, with or without the GIL held.
class PyCallable {
 public:
  explicit PyCallable(PyObject* fn) : fn_(fn) { Py_INCREF(fn_); }
  ~PyCallable() {
    if (!Py_IsInitialized()) return;
    PyGILState_STATE g = PyGILState_Ensure();
    Py_DECREF(fn_);
    PyGILState_Release(g);
  }
  PyCallable(const PyCallable&) = delete;
  PyCallable& operator=(const PyCallable&) = delete;

  void call_progress(const std::string& task, int64_t done, int64_t total) const {
    if (!Py_IsInitialized()) return;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject* r = PyObject_CallFunction(fn_, "sLL", task.c_str(), static_cast<long long>(done),
                                        static_cast<long long>(total));
    if (r == nullptr) {
      PyErr_WriteUnraisable(fn_);
    } else {
      Py_DECREF(r);
    }
    PyGILState_Release(g);
  }

  void call(const char* severity, const std::string& message) const {
    if (!Py_IsInitialized()) return;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject* r = PyObject_CallFunction(fn_, "ss", severity, message.c_str());
    if (r == nullptr) {
      PyErr_WriteUnraisable(fn_);
    } else {
      Py_DECREF(r);
    }
    PyGILState_Release(g);
  }

 private:
  PyObject* fn_;
};

// A Python number as an attribute scalar: bool, int, numpy.bool_ and integer types with
// __index__ (numpy integers) are ints, float and types with __float__ (numpy floats) are floats; else
// nothing. An int beyond 64 bits throws std::range_error.
std::optional<std::variant<int64_t, double>> number(py::handle x) {
  PyObject* o = x.ptr();
  if (PyFloat_Check(o)) return PyFloat_AsDouble(o);
  if (!PyLong_Check(o) && (PySequence_Check(o) || PyUnicode_Check(o)))
    return std::nullopt;  // arrays, tensors
  if (!PyLong_Check(o) && py::hasattr(x, "dtype") &&
      py::str(x.attr("dtype").attr("kind")).equal(py::str("b"))) {
    const int truth = PyObject_IsTrue(o);  // numpy.bool_ has no __index__
    if (truth < 0) throw py::error_already_set();
    return int64_t{truth};
  }
  if (PyIndex_Check(o)) {
    py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(o));
    if (!index) throw py::error_already_set();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
    if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
      PyErr_Clear();
      throw std::range_error(std::string(py::repr(x)) + ", which does not fit a 64-bit int");
    }
    return static_cast<int64_t>(v);
  }
  if (Py_TYPE(o)->tp_as_number != nullptr && Py_TYPE(o)->tp_as_number->nb_float != nullptr) {
    const double v = PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) throw py::error_already_set();
    return v;
  }
  return std::nullopt;
}

// A Python attribute dict: numbers (see number), str, and sequences of numbers (a list, tuple,
// torch.Size or 1-D array: an int list when every element is an int, else a float list).
// check_attributes then refuses names the op does not declare and values of the wrong type;
// here only what has no IR type at all is refused.
Attributes to_attrs(const py::dict& d, const std::string& who) {
  Attributes attrs;
  for (auto item : d) {
    KILN_CHECK(py::isinstance<py::str>(item.first),
               who << ": attribute names are strings, got " << std::string(py::repr(item.first)));
    const std::string name = py::str(item.first);
    py::handle v = item.second;
    const auto fail = [&](const std::string& why) {
      KILN_FAIL(who << ": attribute '" << name << "' is " << why
                    << "; an attribute is a bool, int, float, str, or a list of numbers (docs/ops.md)");
    };
    try {
      if (py::isinstance<py::str>(v)) {
        attrs.set(name, v.cast<std::string>());
      } else if (auto x = number(v)) {
        std::visit([&](auto value) { attrs.set(name, value); }, *x);
      } else if (PySequence_Check(v.ptr()) && !PyBytes_Check(v.ptr()) && !PyByteArray_Check(v.ptr())) {
        std::vector<int64_t> ints;
        std::vector<double> floats;
        bool all_int = true;
        for (py::handle e : py::reinterpret_borrow<py::sequence>(v)) {
          auto x = number(e);
          if (!x) fail("a sequence holding " + std::string(py::repr(e)));
          all_int &= std::holds_alternative<int64_t>(*x);
          std::visit([&](auto value) { floats.push_back(static_cast<double>(value)); }, *x);
          if (all_int) ints.push_back(std::get<int64_t>(*x));
        }
        if (all_int) {
          attrs.set(name, std::move(ints));
        } else {
          attrs.set(name, std::move(floats));
        }
      } else {
        fail("of Python type " + std::string(py::str(py::type::handle_of(v).attr("__name__"))));
      }
    } catch (const py::error_already_set& e) {
      fail(std::string(py::repr(v)) + ", which could not be read (" + e.what() + ")");
    } catch (const std::range_error& e) {
      fail(e.what());
    }
  }
  return attrs;
}

py::dict from_attrs(const Attributes& attrs) {
  py::dict d;
  for (const auto& [name, value] : attrs.values()) {
    std::visit([&](const auto& v) { d[py::str(name)] = py::cast(v); }, value);
  }
  return d;
}

// The numpy dtype of a binding's host array. numpy has no bfloat16: its 16-bit patterns travel
// as int16 (py/kiln/engine.py views them as torch.bfloat16 or ml_dtypes.bfloat16).
std::string numpy_dtype_name(DataType t) {
  switch (t) {
    case DataType::kBool:
      return "bool";
    case DataType::kBFloat16:
      return "int16";
    default:
      return dtype_name(t);
  }
}

// Refit's weights from Python: names, Kiln dtype names, dims and raw buffers (kiln/engine.py
// prepares them with as_numpy). Contiguous buffers are read in place (`data` outlives the refit
// call); others are copied.
std::map<std::string, ConstantValue> weights_from_buffers(const std::vector<std::string>& names,
                                                          const std::vector<std::string>& dtypes,
                                                          const std::vector<Dims>& dims,
                                                          const std::vector<py::buffer>& data) {
  KILN_CHECK(names.size() == dtypes.size() && names.size() == dims.size() && names.size() == data.size(),
             "refit: names, dtypes, dims and data differ in length");
  std::map<std::string, ConstantValue> weights;
  for (size_t i = 0; i < names.size(); ++i) {
    py::buffer_info info = data[i].request();
    ConstantValue value{parse_dtype(dtypes[i]), dims[i], nullptr};
    const auto* b = static_cast<const uint8_t*>(info.ptr);
    const size_t n = static_cast<size_t>(info.size * info.itemsize);
    ssize_t stride = info.itemsize;
    bool contiguous = true;
    for (ssize_t d = info.ndim - 1; d >= 0; --d) {
      contiguous = contiguous && (info.shape[d] == 1 || info.strides[d] == stride);
      stride *= info.shape[d];
    }
    if (contiguous) {
      value.borrowed = b;
      value.borrowed_size = n;
    } else {
      py::array copy = py::array::ensure(data[i], py::array::c_style);
      KILN_CHECK(copy, "refit: weight '" << names[i] << "' is not an array");
      const auto* c = static_cast<const uint8_t*>(copy.data());
      value.data = std::make_shared<std::vector<uint8_t>>(c, c + n);
    }
    weights[names[i]] = std::move(value);
  }
  return weights;
}

// Runs the engine on host arrays: copies in, runs, copies out, synchronizes. Works on both
// backends; the torch-tensor path in py/kiln avoids the copies.
py::dict execute_host(ExecutionContext& ctx, const py::dict& feed) {
  const Engine& engine = ctx.engine();
  const bool cuda = engine.backend() == Backend::kCuda;
  std::vector<py::array> keep;
  std::vector<void*> device_buffers;
  auto cleanup = [&] {
    for (void* p : device_buffers) device_free(p);
  };
  try {
    for (const auto& name : engine.input_names()) {
      KILN_CHECK(feed.contains(name), "missing input '" << name << "'");
      const Tensor& t = engine.binding(name);
      py::array arr = py::array::ensure(feed[py::str(name)], py::array::c_style);
      KILN_CHECK(arr, "input '" << name << "' is not array-like");
      py::dtype want = py::dtype(numpy_dtype_name(t.dtype));
      KILN_CHECK(arr.dtype().is(want) || arr.dtype().equal(want),
                 "input '" << name << "' has dtype " << std::string(py::str(arr.dtype()))
                           << ", the engine expects " << dtype_name(t.dtype)
                           << "; convert it first (e.g. x.astype(np." << numpy_dtype_name(t.dtype) << "))");
      Dims dims(arr.shape(), arr.shape() + arr.ndim());
      if (!is_static(t.dims) || dims != t.dims) ctx.set_input_shape(name, dims);
      keep.push_back(arr);
      size_t bytes = static_cast<size_t>(arr.nbytes());
      if (cuda) {
        void* d = device_alloc(bytes);
        device_buffers.push_back(d);
        copy_to_device(d, arr.data(), bytes);
        ctx.set_tensor_address(name, d);
      } else {
        ctx.set_tensor_address(name, const_cast<void*>(arr.data()));
      }
    }
    const std::vector<std::string> in = engine.input_names();
    for (auto item : feed) {
      std::string name = py::str(item.first);
      KILN_CHECK(std::find(in.begin(), in.end(), name) != in.end(),
                 "'" << name << "' is not an input of this engine");
    }
    py::dict result;
    std::vector<std::pair<py::array, void*>> outs;
    for (const auto& name : engine.output_names()) {
      const Tensor& t = engine.binding(name);
      Dims dims = ctx.tensor_shape(name);
      py::array arr(py::dtype(numpy_dtype_name(t.dtype)), std::vector<py::ssize_t>(dims.begin(), dims.end()));
      void* target = arr.mutable_data();
      if (cuda) {
        target = device_alloc(static_cast<size_t>(arr.nbytes()));
        device_buffers.push_back(target);
      }
      ctx.set_tensor_address(name, target);
      outs.push_back({arr, target});
      result[py::str(name)] = arr;
    }
    {
      GilRelease release;
      ctx.enqueue(nullptr);
      if (cuda) synchronize_stream(nullptr);
    }
    if (cuda) {
      for (auto& [arr, d] : outs) copy_to_host(arr.mutable_data(), d, static_cast<size_t>(arr.nbytes()));
    }
    cleanup();
    return result;
  } catch (...) {
    cleanup();
    throw;
  }
}

Backend parse_backend(const std::string& s) {
  if (s == "cuda") return Backend::kCuda;
  if (s == "reference" || s == "cpu") return Backend::kReference;
  KILN_FAIL("unknown backend '" << s << "': use 'cuda' or 'reference'");
}

// A Python kiln Int8Calibrator subclass (py/kiln/calibration.py's NetworkCalibrator): get_batch
// returns None when done, else one array per input name; they stay alive until the next call.
class PyInt8Calibrator : public Int8Calibrator {
 public:
  bool get_batch(const std::vector<std::string>& names, std::vector<CalibrationInput>& batch) override {
    py::gil_scoped_acquire gil;
    keep_.clear();
    py::function f = py::get_override(static_cast<const Int8Calibrator*>(this), "get_batch");
    KILN_CHECK(f, "the calibrator does not implement get_batch");
    py::object arrays = f(names);
    if (arrays.is_none()) return false;
    py::list items(arrays);
    KILN_CHECK(items.size() == names.size(), "the calibrator's get_batch gave "
                                                 << items.size() << " arrays for " << names.size()
                                                 << " network inputs");
    for (size_t i = 0; i < names.size(); ++i) {
      py::array arr = py::array::ensure(items[i], py::array::c_style);
      KILN_CHECK(arr, "the calibrator's batch for input '" << names[i] << "' is not array-like");
      keep_.push_back(arr);
      const std::string dtype = py::str(arr.dtype());
      DataType t;
      try {
        t = parse_dtype(dtype);
      } catch (const Error&) {
        KILN_FAIL("the calibrator's batch for input '" << names[i] << "' has dtype " << dtype
                                                       << ", which Kiln networks do not take; convert it "
                                                          "to the input's dtype");
      }
      batch.push_back({names[i], t, Dims(arr.shape(), arr.shape() + arr.ndim()), arr.data()});
    }
    return true;
  }
  std::string read_cache() override { PYBIND11_OVERRIDE(std::string, Int8Calibrator, read_cache, ); }
  void write_cache(const std::string& cache) override {
    PYBIND11_OVERRIDE(void, Int8Calibrator, write_cache, cache);
  }
  CalibrationAlgorithm algorithm() const override {
    py::gil_scoped_acquire gil;
    py::function f = py::get_override(static_cast<const Int8Calibrator*>(this), "algorithm_name");
    return f ? parse_calibration_algorithm(f().cast<std::string>()) : Int8Calibrator::algorithm();
  }
  double percentile() const override { PYBIND11_OVERRIDE(double, Int8Calibrator, percentile, ); }
  int num_bins() const override { PYBIND11_OVERRIDE(int, Int8Calibrator, num_bins, ); }

 private:
  std::vector<py::array> keep_;
};

}  // namespace

// compiler_bindings.cpp: KGraph, converters, partitioner.
void bind_compiler(py::module_& m);
#ifdef KILN_WITH_ONNX
void bind_onnx(py::module_& m);
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "Kiln engine bindings (torch-free core)";
  static py::handle kiln_error =
      py::register_exception<kiln::Error>(m, "KilnError", PyExc_RuntimeError).ptr();
  // Tried before the translator above: the message is decoded with backslashreplace, so that a
  // message quoting bytes that are not UTF-8 (from a corrupt file) still arrives as the
  // KilnError, not as a UnicodeDecodeError raised while reporting it.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const kiln::Error& e) {
      const std::string what = e.what();
      py::object message = py::reinterpret_steal<py::object>(
          PyUnicode_DecodeUTF8(what.data(), static_cast<Py_ssize_t>(what.size()), "backslashreplace"));
      PyErr_SetObject(kiln_error.ptr(), message.ptr());
    }
  });

  m.def("version", &kiln_version_string);
  // The engine cache's checksum of this Kiln build and its trimming (py/kiln/module_cache.py).
  m.def("library_checksum", &kiln_library_checksum);
  // Plugins (core/plugin.h): loading their libraries, and what is registered.
  m.def("load_plugin_library", &load_plugin_library, py::arg("path"));
  m.def("registered_plugins", &registered_plugins);
  m.def("engine_cache_trim", &engine_cache_trim, py::arg("dir"), py::arg("max_bytes"));
  m.def("cuda_device_count", &cuda_device_count);
  // What `kiln info` reports: the versions Kiln was built against and the ones loaded now.
  m.def("versions", [] {
    py::dict d;
    d["cuda_runtime_built"] = cuda_runtime_version();
    d["cublaslt_built"] = cublaslt_version();
    d["cudnn_built"] = cudnn_version();
    d["cudnn_loaded"] = cudnn_runtime_version();
    d["cuda_driver"] = cuda_driver_version();
    return d;
  });
  m.def("cuda_device_name", &cuda_device_name, py::arg("device") = 0);
  m.def(
      "cuda_device_arch", [](int device) { return cuda_device_arch(device); }, py::arg("device") = -1);
  m.def("registered_ops", &registered_ops);
  // The schema of an op: its declared attributes (name, type, default or None, doc) and traits.
  m.def("op_attributes", [](const std::string& op) {
    const OpSchema* schema = find_schema(op);
    KILN_CHECK(schema != nullptr, "unknown op '" << op << "'");
    py::list out;
    for (const AttrSpec& a : schema->attributes) {
      py::object dflt = py::none();
      if (a.default_value.has_value())
        dflt = std::visit([](const auto& v) { return py::cast(v); }, *a.default_value);
      out.append(py::make_tuple(a.name, attr_type_name(a.type), dflt, a.doc));
    }
    return out;
  });
  // The attributes every op accepts besides its own (ir/op_schema.h), as op_attributes lists them.
  m.def("engine_attributes", [] {
    py::list out;
    for (const AttrSpec& a : engine_attributes())
      out.append(py::make_tuple(a.name, attr_type_name(a.type), py::none(), a.doc));
    return out;
  });
  m.def("op_traits", [](const std::string& op) {
    const OpSchema* schema = find_schema(op);
    KILN_CHECK(schema != nullptr, "unknown op '" << op << "'");
    std::vector<std::string> traits;
    for (auto [trait, name] :
         {std::pair{kPointwise, "pointwise"}, std::pair{kView, "view"},
          std::pair{kLayoutTransparent, "layout_transparent"}, std::pair{kTf32Capable, "tf32_capable"}}) {
      if (schema->traits & trait) traits.push_back(name);
    }
    return traits;
  });
  m.def("has_kernel", [](const std::string& op, const std::string& backend) {
    return has_kernel(op, parse_backend(backend));
  });
  m.def("set_log_level", [](const std::string& level) { set_log_level(parse_severity(level)); });
  m.def("log_level", [] { return std::string(severity_name(log_level())); });
  m.def("set_log_sink", [](py::object fn) {
    if (fn.is_none()) {
      set_log_sink(nullptr);
      return;
    }
    auto callable = std::make_shared<PyCallable>(fn.ptr());
    set_log_sink([callable](Severity s, const std::string& msg) { callable->call(severity_name(s), msg); });
  });
  // Progress of long steps (ir/progress.h) to fn(task, done, total); None: no sink.
  m.def("set_progress_sink", [](py::object fn) {
    if (fn.is_none()) {
      set_progress_sink(nullptr);
      return;
    }
    auto callable = std::make_shared<PyCallable>(fn.ptr());
    set_progress_sink([callable](const std::string& task, int64_t done, int64_t total) {
      callable->call_progress(task, done, total);
    });
  });
  m.def("log", [](const std::string& level, const std::string& msg) {
    Severity s = parse_severity(level);
    if (log_enabled(s)) log_message(s, msg);
  });
  // How often this process compiled a generated kernel with NVRTC (tests: a reloaded plan must not).
  m.def("nvrtc_compile_count", &nvrtc_compile_count);
  // Whether engines created on this thread may run the kernel code their plans carry
  // (kernels/plan_kernel_trust.h), and `with plan_kernel_trust(False):` to refuse it for a block.
  m.def("trust_plan_kernels", &trust_plan_kernels);
  py::class_<PlanKernelTrustBlock>(m, "plan_kernel_trust")
      .def(py::init<bool>(), py::arg("trusted"))
      .def("__enter__",
           [](PlanKernelTrustBlock& b) {
             KILN_CHECK(!b.scope, "plan_kernel_trust: this block is entered already");
             b.scope.emplace(b.trusted);
           })
      .def("__exit__", [](PlanKernelTrustBlock& b, const py::args&) { b.scope.reset(); });

  py::class_<Network, std::shared_ptr<Network>>(m, "Network")
      .def(py::init<>())
      .def("add_input", [](Network& n, const std::string& name, const std::string& dtype,
                           const Dims& dims) { return n.add_input(name, parse_dtype(dtype), dims); })
      .def("add_constant",
           [](Network& n, const std::string& name, const std::string& dtype, const Dims& dims,
              py::buffer data) {
             py::buffer_info info = data.request();
             size_t bytes = static_cast<size_t>(info.size * info.itemsize);
             return n.add_constant(name, parse_dtype(dtype), dims, info.ptr, bytes);
           })
      .def("add_layer",
           [](Network& n, const std::string& op, const std::vector<TensorId>& inputs, const py::dict& attrs,
              const std::string& name) {
             const std::string who =
                 name.empty() ? "a new " + op + " layer" : "layer '" + name + "' (" + op + ")";
             Layer& l = n.add_layer(op, inputs, to_attrs(attrs, who), name);
             return py::make_tuple(l.name, l.outputs);
           })
      .def("add_plugin",
           [](Network& n, const std::string& plugin, const std::vector<TensorId>& inputs,
              const py::dict& fields, const std::string& plugin_namespace, const std::string& name) {
             Layer& l = add_plugin(n, plugin, inputs, to_attrs(fields, "plugin '" + plugin + "'"),
                                   plugin_namespace, name);
             return py::make_tuple(l.name, l.op, l.outputs);
           })
      .def("mark_output", &Network::mark_output, py::arg("tensor"), py::arg("name") = "")
      .def("mark_weight", &Network::mark_weight, py::arg("tensor"), py::arg("name"))
      .def("tensor_info",
           [](const Network& n, TensorId id) {
             const Tensor& t = n.tensor(id);
             const char* kind = t.kind == TensorKind::kInput      ? "input"
                                : t.kind == TensorKind::kConstant ? "constant"
                                                                  : "activation";
             return py::make_tuple(t.name, std::string(dtype_name(t.dtype)), t.dims, std::string(kind));
           })
      .def("find_tensor", &Network::find_tensor)
      .def_property_readonly("num_tensors", [](const Network& n) { return n.tensors().size(); })
      .def_property_readonly("inputs", &Network::inputs)
      .def_property_readonly("outputs", &Network::outputs)
      .def("layers", [](const Network& n) {
        py::list out;
        for (const auto& l : n.layers())
          out.append(py::make_tuple(l.name, l.op, l.inputs, l.outputs, from_attrs(l.attrs)));
        return out;
      });

  py::class_<BuilderConfig>(m, "BuilderConfig")
      .def(py::init<>())
      .def_readwrite("workspace_bytes", &BuilderConfig::workspace_bytes)
      .def_readwrite("optimization_level", &BuilderConfig::optimization_level)
      .def_readwrite("tactic_timing", &BuilderConfig::tactic_timing)
      .def_readwrite("timing_cache_path", &BuilderConfig::timing_cache_path)
      .def_property(
          "max_folded_constant_bytes", [](const BuilderConfig& c) { return c.max_folded_constant_bytes; },
          [](BuilderConfig& c, int64_t bytes) {
            KILN_CHECK(bytes >= 0, "BuilderConfig.max_folded_constant_bytes must be >= 0, got " << bytes);
            c.max_folded_constant_bytes = bytes;
          })
      .def_property(
          "precisions", [](const BuilderConfig& c) { return precision_names(c.precision); },
          [](BuilderConfig& c, const std::vector<std::string>& names) {
            c.precision.fp16 = c.precision.bf16 = c.precision.tf32 = c.precision.int8 = false;
            for (const auto& n : names) enable_precision(c.precision, n);
          })
      .def("set_layer_precision",
           [](BuilderConfig& c, const std::string& layer, const std::string& dtype) {
             c.precision.layer_precisions[layer] = parse_dtype(dtype);
           })
      .def_property_readonly("layer_precisions",
                             [](const BuilderConfig& c) {
                               std::map<std::string, std::string> m;
                               for (const auto& kv : c.precision.layer_precisions)
                                 m[kv.first] = dtype_name(kv.second);
                               return m;
                             })
      .def_property(
          "target",
          [](const BuilderConfig& c) {
            return std::string(c.target == BuildTarget::kCuda        ? "cuda"
                               : c.target == BuildTarget::kReference ? "reference"
                                                                     : "auto");
          },
          [](BuilderConfig& c, const std::string& s) { c.target = parse_device(s); })
      .def("add_optimization_profile",
           [](BuilderConfig& c, const std::map<std::string, std::tuple<Dims, Dims, Dims>>& ranges) {
             OptimizationProfile p;
             for (const auto& [name, r] : ranges)
               p.inputs[name] = {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
             c.profiles.push_back(std::move(p));
             return static_cast<int>(c.profiles.size()) - 1;
           })
      .def_property_readonly("num_profiles", [](const BuilderConfig& c) { return c.profiles.size(); })
      .def_readwrite("int8_calibrator", &BuilderConfig::int8_calibrator);

  py::class_<Int8Calibrator, PyInt8Calibrator, std::shared_ptr<Int8Calibrator>>(m, "Int8Calibrator")
      .def(py::init<>());
  m.def(
      "calibrated_range",
      [](const std::vector<double>& hist, double width, const std::string& algorithm, double percentile) {
        return calibrated_range(hist, width, parse_calibration_algorithm(algorithm), percentile);
      },
      py::arg("hist"), py::arg("width"), py::arg("algorithm"), py::arg("percentile") = 99.99);

  py::class_<Plan, std::shared_ptr<Plan>>(m, "Plan")
      .def(
          "serialize",
          [](const Plan& p, bool strip_weights) {
            std::vector<uint8_t> bytes = p.serialize(strip_weights);
            return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
          },
          py::arg("strip_weights") = false)
      .def_property_readonly("weights_stripped", &Plan::weights_stripped)
      .def("refittable_weights",
           [](const Plan& p) {
             py::dict out;
             for (const auto& w : refittable_weights(p.network))
               out[py::str(w.name)] = py::make_tuple(std::string(dtype_name(w.dtype)), w.dims);
             return out;
           })
      .def("_refit",
           [](Plan& p, const std::vector<std::string>& names, const std::vector<std::string>& dtypes,
              const std::vector<Dims>& dims, const std::vector<py::buffer>& data) {
             const auto weights = weights_from_buffers(names, dtypes, dims, data);
             py::gil_scoped_release release;
             refit_plan(p, weights);
           })
      .def_static("deserialize",
                  [](py::buffer b) {
                    py::buffer_info info = b.request();
                    const auto* data = static_cast<const uint8_t*>(info.ptr);
                    size_t size = static_cast<size_t>(info.size * info.itemsize);
                    GilRelease release;
                    return std::make_shared<Plan>(Plan::deserialize(data, size));
                  })
      .def("save", &Plan::save, py::arg("path"), py::arg("strip_weights") = false)
      .def_static("load", [](const std::string& path) { return std::make_shared<Plan>(Plan::load(path)); })
      .def("layers",
           [](const Plan& p) {
             // The optimized layer list: op, chosen kernel, attributes, and (name, dtype, dims) of
             // every input and output (-1 for dynamic dims).
             const Network& n = p.network;
             auto describe_tensor = [&](TensorId id) {
               const Tensor& t = n.tensor(id);
               return py::make_tuple(t.name, std::string(dtype_name(t.dtype)), t.dims);
             };
             py::list out;
             for (size_t i = 0; i < n.layers().size(); ++i) {
               const Layer& l = n.layers()[i];
               py::dict d;
               d["name"] = l.name;
               d["op"] = l.op;
               d["kernel"] = i < p.kernels.size() ? p.kernels[i] : std::string();
               d["attrs"] = from_attrs(l.attrs);
               py::list ins, outs;
               for (TensorId t : l.inputs) ins.append(describe_tensor(t));
               for (TensorId t : l.outputs) outs.append(describe_tensor(t));
               d["inputs"] = ins;
               d["outputs"] = outs;
               // Small numeric constant inputs by value (quantization scales and zero points).
               py::dict constants;
               for (TensorId id : l.inputs) {
                 const Tensor& t = n.tensor(id);
                 if (t.kind != TensorKind::kConstant || !t.data || !is_static(t.dims)) continue;
                 const int64_t count = volume(t.dims);
                 if (count > 4096) continue;
                 py::list values;
                 for (int64_t k = 0; k < count; ++k) {
                   const uint8_t* at = t.data->data() + k * dtype_size(t.dtype);
                   if (t.dtype == DataType::kFloat32) {
                     float v;
                     std::memcpy(&v, at, sizeof v);
                     values.append(static_cast<double>(v));
                   } else if (t.dtype == DataType::kInt64) {
                     int64_t v;
                     std::memcpy(&v, at, sizeof v);
                     values.append(v);
                   } else if (t.dtype == DataType::kInt32) {
                     int32_t v;
                     std::memcpy(&v, at, sizeof v);
                     values.append(v);
                   } else {
                     break;
                   }
                 }
                 if (static_cast<int64_t>(py::len(values)) == count) constants[py::str(t.name)] = values;
               }
               d["constants"] = constants;
               out.append(d);
             }
             return out;
           })
      .def_property_readonly("header",
                             [](const Plan& p) {
                               py::dict d;
                               d["format_version"] = p.header.format_version;
                               d["kiln_version"] = p.header.kiln_version;
                               d["cuda_version"] = p.header.cuda_version;
                               d["cublaslt_version"] = p.header.cublaslt_version;
                               d["cudnn_version"] = p.header.cudnn_version;
                               d["sm_arch"] = p.header.sm_arch;
                               return d;
                             })
      .def_property_readonly("kernels", [](const Plan& p) { return p.kernels; })
      .def_property_readonly("profiles",
                             [](const Plan& p) {
                               // Per optimization profile: input name -> (min, opt, max) dims.
                               py::list out;
                               for (const auto& prof : p.profiles) {
                                 py::dict d;
                                 for (const auto& [name, r] : prof.inputs)
                                   d[py::str(name)] = py::make_tuple(r.min, r.opt, r.max);
                                 out.append(d);
                               }
                               return out;
                             })
      .def_property_readonly("arena_bytes", [](const Plan& p) { return p.memory.arena_bytes; })
      .def_property_readonly(
          "memory",
          [](const Plan& p) {
            // The memory plan: arena and workspace sizes, constant bytes, and
            // (name, offset, bytes) of every activation in the arena.
            py::dict d;
            d["arena_bytes"] = p.memory.arena_bytes;
            d["workspace_bytes"] = p.memory.workspace_bytes;
            int64_t constant_bytes = 0;
            py::list tensors;
            for (const auto& t : p.network.tensors()) {
              if (t.kind == TensorKind::kConstant) constant_bytes += static_cast<int64_t>(t.data->size());
              size_t i = static_cast<size_t>(t.id);
              if (i < p.memory.offsets.size() && p.memory.offsets[i] >= 0)
                tensors.append(py::make_tuple(t.name, p.memory.offsets[i], p.memory.sizes[i]));
            }
            d["constant_bytes"] = constant_bytes;
            d["tensors"] = tensors;
            return d;
          })
      .def_property_readonly("num_layers", [](const Plan& p) { return p.network.layers().size(); });

  py::class_<Builder>(m, "Builder")
      .def(py::init<>())
      .def("build", [](const Builder& b, const Network& n, const BuilderConfig& c) {
        GilRelease release;
        return std::make_shared<Plan>(b.build(n, c));
      });

  py::class_<Engine, std::shared_ptr<Engine>>(m, "Engine")
      .def(py::init([](const Plan& plan, const std::string& backend, bool allow_minor_version_mismatch,
                       std::optional<bool> trusted) {
             std::optional<ScopedPlanKernelTrust> trust;  // None: the thread's setting
             if (trusted) trust.emplace(*trusted);
             return Engine::create(plan, parse_backend(backend), nullptr, allow_minor_version_mismatch);
           }),
           py::arg("plan"), py::arg("backend"), py::arg("allow_minor_version_mismatch") = false,
           py::arg("trusted") = py::none())
      .def_property_readonly("backend",
                             [](const Engine& e) { return std::string(backend_name(e.backend())); })
      .def_property_readonly("device", [](const Engine& e) { return e.device(); })
      .def_property_readonly("input_names", &Engine::input_names)
      .def_property_readonly("output_names", &Engine::output_names)
      .def_property_readonly("num_profiles", &Engine::num_profiles)
      .def("binding",
           [](const Engine& e, const std::string& name) {
             const Tensor& t = e.binding(name);
             return py::make_tuple(std::string(dtype_name(t.dtype)), t.dims);
           })
      .def("describe_layers", &Engine::describe_layers)
      .def_property_readonly("device_bytes", &Engine::device_bytes)
      .def_property_readonly("plan", [](const Engine& e) { return std::make_shared<Plan>(e.plan()); })
      .def("refittable_weights",
           [](const Engine& e) {
             py::list out;
             for (const auto& w : e.refittable_weights())
               out.append(py::make_tuple(w.name, std::string(dtype_name(w.dtype)), w.dims));
             return out;
           })
      .def("refit",
           [](Engine& e, const std::vector<std::string>& names, const std::vector<std::string>& dtypes,
              const std::vector<Dims>& dims, const std::vector<py::buffer>& data) {
             const auto weights = weights_from_buffers(names, dtypes, dims, data);
             py::gil_scoped_release release;
             e.refit(weights);
           })
      .def(
          "create_execution_context",
          [](const Engine& e, const std::string& memory) {
            KILN_CHECK(memory == "shapes_in_use" || memory == "profile_max",
                       "memory='" << memory << "' is not an allocation strategy; pass 'shapes_in_use' (the "
                                  << "default: the activation arena fits the shapes in use) or 'profile_max' "
                                  << "(allocated at creation for the profiles' largest shapes)");
            return e.create_execution_context(nullptr, memory == "profile_max"
                                                           ? MemoryAllocation::kProfileMax
                                                           : MemoryAllocation::kShapesInUse);
          },
          py::arg("memory") = "shapes_in_use");

  py::class_<ExecutionContext>(m, "ExecutionContext")
      .def("set_optimization_profile", &ExecutionContext::set_optimization_profile)
      .def("set_input_shape", [](ExecutionContext& c, const std::string& name,
                                 const Dims& dims) { c.set_input_shape(name, dims); })
      .def("tensor_shape", [](ExecutionContext& c, const std::string& name) { return c.tensor_shape(name); })
      .def("set_tensor_address",
           [](ExecutionContext& c, const std::string& name, uintptr_t ptr) {
             c.set_tensor_address(name, reinterpret_cast<void*>(ptr));
           })
      .def("enqueue",
           [](ExecutionContext& c, uintptr_t stream) {
             GilRelease release;
             c.enqueue(reinterpret_cast<void*>(stream));
           })
      .def("execute_host", &execute_host)
      .def("set_profiling", &ExecutionContext::set_profiling)
      .def_property_readonly("profiling", &ExecutionContext::profiling)
      .def("layer_times",
           [](ExecutionContext& c) {
             GilRelease release;
             return c.layer_times();
           })
      .def(
          "layer_costs",
          [](ExecutionContext& c) {
            std::vector<std::pair<double, double>> out;
            for (const LayerCost& cost : c.layer_costs()) out.emplace_back(cost.flops, cost.bytes);
            return out;
          },
          "(flops, bytes) of every layer at the current input shapes: the roofline's cost model")
      .def_property_readonly("device_bytes", &ExecutionContext::device_bytes)
      .def_property_readonly("arena_bytes", &ExecutionContext::arena_bytes)
      .def_property("cuda_graphs", &ExecutionContext::cuda_graphs, &ExecutionContext::set_cuda_graphs,
                    "Capture and replay CUDA graphs per input shapes (CUDA only; default on unless "
                    "KILN_CUDA_GRAPHS=0)")
      .def("set_binding_staging", &ExecutionContext::set_binding_staging)
      .def_property_readonly("graph_stats", [](const ExecutionContext& c) {
        const auto& s = c.graph_stats();
        py::dict d;
        d["captures"] = s.captures;
        d["instantiations"] = s.instantiations;
        d["updates"] = s.updates;
        d["replays"] = s.replays;
        d["plain"] = s.plain;
        return d;
      });

  bind_compiler(m);
#ifdef KILN_WITH_ONNX
  bind_onnx(m);
#endif
}
