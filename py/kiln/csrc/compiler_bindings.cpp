// kiln._C bindings of the torch-free compiler middle: KGraph, the converter registry, the
// partitioner and segment conversion. py/kiln/compile.py builds the KGraph from torch.export.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "converters/converter.h"
#include "driver/compile.h"
#include "driver/convert_segment.h"
#include "ir/error.h"
#include "ir/network.h"
#include "lowering/kgraph.h"
#include "partitioning/partition.h"

namespace py = pybind11;
using namespace kiln;

namespace {

// A reference to a KGraph value inside a node argument (plain ints are immediates).
struct ValueRef {
  ValueId id;
};

Arg to_arg(py::handle h) {
  if (h.is_none()) return Arg::none();
  if (py::isinstance<ValueRef>(h)) return Arg::of_value(h.cast<ValueRef>().id);
  if (py::isinstance<py::bool_>(h)) return Arg::of_bool(h.cast<bool>());
  if (py::isinstance<py::int_>(h)) return Arg::of_int(h.cast<int64_t>());
  if (py::isinstance<py::float_>(h)) return Arg::of_float(h.cast<double>());
  if (py::isinstance<py::str>(h)) return Arg::of_string(h.cast<std::string>());
  if (py::isinstance<py::list>(h) || py::isinstance<py::tuple>(h)) {
    std::vector<Arg> list;
    for (py::handle e : h) list.push_back(to_arg(e));
    return Arg::of_list(std::move(list));
  }
  KILN_FAIL("KGraph argument of unsupported Python type " << std::string(py::str(py::type::handle_of(h))));
}

py::dict segment_dict(const Segment& s) {
  py::dict d;
  d["engine"] = s.engine;
  d["nodes"] = s.nodes;
  d["inputs"] = s.inputs;
  d["outputs"] = s.outputs;
  d["recompute"] = s.recompute;
  return d;
}

Segment to_segment(const py::dict& d) {
  Segment s;
  s.engine = d["engine"].cast<bool>();
  s.nodes = d["nodes"].cast<std::vector<int>>();
  s.inputs = d["inputs"].cast<std::vector<ValueId>>();
  s.outputs = d["outputs"].cast<std::vector<ValueId>>();
  if (d.contains("recompute")) s.recompute = d["recompute"].cast<std::vector<int>>();
  return s;
}

// A node's arguments for a Python converter (kiln/plugins.py decodes them): tensors as
// {"tensor": id} (convert: the segment network's tensor, constants added on first use) or
// {"value": (dtype, dims)} (capability: what the value is, before any network exists); lists as
// lists; immediates as Python values.
py::object python_arg(const Arg& a, const std::function<py::object(ValueId)>& value) {
  switch (a.kind) {
    case Arg::Kind::kNone:
      return py::none();
    case Arg::Kind::kBool:
      return py::bool_(a.b);
    case Arg::Kind::kInt:
      return py::int_(a.i);
    case Arg::Kind::kFloat:
      return py::float_(a.f);
    case Arg::Kind::kString:
      return py::str(a.s);
    case Arg::Kind::kValue:
      return value(a.value);
    case Arg::Kind::kList: {
      py::list out;
      for (const Arg& e : a.list) out.append(python_arg(e, value));
      return out;
    }
  }
  return py::none();
}

py::list python_args(const KNode& node, const std::function<py::object(ValueId)>& value) {
  py::list out;
  for (const auto& [name, a] : node.args) out.append(py::make_tuple(name, python_arg(a, value)));
  return out;
}

// The message of a Python exception raised by a converter, for the compile report.
std::string python_error(const KNode& node, const py::error_already_set& e) {
  return node.describe() + ": its Python converter raised " + e.what();
}

// A converter written in Python (kiln.converter): `dispatch(fn, network, node name, target,
// args, used outputs)` runs it (kiln/plugins.py) and returns one tensor id per node output (-1
// where nobody uses it); `describe(fn, node name, target, args)` runs its capability.
Converter python_converter(const std::string& target, py::object fn, py::object capability,
                           bool dynamic_shapes, const std::string& limits, py::object dispatch,
                           py::object check) {
  // Released with the GIL while Python runs; the converter table outlives the interpreter at
  // exit, and then the objects are left alone.
  auto keep = [](py::object o) {
    return std::shared_ptr<py::object>(new py::object(std::move(o)), [](py::object* p) {
      if (Py_IsInitialized()) {
        py::gil_scoped_acquire gil;
        delete p;
      }
    });
  };
  auto f = keep(std::move(fn)), cap = keep(std::move(capability)), run = keep(std::move(dispatch)),
       describe_fn = keep(std::move(check));
  Converter c;
  c.target = target;
  c.dynamic_shapes = dynamic_shapes;
  c.limits = limits;
  c.capability = [cap, describe_fn](const KGraph& g, const KNode& node) -> std::string {
    if (cap->is_none()) return "";
    py::gil_scoped_acquire gil;
    auto info = [&g](ValueId v) -> py::object {
      const KValue& kv = g.value(v);
      py::dict d;
      d["value"] = py::make_tuple(std::string(dtype_name(kv.dtype)), kv.dims);
      return d;
    };
    try {
      py::object r = (*describe_fn)(*cap, node.name, node.target, python_args(node, info));
      return r.is_none() ? "" : r.cast<std::string>();
    } catch (py::error_already_set& e) {
      return python_error(node, e);
    }
  };
  c.convert = [f, run](ConversionContext& ctx, const KNode& node) {
    py::gil_scoped_acquire gil;
    auto tensor = [&ctx](ValueId v) -> py::object {
      py::dict d;
      d["tensor"] = ctx.tensor(v);
      return d;
    };
    std::vector<bool> used;
    for (ValueId v : node.outputs) used.push_back(v != kNoValue);
    std::vector<TensorId> outputs;
    try {
      py::object net = py::cast(&ctx.net(), py::return_value_policy::reference);
      outputs = (*run)(*f, net, node.name, node.target, python_args(node, tensor), used)
                    .cast<std::vector<TensorId>>();
    } catch (py::error_already_set& e) {
      KILN_FAIL(python_error(node, e));
    }
    KILN_CHECK(outputs.size() == node.outputs.size(), node.describe()
                                                          << ": its Python converter gave " << outputs.size()
                                                          << " outputs for " << node.outputs.size());
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (node.outputs[i] == kNoValue) continue;
      const KValue& want = ctx.graph().value(node.outputs[i]);
      const Tensor& got = ctx.net().tensor(outputs[i]);
      KILN_CHECK(got.dtype == want.dtype && got.dims.size() == want.dims.size(),
                 node.describe() << ": its Python converter's output " << i << " is " << dtype_name(got.dtype)
                                 << " " << to_string(got.dims) << ", the graph has " << dtype_name(want.dtype)
                                 << " " << to_string(want.dims));
      ctx.set_output(node, i, outputs[i]);
    }
  };
  return c;
}

}  // namespace

