// kiln._torch: the bindings that need torch's Python types, over kiln._C's (one pybind11 for
// both modules: see py/CMakeLists.txt, so kiln._C's Plan, CompileOptions and CompileReport pass
// through as they are):
//   compile_torchscript: the TorchScript frontend (torchscript/compile.h) in process, the
//     ScriptModule itself in and out; no file, no option format crosses the boundary;
//   make_engine: a torch.classes.kiln.Engine from a kiln._C.Plan, with no serialize/parse trip.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/jit/python/module_python.h>
#include <torch/csrc/jit/python/pybind_utils.h>

#include <tuple>
#include <vector>

#include "ir/dtype.h"
#include "ir/error.h"
#include "runtime/runtime.h"
#include "torchscript/compile.h"

namespace py = pybind11;

namespace {

// One forward input: (Kiln dtype name, min shape, opt shape, max shape).
using InputTuple = std::tuple<std::string, std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>>;

kiln::torchscript::CompileSpec make_spec(const std::vector<InputTuple>& inputs,
                                         const kiln::CompileOptions& options) {
  kiln::torchscript::CompileSpec spec;
  static_cast<kiln::CompileOptions&>(spec) = options;
  for (const auto& [dtype, lo, opt, hi] : inputs) {
    spec.inputs.push_back(kiln::torchscript::InputSpec::range(
        lo, opt, hi, kiln::runtime::torch_dtype(kiln::parse_dtype(dtype))));
  }
  return spec;
}

}  // namespace

PYBIND11_MODULE(_torch, m) {
  m.doc() = "Kiln's torch-linked bindings: the TorchScript frontend and engines from plans.";
  py::module_::import("kiln._C");  // CompileOptions and CompileReport are kiln._C's types

  // compile_torchscript(module, inputs, options) -> (compiled ScriptModule, or None with
  // dry_run; report)
  m.def(
      "compile_torchscript",
      [](py::handle module, const std::vector<InputTuple>& inputs, const kiln::CompileOptions& options) {
        std::optional<torch::jit::Module> script =
            torch::jit::as_module(py::reinterpret_borrow<py::object>(module));
        KILN_CHECK(script.has_value(),
                   "kiln.compile(ir='torchscript') takes a torch.jit.ScriptModule (torch.jit.script "
                   "or torch.jit.trace)");
        const kiln::torchscript::CompileSpec spec = make_spec(inputs, options);
        if (options.dry_run) return py::make_tuple(py::none(), kiln::torchscript::dry_run(*script, spec));
        kiln::CompileReport report;
        torch::jit::Module compiled = kiln::torchscript::compile(*script, spec, &report);
        return py::make_tuple(py::cast(compiled), report);
      },
      py::arg("module"), py::arg("inputs"), py::arg("options"));

  // script_engines(module) -> the torch.classes.kiln.Engine attributes of a ScriptModule and its
  // submodules, in attribute order.
  m.def(
      "script_engines",
      [](py::handle module) {
        std::optional<torch::jit::Module> script =
            torch::jit::as_module(py::reinterpret_borrow<py::object>(module));
        KILN_CHECK(script.has_value(), "script_engines takes a torch.jit.ScriptModule");
        const c10::ClassTypePtr engine = kiln::runtime::engine_type();
        py::list out;
        for (const auto& attr : script->named_attributes(/*recurse=*/true)) {
          if (attr.value.isObject() && attr.value.type() == engine)
            out.append(torch::jit::toPyObject(attr.value));
        }
        return out;
      },
      py::arg("module"));

  // make_engine(plan, backend, device_index, cuda_graphs) -> torch.classes.kiln.Engine
  m.def(
      "make_engine",
      [](const kiln::Plan& plan, const std::string& backend, int64_t device_index, bool cuda_graphs) {
        return torch::jit::toPyObject(kiln::runtime::make_engine(plan, backend, device_index, cuda_graphs));
      },
      py::arg("plan"), py::arg("backend"), py::arg("device_index") = -1, py::arg("cuda_graphs") = true);
}
