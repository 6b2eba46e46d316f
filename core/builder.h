// Builder: Network + BuilderConfig -> Plan, through one pipeline of named passes (builder.cpp).
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/plan.h"
#include "ir/network.h"

namespace kiln {

enum class BuildTarget : uint8_t {
  kAuto = 0,       // the current GPU when there is one, else the reference backend
  kCuda = 1,       // the current GPU; fails where there is none
  kReference = 2,  // portable plan for the CPU reference backend
};

// Precisions the builder may use inside the engine. FP32 is always allowed; the declared dtypes
// of inputs and outputs never change.
struct PrecisionConfig {
  bool fp16 = false;  // float32 layers may run in float16 (chosen over bfloat16 when both are on)
  bool bf16 = false;  // float32 layers may run in bfloat16
  bool tf32 = false;  // float32 GEMMs and convolutions may use TF32 tensor cores
  // INT8: with BuilderConfig::int8_calibrator, calibration inserts the quantization
  // (core/calibration.h); without one, the network must carry its own quantize / dequantize /
  // fake_quantize layers.
  bool int8 = false;
  // FP8 (e4m3) GEMMs on CUDA sm_89+: fully_connected layers behind an e4m3 fake_quantize (from
  // kiln.compile's calibration, or BuilderConfig::int8_calibrator with fp8 on and int8 off) run as
  // FP8 GEMMs (quantize_fp8_gemms). On an older GPU the build fails.
  bool fp8 = false;
  // Per-layer override by layer name: float32, float16 or bfloat16, whatever the flags say.
  std::map<std::string, DataType> layer_precisions;
};

// The one C++ table of precision names: "fp32" ("float32"), "fp16" ("float16", "half"), "bf16"
// ("bfloat16"), "tf32", "int8" (the native builder's; kiln.compile takes torch.int8 itself), "fp8"
// ("float8_e4m3fn"). enable_precision
// turns one on (fp32 is always on); it throws a kiln::Error listing the names for anything else.
// precision_names lists what is on, fp32 first.
void enable_precision(PrecisionConfig& config, const std::string& name);
std::vector<std::string> precision_names(const PrecisionConfig& config);
// Throws a kiln::Error saying what to do unless sm_arch (major * 10 + minor) has FP8 tensor cores.
void check_fp8_support(int sm_arch);

// Where engines run, by the one word users see: "cuda" (or "cuda:N"), "cpu" (the reference
// backend), "auto"; the older "reference" still means "cpu". Throws on anything else.
BuildTarget parse_device(const std::string& name);
const char* device_name(BuildTarget target);  // "auto", "cuda", "cpu"

// false when the environment sets KILN_TACTIC_TIMING=0.
bool tactic_timing_default();

constexpr int64_t kDefaultMaxFoldedConstantBytes = int64_t{64} << 20;

class Int8Calibrator;

struct BuilderConfig {
  std::vector<OptimizationProfile> profiles;
  PrecisionConfig precision;
  size_t workspace_bytes = size_t{32} << 20;
  int optimization_level = 3;  // 0 skips the optional (canonicalizing) passes
  BuildTarget target = BuildTarget::kAuto;
  // Step 6, CUDA only: time the tactics of layers whose kernels offer several. Off: every
  // kernel uses its heuristic choice (faster builds, maybe slower engines). The default is on
  // unless the environment sets KILN_TACTIC_TIMING=0 (the test suite does, for fast builds).
  bool tactic_timing = tactic_timing_default();
  // Persistent timing cache (core/timing_cache.h) read before and written after step 6. Empty:
  // none (the C++ default; kiln.compile defaults to $XDG_CACHE_HOME/kiln/timing.cache).
  std::string timing_cache_path;
  // Step 2: a constant subgraph whose outputs take more bytes than this stays computed at run
  // time instead of being folded into the plan (keeps plans, and their build time, bounded).
  int64_t max_folded_constant_bytes = kDefaultMaxFoldedConstantBytes;
  // Post-training calibration (needs precision.int8, or precision.fp8 for FP8 linear layers):
  // batches or a cache of ranges. The same interface serves both formats.
  std::shared_ptr<Int8Calibrator> int8_calibrator;
  // Engine cache (core/engine_cache.h): a directory of built plans keyed by the network's
  // structure (weights by name and shape, not value), these options, the GPU and the library
  // versions. A hit refits the cached plan with the network's weights instead of building.
  // Empty: none (the C++ default; kiln.compile defaults to $XDG_CACHE_HOME/kiln/engines).
  std::string engine_cache_dir;
  int64_t engine_cache_max_bytes = int64_t{4} << 30;  // least recently used entries go past it
};

class Builder {
 public:
  Plan build(const Network& network, const BuilderConfig& config) const;
};

}  // namespace kiln
