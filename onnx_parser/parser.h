// The ONNX parser: an ONNX model (a file, or its bytes) -> a kiln::Network, ready for the Builder.
//
//   kiln::Network net = kiln::onnx::parse("model.onnx");
//   kiln::BuilderConfig config;            // profiles for the dynamic dims, precisions, ...
//   kiln::Plan plan = kiln::Builder().build(net, config);
//
// Initializers become constants, each node becomes one or more layers (onnx_parser/ops/, one
// importer per ONNX operator), graph inputs become network inputs with a dynamic dim (-1) where
// ONNX has a dim_param or no value, and graph outputs become network outputs under their ONNX
// names. Shape arithmetic (Shape -> Gather -> Concat -> Reshape) stays as layers whose values the
// network tracks, so it folds where the shapes are static and stays dynamic where they are not.
//
// Opsets: the default domain ("" / "ai.onnx") from 13 to kMaxOpset (7 to 12 where each node's
// operator kept its meaning). Errors are kiln::Error with
// the node's name, op type, domain and opset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln::onnx {

// Opsets 13 and newer are the supported range; models importing 7 to 12 are parsed too where
// every node's operator kept its meaning (an importer says since when: OpImporter::since).
constexpr int kMinOpset = 7;
// The newest ai.onnx opset the parser knows (onnx 1.23's): a model importing a newer one is
// refused, as its operators may mean something else.
constexpr int kMaxOpset = 28;

struct ParseOptions {
  // Where external data files (initializers stored outside the .onnx file, models over 2 GB) are
  // looked up. parse() defaults it to the model file's folder; parse_bytes() needs it when the
  // model has external data.
  std::string base_dir;
  // Values for graph inputs that the network needs while building (TensorRT's shape tensors: a
  // Reshape's target, Range's bounds, Reduce axes given as inputs): each named input becomes a
  // constant of these values. dtype is the dtype Kiln holds the input in (see BindingType);
  // dims must match the input's declared dims (a dynamic dim takes any size).
  struct InputValue {
    DataType dtype;
    Dims dims;
    std::vector<uint8_t> data;
  };
  std::map<std::string, InputValue> input_values;
};

// A graph input or output whose ONNX element type has no engine dtype of its own: the binding
// holds it in `dtype` (float64 -> float32, uint8/int16/uint16 -> int32, uint32/uint64 -> int64),
// and the caller converts (the Python backend does).
struct BindingType {
  std::string name;
  std::string onnx_type;  // "float64", "uint8", ...
  DataType dtype;         // the network binding's dtype
};

struct ParseInfo {
  int64_t ir_version = 0;
  int64_t opset = 0;     // the model's ai.onnx opset
  std::string producer;  // producer_name and producer_version
  std::vector<BindingType> converted_bindings;
  std::vector<std::string> warnings;  // also logged
  // Every node output: its ONNX value name and the network tensor holding it, in node order
  // (kiln compare --per-layer marks them as outputs).
  std::vector<std::pair<std::string, TensorId>> values;
};

Network parse(const std::string& path, const ParseOptions& options = {}, ParseInfo* info = nullptr);
Network parse_bytes(const void* data, size_t size, const ParseOptions& options = {},
                    ParseInfo* info = nullptr);

// The ONNX operators (default domain) the parser imports, sorted.
std::vector<std::string> supported_operators();

}  // namespace kiln::onnx
