// The TorchScript frontend's C++ API: a scripted or traced module in, a TorchScript module out
// whose supported parts run in Kiln engines (kiln::execute_engine calls on Engine attributes)
// and whose other nodes stay TorchScript. The result saves with torch::jit::save and loads
// wherever libkiln_runtime is loaded (Python after `import kiln`, C++ apps linking Kiln::runtime).
//
//   kiln::torchscript::CompileSpec spec;
//   spec.inputs = {kiln::torchscript::InputSpec::range({1, 3, 224, 224}, {8, 3, 224, 224}, {32, 3, 224,
//   224})}; spec.enabled_precisions = {kiln::Precision::kFP16}; torch::jit::Module compiled =
//   kiln::torchscript::compile(torch::jit::load("model.ts"), spec); compiled.save("model_kiln.ts");
//
// Errors (bad specs, unsupported models with require_full_compilation) throw kiln::Error.
#pragma once

#include <torch/script.h>

#include "driver/compile_options.h"

#include <cstdint>
#include <optional>
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

using kiln::CompileReport;
using kiln::Precision;

// The compile options every frontend shares (driver/compile_options.h: precisions,
// min_block_size, torch_executed_ops, require_full_compilation, device, workspace_size, ...), plus
// one input spec per forward argument after self.
struct CompileSpec : CompileOptions {
  std::vector<InputSpec> inputs;
};

// Compiles `module` (not modified). `report`, when given, receives how the graph was split.
torch::jit::Module compile(const torch::jit::Module& module, const CompileSpec& spec,
                           CompileReport* report = nullptr);

// Lowers and partitions only: what compile would do, without building engines.
CompileReport dry_run(const torch::jit::Module& module, const CompileSpec& spec);

}  // namespace kiln::torchscript