void bind_compiler(py::module_& m) {
  // Python converters (kiln.converter, kiln/plugins.py): registered over any built-in one.
  m.def(
      "register_python_converter",
      [](const std::string& target, py::object fn, py::object capability, bool dynamic_shapes,
         const std::string& limits, py::object dispatch, py::object check) {
        override_converter(python_converter(target, std::move(fn), std::move(capability), dynamic_shapes,
                                            limits, std::move(dispatch), std::move(check)));
      },
      py::arg("target"), py::arg("fn"), py::arg("capability"), py::arg("dynamic_shapes"), py::arg("limits"),
      py::arg("dispatch"), py::arg("check"));
  m.def("remove_python_converter", &remove_override_converter, py::arg("target"));

  py::class_<ValueRef>(m, "ValueRef").def(py::init<ValueId>()).def_readonly("id", &ValueRef::id);

  py::class_<KGraph, std::shared_ptr<KGraph>>(m, "KGraph")
      .def(py::init<>())
      .def("add_input", [](KGraph& g, const std::string& name, const std::string& dtype,
                           const Dims& dims) { return g.add_input(name, parse_dtype(dtype), dims); })
      .def(
          "add_constant",
          [](KGraph& g, const std::string& name, const std::string& dtype, const Dims& dims, py::bytes data,
             const std::string& weight) {
            std::string_view bytes = data;
            return g.add_constant(name, parse_dtype(dtype), dims, bytes.data(), bytes.size(), weight);
          },
          py::arg("name"), py::arg("dtype"), py::arg("dims"), py::arg("data"), py::arg("weight") = "")
      .def("add_value",
           [](KGraph& g, const std::string& name, const std::string& dtype, const Dims& dims,
              bool host_scalar) { return g.add_value(name, parse_dtype(dtype), dims, host_scalar); })
      .def("add_node",
           [](KGraph& g, const std::string& name, const std::string& target, const py::list& args,
              const std::vector<ValueId>& outputs, const std::string& location) {
             KNode n;
             n.name = name;
             n.target = target;
             for (py::handle item : args) {
               py::tuple pair = item.cast<py::tuple>();
               n.args.emplace_back(pair[0].cast<std::string>(), to_arg(pair[1]));
             }
             n.outputs = outputs;
             n.location = location;
             return g.add_node(std::move(n));
           })
      .def("mark_output", &KGraph::mark_output)
      .def("num_nodes", [](const KGraph& g) { return g.nodes().size(); })
      .def("node_name", [](const KGraph& g, size_t i) { return g.nodes().at(i).name; })
      .def("node_target", [](const KGraph& g, size_t i) { return g.nodes().at(i).target; })
      .def("value_name", [](const KGraph& g, ValueId v) { return g.value(v).name; })
      .def("check_node", [](const KGraph& g, size_t i) { return check_convertible(g, g.nodes().at(i)); })
      .def("summary", &KGraph::summary);

  m.def("registered_converters", [] {
    std::vector<std::tuple<std::string, bool, std::string>> out;
    for (const Converter* c : registered_converters())
      out.emplace_back(c->target, c->dynamic_shapes, c->limits);
    return out;
  });
  m.def("has_converter", [](const std::string& target) { return find_converter(target) != nullptr; });
  m.def(
      "partition",
      [](const KGraph& g, int64_t min_block_size, const std::vector<std::string>& torch_executed_ops,
         bool require_full_compilation) {
        PartitionOptions o;
        o.min_block_size = min_block_size;
        o.torch_executed_ops = torch_executed_ops;
        o.require_full_compilation = require_full_compilation;
        Partition p = partition_graph(g, o);
        py::dict d;
        py::list segments;
        for (const Segment& s : p.segments) segments.append(segment_dict(s));
        py::list fallbacks;
        for (const Fallback& f : p.fallbacks) fallbacks.append(py::make_tuple(f.node, f.reason));
        d["segments"] = segments;
        d["fallbacks"] = fallbacks;
        d["report"] = describe_partition(g, p);
        return d;
      },
      py::arg("graph"), py::arg("min_block_size"), py::arg("torch_executed_ops"),
      py::arg("require_full_compilation"));
  // The canonical name of a precision spelling ("half" -> "fp16"), through the one C++ table;
  // kiln.dtypes.precision_name (every Python API) asks it.
  m.def("precision_name",
        [](const std::string& name) { return std::string(precision_name(parse_precision(name))); });

  py::class_<CompileOptions>(
      m, "CompileOptions", "The options of one compilation (driver/compile.h), the same for both frontends.")
      .def(py::init<>())
      .def_property(
          "precisions",
          [](const CompileOptions& o) {
            std::vector<std::string> names;
            for (Precision p : o.enabled_precisions) names.push_back(precision_name(p));
            return names;
          },
          [](CompileOptions& o, const std::vector<std::string>& names) {
            o.enabled_precisions = {Precision::kFP32};
            for (const std::string& n : names) o.enabled_precisions.insert(parse_precision(n));
          })
      .def_readwrite("min_block_size", &CompileOptions::min_block_size)
      .def_readwrite("torch_executed_ops", &CompileOptions::torch_executed_ops)
      .def_readwrite("torch_ops_in_engine", &CompileOptions::torch_ops_in_engine)
      .def_readwrite("automatic_torch_ops", &CompileOptions::automatic_torch_ops)
      .def_readwrite("require_full_compilation", &CompileOptions::require_full_compilation)
      .def_property(
          "device", [](const CompileOptions& o) { return o.device; },
          [](CompileOptions& o, const std::string& d) {
            parse_device(d);  // refused here, by name, rather than at build time
            o.device = d;
          })
      .def_readwrite("workspace_size", &CompileOptions::workspace_size)
      .def_readwrite("optimization_level", &CompileOptions::optimization_level)
      .def_readwrite("timing_cache_path", &CompileOptions::timing_cache_path)
      .def_readwrite("engine_cache_dir", &CompileOptions::engine_cache_dir)
      .def_readwrite("engine_cache_max_bytes", &CompileOptions::engine_cache_max_bytes)
      .def_readwrite("tactic_timing", &CompileOptions::tactic_timing)
      .def_readwrite("cuda_graphs", &CompileOptions::cuda_graphs)
      .def_readwrite("dry_run", &CompileOptions::dry_run)
      .def_readwrite("int8", &CompileOptions::int8);

  py::class_<CompileReport::SegmentInfo>(m, "SegmentInfo")
      .def_property_readonly(
          "kind", [](const CompileReport::SegmentInfo& s) { return s.engine ? "engine" : "pytorch"; })
      .def_readonly("nodes", &CompileReport::SegmentInfo::nodes)
      .def_readonly("ops", &CompileReport::SegmentInfo::ops);
  py::class_<CompileReport::FallbackInfo>(m, "FallbackInfo")
      .def_readonly("node", &CompileReport::FallbackInfo::node)
      .def_readonly("target", &CompileReport::FallbackInfo::target)
      .def_readonly("reason", &CompileReport::FallbackInfo::reason);
  py::class_<CompileReport>(m, "CompileReport")
      .def_readonly("num_engines", &CompileReport::num_engines)
      .def_readonly("segments", &CompileReport::segments)
      .def_readonly("fallbacks", &CompileReport::fallbacks)
      .def_readonly("text", &CompileReport::text);

  // compile_graph(graph, options, range, torch_nodes) -> (segments as dicts, report, [Plan]);
  // `range(value)` gives ((min), (opt), (max)) of a segment input with dynamic dims; torch_nodes
  // maps node indices that must run in PyTorch to the reason.
  m.def(
      "compile_graph",
      [](const KGraph& g, const CompileOptions& o, const std::function<py::tuple(ValueId)>& range,
         std::map<int, std::string> torch_nodes) {
        InputRange input_range = [&range](ValueId v) {
          py::tuple t = range(v);
          return ShapeRange{t[0].cast<Dims>(), t[1].cast<Dims>(), t[2].cast<Dims>()};
        };
        CompileResult r = compile_graph(g, o, input_range, std::move(torch_nodes));
        py::list segments, plans;
        for (const Segment& s : r.partition.segments) segments.append(segment_dict(s));
        for (Plan& p : r.plans) plans.append(py::cast(std::move(p)));
        return py::make_tuple(segments, r.report, plans);
      },
      py::arg("graph"), py::arg("options"), py::arg("range"),
      py::arg("torch_nodes") = std::map<int, std::string>{});

  m.def("convert_segment", [](const KGraph& g, const py::dict& segment) {
    return std::make_shared<Network>(convert_segment(g, to_segment(segment)));
  });
}
