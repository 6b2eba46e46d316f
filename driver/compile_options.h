// The options and the report of one compilation: the one options type of both frontends
// (kiln.compile with torch.export or TorchScript, torch.compile's "kiln" backend, `kiln compile`,
// and the C++ TorchScript API). Self-contained (standard headers only) because the installed C++
// API (torchscript/compile.h) includes it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace kiln {

// Precisions engines may compute in; FP32 is always allowed. Names (the driver's
// parse_precision): "fp32", "fp16", "bf16", "tf32", "fp8", and "float32", "float16"/"half", "bfloat16",
// "float8_e4m3fn". fp8 lets calibrated FP8 GEMMs run as such (kiln.compile inserts their quantization).
enum class Precision { kFP32, kFP16, kBF16, kTF32, kFP8 };

struct CompileOptions {
  std::set<Precision> enabled_precisions{Precision::kFP32};
  int64_t min_block_size = 5;                   // smaller engine segments run in PyTorch
  std::vector<std::string> torch_executed_ops;  // "aten.gelu.default": always PyTorch
  // Ops that run through PyTorch inside the engine (a torch_op layer) rather than as a graph
  // break: "mylib.myop.default". Needs libkiln_runtime (torch) wherever the engine runs.
  std::vector<std::string> torch_ops_in_engine;
  // Ops without a converter that may run the same way where a graph break would otherwise split
  // an engine (kiln.compile chooses them: functional, capture-safe, shapes from a meta kernel). A
  // node of one stays in its engine only where it joins engine nodes on both sides.
  std::vector<std::string> automatic_torch_ops;
  bool require_full_compilation = false;     // unsupported nodes are an error listing them
  std::string device = "cuda";               // where engines run: "cuda", "cuda:N" or "cpu"
  size_t workspace_size = size_t{32} << 20;  // builder workspace limit, bytes
  int optimization_level = 3;                // 0 skips the optional builder passes
  std::string timing_cache_path;             // persistent tactic timing cache; empty: none
  std::string engine_cache_dir;              // engine cache (core/engine_cache.h); empty: none
  int64_t engine_cache_max_bytes = int64_t{4} << 30;
  std::optional<bool> tactic_timing;  // unset: on unless KILN_TACTIC_TIMING=0
  bool cuda_graphs = true;            // engines capture and replay CUDA graphs
  bool dry_run = false;               // partition and report only: no engines
  // INT8 layers (the builder's quantize_int8_layers) in the engines whose nodes quantize:
  // kiln.compile sets it for torch.int8 in enabled_precisions, after inserting its calibrated
  // fake quantization, or for a model with its own Q/DQ ops.
  bool int8 = false;
};

// What a compilation did (or, with dry_run, would do) with the graph.
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
  std::string text;  // the partition report, as both frontends print it
};

}  // namespace kiln
