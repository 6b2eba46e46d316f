// The TorchScript frontend's C++ API: a scripted or traced module in, a TorchScript module out
// whose supported parts run in Kiln engines (kiln::execute_engine calls on Engine attributes)
// and whose other nodes stay TorchScript. The result saves with torch::jit::save and loads
// wherever libkiln_runtime is loaded (Python after `import kiln`, C++ apps linking Kiln::runtime).
//
//   kiln::torchscript::CompileSpec spec;
//   spec.inputs = {kiln::torchscript::InputSpec::range({1, 3, 224, 224}, {8, 3, 224, 224}, {32, 3, 224,
//   224})}; spec.enabled_precisions = {kiln::torchscript::Precision::kFP16}; torch::jit::Module compiled =
//   kiln::torchscript::compile(torch::jit::load("model.ts"), spec); compiled.save("model_kiln.ts");
//
// Errors (bad specs, unsupported models with require_full_compilation) throw kiln::Error.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace kiln::torchscript {

// One forward input: a static shape, or a min/opt/max range per dim (a dim whose min and max
// differ is dynamic), and its dtype.
struct InputSpec {
  std::vector<int64_t> min_shape, opt_shape, max_shape;
  c10::ScalarType dtype = c10::kFloat;

  static InputSpec fixed(std::vector<int64_t> shape, c10::ScalarType dtype = c10::kFloat);
  static InputSpec range(std::vector<int64_t> min_shape, std::vector<int64_t> opt_shape,
                         std::vector<int64_t> max_shape, c10::ScalarType dtype = c10::kFloat);
};

enum class Precision { kFP32, kFP16, kBF16, kTF32 };

struct CompileSpec {
  std::vector<InputSpec> inputs;                             // one per forward argument after self
  std::set<Precision> enabled_precisions{Precision::kFP32};  // FP32 is always allowed
  int64_t min_block_size = 5;                                // smaller engine segments run in PyTorch
  std::vector<std::string> torch_executed_ops;               // "aten.gelu.default": always PyTorch
  bool require_full_compilation = false;                     // unsupported nodes are an error listing them
  std::string device = "cuda";  // "cuda[:N]": CUDA engines; "cpu": reference backend
  size_t workspace_bytes = size_t{32} << 20;
  int optimization_level = 3;
};

struct CompileReport {
  struct SegmentInfo {
    bool engine = false;
    std::vector<std::string> nodes, ops;
  };
  struct FallbackInfo {
    std::string node, target, reason;
  };
  int num_engines = 0;
  std::vector<SegmentInfo> segments;
  std::vector<FallbackInfo> fallbacks;
  std::string text;  // the partition report, as the export path prints it

  std::string to_json() const;
};

// Compiles `module` (not modified). `report`, when given, receives how the graph was split.
torch::jit::Module compile(const torch::jit::Module& module, const CompileSpec& spec,
                           CompileReport* report = nullptr);

// Lowers and partitions only: what compile would do, without building engines.
CompileReport dry_run(const torch::jit::Module& module, const CompileSpec& spec);

// "fp32", "fp16", "bf16", "tf32" (also "float32", "float16", "bfloat16"); throws otherwise.
Precision parse_precision(const std::string& name);
// "float32", "float16", "bfloat16", "int32", "int64", "bool", "int8"; throws otherwise.
c10::ScalarType parse_dtype(const std::string& name);

}  // namespace kiln::torchscript
