// kiln._torchscript: the TorchScript frontend (torchscript/compile.h), called in process. Takes
// the ScriptModule itself and kiln._C's CompileOptions (one pybind11 for both modules: see
// py/CMakeLists.txt) and returns the compiled module with the driver's CompileReport. No file,
// no option format crosses the boundary.
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

kiln::torchscript::CompileSpec make_spec(const std::vector<InputTuple>& inputs, const kiln::CompileOptions& options) {
  kiln::torchscript::CompileSpec spec;
  static_cast<kiln::CompileOptions&>(spec) = options;
  for (const auto& [dtype, lo, opt, hi] : inputs) {
    spec.inputs.push_back(kiln::torchscript::InputSpec::range(
        lo, opt, hi, kiln::runtime::torch_dtype(kiln::parse_dtype(dtype))));
  }
  return spec;
}

}  // namespace

PYBIND11_MODULE(_torchscript, m) {
  m.doc() = "Kiln's TorchScript frontend, in process (used by kiln.compile with ir='torchscript').";
  py::module_::import("kiln._C");  // CompileOptions and CompileReport are kiln._C's types

  // compile(module, inputs, options) -> (compiled torch._C.ScriptModule or None with dry_run, report)
  m.def(
      "compile",
      [](py::handle module, const std::vector<InputTuple>& inputs, const kiln::CompileOptions& options) {
        std::optional<torch::jit::Module> script = torch::jit::as_module(py::reinterpret_borrow<py::object>(module));
        KILN_CHECK(script.has_value(), "kiln.compile(ir='torchscript') takes a torch.jit.ScriptModule (torch.jit.script "
                                       "or torch.jit.trace)");
        const kiln::torchscript::CompileSpec spec = make_spec(inputs, options);
        if (options.dry_run) return py::make_tuple(py::none(), kiln::torchscript::dry_run(*script, spec));
        kiln::CompileReport report;
        torch::jit::Module compiled = kiln::torchscript::compile(*script, spec, &report);
        return py::make_tuple(py::cast(compiled), report);
      },
      py::arg("module"), py::arg("inputs"), py::arg("options"));
}
