// kiln._C.onnx_*: the ONNX parser (onnx_parser/parser.h) for py/kiln/onnx.py. Built when the
// build has the parser (KILN_BUILD_ONNX); kiln.onnx says how to get it otherwise.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "onnx_parser/parser.h"

namespace py = pybind11;

namespace {

using kiln::Network;
namespace onnx = kiln::onnx;

py::dict info_dict(const onnx::ParseInfo& info) {
  py::dict d;
  d["ir_version"] = info.ir_version;
  d["opset"] = info.opset;
  d["producer"] = info.producer;
  py::list bindings;
  for (const auto& b : info.converted_bindings) {
    bindings.append(py::make_tuple(b.name, b.onnx_type, std::string(kiln::dtype_name(b.dtype))));
  }
  d["converted_bindings"] = bindings;
  d["warnings"] = info.warnings;
  py::list values;
  for (const auto& [name, tensor] : info.values) values.append(py::make_tuple(name, tensor));
  d["values"] = values;
  return d;
}

// base_dir and {name: (dtype name, dims, bytes)} -> ParseOptions
onnx::ParseOptions make_options(const std::string& base_dir, const py::dict& values) {
  onnx::ParseOptions options;
  options.base_dir = base_dir;
  for (const auto& [key, value] : values) {
    auto t = value.cast<py::tuple>();
    onnx::ParseOptions::InputValue v;
    v.dtype = kiln::parse_dtype(t[0].cast<std::string>());
    v.dims = t[1].cast<kiln::Dims>();
    std::string bytes = t[2].cast<std::string>();
    v.data.assign(bytes.begin(), bytes.end());
    options.input_values[key.cast<std::string>()] = std::move(v);
  }
  return options;
}

// Parses without the GIL: (network, info dict).
template <typename F>
py::tuple parse_with(F&& parse) {
  onnx::ParseInfo info;
  std::shared_ptr<Network> net;
  {
    py::gil_scoped_release release;
    net = std::make_shared<Network>(parse(&info));
  }
  return py::make_tuple(net, info_dict(info));
}

}  // namespace

void bind_onnx(py::module_& m) {
  m.def(
      "onnx_parse_file",
      [](const std::string& path, const std::string& base_dir, const py::dict& input_values) {
        const onnx::ParseOptions options = make_options(base_dir, input_values);
        return parse_with([&](onnx::ParseInfo* info) { return onnx::parse(path, options, info); });
      },
      py::arg("path"), py::arg("base_dir") = "", py::arg("input_values") = py::dict());
  m.def(
      "onnx_parse_bytes",
      [](const py::bytes& data, const std::string& base_dir, const py::dict& input_values) {
        const onnx::ParseOptions options = make_options(base_dir, input_values);
        const std::string_view view = data;  // the bytes object outlives the call
        return parse_with([&](onnx::ParseInfo* info) {
          return onnx::parse_bytes(view.data(), view.size(), options, info);
        });
      },
      py::arg("data"), py::arg("base_dir") = "", py::arg("input_values") = py::dict());
  m.def("onnx_supported_operators", &onnx::supported_operators);
  m.attr("onnx_min_opset") = onnx::kMinOpset;
  m.attr("onnx_max_opset") = onnx::kMaxOpset;
}
