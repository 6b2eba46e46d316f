// The build pipeline, read top to bottom. Later stages (fusion, layouts) slot in between
// canonicalization and memory planning, in the order DESIGN.md gives.
#include "core/builder.h"

#include "core/engine_cache.h"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <set>
#include <string>

#include "core/calibration.h"
#include "core/passes/passes.h"
#include "core/tactics.h"
#include "core/timing_cache.h"
#include "ir/error.h"
#include "ir/logging.h"
#include "ir/op_schema.h"
#include "ir/progress.h"
#include "kernels/device.h"
#include "kernels/kernel.h"

namespace kiln {

void enable_precision(PrecisionConfig& config, const std::string& name) {
  if (name == "fp32" || name == "float32") return;
  if (name == "fp16" || name == "float16" || name == "half") {
    config.fp16 = true;
  } else if (name == "bf16" || name == "bfloat16") {
    config.bf16 = true;
  } else if (name == "tf32") {
    config.tf32 = true;
  } else if (name == "int8") {
    config.int8 = true;
  } else if (name == "fp8" || name == "float8_e4m3fn") {
    config.fp8 = true;
  } else {
    KILN_FAIL("unknown precision '" << name << "': use fp32, tf32, fp16, bf16, int8 or fp8");
  }
}

std::vector<std::string> precision_names(const PrecisionConfig& config) {
  std::vector<std::string> names{"fp32"};
  if (config.tf32) names.push_back("tf32");
  if (config.fp16) names.push_back("fp16");
  if (config.bf16) names.push_back("bf16");
  if (config.int8) names.push_back("int8");
  if (config.fp8) names.push_back("fp8");
  return names;
}

BuildTarget parse_device(const std::string& name) {
  if (name == "auto") return BuildTarget::kAuto;
  if (name == "cpu" || name == "reference") return BuildTarget::kReference;
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) return BuildTarget::kCuda;
  KILN_FAIL("unknown device '" << name << "': use 'cuda', 'cuda:N', 'cpu' or 'auto'");
}

const char* device_name(BuildTarget target) {
  return target == BuildTarget::kCuda ? "cuda" : target == BuildTarget::kReference ? "cpu" : "auto";
}
namespace {

Backend resolve_target(BuildTarget target) {
  bool gpu = cuda_device_count() > 0;
  switch (target) {
    case BuildTarget::kCuda:
      KILN_CHECK(gpu,
                 "build target is cuda but no CUDA GPU is visible; build for the reference "
                 "backend or run on a machine with a GPU");
      return Backend::kCuda;
    case BuildTarget::kReference:
      return Backend::kReference;
    case BuildTarget::kAuto:
      break;
  }
  return gpu ? Backend::kCuda : Backend::kReference;
}

// The builder's stages (run_pass calls) for its progress report: counted per build.
constexpr int64_t kBuilderStages = 27;
thread_local int64_t t_stage = 0;

// Whether the environment's KILN_SKIP_PASSES (a comma list of pass names) names `name`: a way to
// measure what one pass does on a model (docs/tools.md). Read at every pass: builds are rare.
bool skipped_by_environment(const std::string& name) {
  const char* list = std::getenv("KILN_SKIP_PASSES");
  if (!list) return false;
  const std::string names = std::string(",") + list + ",";
  return names.find("," + name + ",") != std::string::npos;
}

// Runs `pass` on `net` and logs what it did; returns whether it changed the network.
bool run_pass(const char* name, const std::function<bool(Network&)>& pass, Network& net) {
  report_progress("builder stages", std::min(t_stage++, kBuilderStages - 1), kBuilderStages);
  if (skipped_by_environment(name)) {
    KILN_LOG(kWarning, "builder: " << name << " skipped (KILN_SKIP_PASSES)");
    return false;
  }
  size_t before = net.layers().size();
  bool changed = pass(net);
  KILN_LOG(kVerbose, "builder: " << name << (changed ? " changed the network (" : " changed nothing (")
                                 << before << " -> " << net.layers().size() << " layers)");
  return changed;
}

// The most workspace any layer's kernel wants (Kernel::workspace_wanted) at a profile's max
// shapes (the network's own shapes when it has no profiles).
size_t workspace_wanted(const Network& net, const std::vector<std::unique_ptr<Kernel>>& kernels,
                        const std::vector<OptimizationProfile>& profiles) {
  const OptimizationProfile none;
  size_t most = 0;
  for (size_t p = 0; p < std::max<size_t>(profiles.size(), 1); ++p) {
    const std::vector<TensorDesc> desc =
        infer_descs(net, profile_shapes(net, profiles.empty() ? none : profiles[p], "max"));
    for (size_t i = 0; i < kernels.size(); ++i) {
      std::vector<TensorDesc> in;
      for (TensorId t : net.layers()[i].inputs) in.push_back(desc[t]);
      most = std::max(most, kernels[i]->workspace_wanted(in));
    }
  }
  return most;
}

void choose_tactics_with_cache(Network& net, const BuilderConfig& config) {
  const std::string& path = config.timing_cache_path;
  TimingCache cache = path.empty() ? TimingCache() : TimingCache::load(path);
  const size_t known = cache.size();
  TacticStats stats;
  run_pass(
      "choose_tactics",
      [&](Network& n) {
        return choose_tactics(n, config.profiles, Backend::kCuda,
                              cuda_tactic_timer(n, config.workspace_bytes), &cache,
                              TimingEnvironment::current(), &stats);
      },
      net);
  if (stats.layers) {
    KILN_LOG(kInfo, "builder: tactics for " << stats.layers << " layers: " << stats.timed << " timed, "
                                            << stats.cache_hits << " from the timing cache");
  }
  if (path.empty() || cache.size() == known) return;
  try {
    cache.save(path);
  } catch (const Error& e) {
    KILN_LOG(kWarning, e.what() << "; the build goes on without saving its timings");
  }
}

// INT8 needs a calibrator or quantization layers of the network's own; a calibrator needs INT8
// or FP8 (not both: one calibration, one format).
void check_int8(const Network& network, const BuilderConfig& config) {
  if (!config.precision.int8) {
    KILN_CHECK(
        !config.int8_calibrator || config.precision.fp8,
        "BuilderConfig has a calibrator but neither INT8 nor FP8 is enabled: enable the \"int8\" or the "
        "\"fp8\" precision");
    return;
  }
  KILN_CHECK(!(config.int8_calibrator && config.precision.fp8),
             "BuilderConfig enables both int8 and fp8 with a calibrator: choose one (fp8 for transformers on "
             "sm_89+, int8 otherwise)");
  if (config.int8_calibrator) return;
  for (const auto& l : network.layers()) {
    if (l.op == "quantize" || l.op == "dequantize" || l.op == "fake_quantize") return;
  }
  KILN_FAIL(
      "INT8 needs either a calibrator (BuilderConfig.int8_calibrator) or a network with its own quantize / "
      "dequantize / fake_quantize layers; this network has neither");
}

}  // namespace

void check_fp8_support(int sm_arch) {
  KILN_CHECK(sm_arch >= 89,
             "FP8 (the fp8 precision, torch.float8_e4m3fn) needs a GPU of compute capability 8.9 "
             "or newer (Ada, Hopper, Blackwell); this GPU is sm_"
                 << sm_arch << ": build without FP8 (INT8 or FP16 instead)");
}

bool tactic_timing_default() {
  const char* v = std::getenv("KILN_TACTIC_TIMING");
  return !(v && std::string(v) == "0");
}

Plan Builder::build(const Network& network, const BuilderConfig& config) const {
  Backend backend = resolve_target(config.target);
  std::vector<uint8_t> cache_key;
  if (!config.engine_cache_dir.empty()) {
    cache_key = engine_cache_key(network, config, backend == Backend::kCuda,
                                 backend == Backend::kCuda ? cuda_device_arch() : 0);
    if (auto cached = engine_cache_load(config.engine_cache_dir, cache_key, network))
      return std::move(*cached);
  }
  t_stage = 0;
  report_progress("builder stages", 0, kBuilderStages);
  Plan plan;
  plan.network = network;  // the builder never modifies the caller's network
  Network& net = plan.network;
  check_int8(network, config);
  if (config.precision.fp8 && backend == Backend::kCuda) check_fp8_support(cuda_device_arch());
  if (config.int8_calibrator) {
    std::set<std::string> pinned;  // layers with a per-layer precision stay unquantized
    for (const auto& kv : config.precision.layer_precisions) pinned.insert(kv.first);
    net = quantize_network(network, *config.int8_calibrator, config.profiles,
                           config.precision.int8 ? QuantFormat::kInt8 : QuantFormat::kFp8, pinned, backend);
  }

  // 1. validate: layers, shapes and profiles.
  validate_network(net, config.profiles);

  // Layers with a per-layer precision: the passes that would merge or fuse them away leave them.
  std::set<std::string> pinned;
  for (const auto& kv : config.precision.layer_precisions) pinned.insert(kv.first);

  // 2. canonicalize. Folding first turns constant subgraphs into weights; no-op removal then
  //    reroutes around identities, so that common-subexpression elimination sees repeated
  //    layers on the same tensors (BERT's three reshapes of one LayerNorm output become one, and
  //    the Q/K/V projections then share their input for fuse_parallel_gemms); dead-layer
  //    elimination collects what all three left unused.
  if (config.optimization_level > 0) {
    run_pass(
        "fold_constants", [&](Network& n) { return fold_constants(n, config.max_folded_constant_bytes); },
        net);
    run_pass("remove_noops", remove_noops, net);
    run_pass(
        "eliminate_common_subexpressions",
        [&](Network& n) { return eliminate_common_subexpressions(n, pinned); }, net);
    run_pass("eliminate_dead_layers", eliminate_dead_layers, net);
  }

  // 3. fuse. BN folding first: it needs the conv/fully_connected without an epilogue, and
  //    leaves conv -> add -> act chains that the epilogue fusion then folds into the conv.
  //    Pattern passes that turn decomposed ops into one layer (GELU, RMS norm) come next, so a
  //    GELU written out as pointwise ops can then join a GEMM epilogue. Horizontal GEMM fusion
  //    then merges finished fully_connected layers, biases included (and leaves those with an
  //    activation or residual alone). Layers with a per-layer precision stay unfused by the GEMM
  //    passes, so the setting still has its layer. The generic pointwise fusion runs after
  //    precision assignment and layouts (see 5b).
  if (config.optimization_level > 0) {
    const auto gemm_epilogue = [&](Network& n) { return fuse_gemm_epilogue(n, pinned); };
    run_pass("fold_batch_norm", fold_batch_norm, net);
    run_pass(
        "batch_norm_to_scale_shift", [&](Network& n) { return batch_norm_to_scale_shift(n, pinned); }, net);
    run_pass("patchify_convolutions", patchify_convolutions, net);
    run_pass("space_to_depth_stems", space_to_depth_stems, net);
    run_pass(
        "collapse_transposes", [](Network& n) { return collapse_transposes(n); }, net);
    run_pass("unflatten_batched_matmuls", unflatten_batched_matmuls, net);
    run_pass("concat_views_to_transposes", concat_views_to_transposes, net);
    // Before the GEMM epilogue fusion, which would take the scores' mask add as a residual.
    run_pass(
        "fuse_attention", [&](Network& n) { return fuse_attention(n, config.max_folded_constant_bytes); },
        net);
    run_pass("fuse_gelu", fuse_gelu, net);
    run_pass("fuse_rms_norm", fuse_rms_norm, net);
    if (run_pass("rotate_half_to_gather", rotate_half_to_gather, net))
      run_pass("eliminate_dead_layers", eliminate_dead_layers, net);
    run_pass("hoist_activations", hoist_activations, net);
    run_pass("fuse_conv_epilogue", fuse_conv_epilogue, net);
    run_pass("fuse_gemm_epilogue", gemm_epilogue, net);
    run_pass(
        "fuse_parallel_gemms", [&](Network& n) { return fuse_parallel_gemms(n, pinned); }, net);
    // Attention: repeat_kv's copies of key/value heads go (grouped-query attention reads the
    // heads as they are); constant masks that hide nothing go; the transposes around attention fold into
    // its bshd layout, which leaves q, k, v as reshapes of the split the horizontal GEMM fusion
    // just made; those become one packed_attention reading the fused QKV projection. Attention
    // on view chains of one QKV projection (torch's MultiheadAttention) reads it the same way.
    if (run_pass("fold_repeat_kv", fold_repeat_kv, net))
      run_pass("eliminate_dead_layers", eliminate_dead_layers, net);
    run_pass("drop_trivial_attention_masks", drop_trivial_attention_masks, net);
    run_pass("fold_attention_transposes", fold_attention_transposes, net);
    run_pass("pack_qkv_attention", pack_qkv_attention, net);
    // When pack_attention_views fired, an out-projection may now be followed directly by its
    // residual add (the transpose between them gone), once the layers it bypassed are gone.
    if (run_pass("pack_attention_views", pack_attention_views, net)) {
      run_pass("eliminate_dead_layers", eliminate_dead_layers, net);
      run_pass("fuse_gemm_epilogue", gemm_epilogue, net);
    }
  }
  // 4. assign precision per layer: reduced precision where the flags allow it, TF32 marks.
  for (const auto& kv : config.precision.layer_precisions) {
    bool found = false;
    for (const auto& l : network.layers()) found |= l.name == kv.first;
    KILN_CHECK(found, "layer precision set for '" << kv.first << "', but the network has no such layer");
  }
  run_pass(
      "assign_precision", [&](Network& n) { return assign_precision(n, config.precision); }, net);
  // 4b. FP8: GEMMs behind an e4m3 fake_quantize become FP8 GEMMs (CUDA; the reference backend
  //     computes the fake quantization as it is, which is the same arithmetic).
  if (config.precision.fp8 && backend == Backend::kCuda && config.optimization_level > 0) {
    run_pass("quantize_fp8_gemms", quantize_fp8_gemms, net);
  }
  // 4c. INT8: convolutions behind an int8 fake_quantize become INT8 convolutions, on every
  //     backend (the reference backend computes them exactly, with integer sums, so CPU builds
  //     test the INT8 layers the GPU runs).
  if (config.precision.int8 && config.optimization_level > 0) {
    run_pass(
        "quantize_int8_layers", [&](Network& n) { return quantize_int8_layers(n, true, pinned); }, net);
  }
  if (config.optimization_level > 0) run_pass("eliminate_dead_layers", eliminate_dead_layers, net);
  // 4d. The quantize layers those passes made where a normalization's value is a GEMM's quantized
  //     input and also a residual: the normalization writes the quantized copy itself.
  if ((config.precision.int8 || config.precision.fp8) && config.optimization_level > 0) {
    run_pass("fold_quantize_copies", fold_quantize_copies, net);
  }
  // 5. choose layouts: channels last for float16/bfloat16 convolutions (after precision, which
  //    decides the dtypes), transposes only where a chain of channels-last layers ends.
  if (config.optimization_level > 0) {
    run_pass("assign_layouts", assign_layouts, net);
    // The layout transposes against the model's own permutes: pairs that cancel go, chains of
    // two become one.
    run_pass(
        "compose_transposes", [](Network& n) { return collapse_transposes(n, true); }, net);
    // A channel shuffle left as concat + transpose (in whatever dims the layouts gave it): one concat.
    run_pass("fold_channel_shuffles", fold_channel_shuffles, net);
  }
  // 5b. fuse chains of pointwise layers into one generated kernel each. After precision
  //     assignment on purpose: each layer's compute dtype, and the casts that pass inserted, are
  //     then explicit in the graph and go into the program as they are, so per-layer precisions
  //     hold inside fused kernels too. After layouts, so channels-last chains fuse as they are.
  if (config.optimization_level > 0) run_pass("fuse_pointwise", fuse_pointwise, net);

  // 6. choose tactics: time the candidate implementations of layers that have several (CUDA),
  //    through the timing cache; then one kernel per layer on the target backend. A kernel that
  //    generated code keeps it in its layer (store_artifacts), so that loading the plan does not
  //    generate it again.
  if (backend == Backend::kCuda && config.tactic_timing) choose_tactics_with_cache(net, config);
  // Views (reshape, flatten, squeeze, unsqueeze) become aliases of their input: no kernel, no
  // memory of their own (alias_views). After tactic timing, which runs layers on scratch buffers.
  if (config.optimization_level > 0) run_pass("alias_views", alias_views, net);
  std::vector<std::unique_ptr<Kernel>> kernels;
  for (auto& l : net.mutable_layers()) {
    kernels.push_back(create_kernel(l, backend));
    kernels.back()->store_artifacts(l.attrs);
    check_attributes(l);  // what the passes and kernels set is declared too, so the plan loads
    plan.kernels.push_back(kernels.back()->name());
  }

  // 7. plan memory: tensor lifetimes -> offsets in one activation arena; the workspace is the
  //    configured size, or what a chosen tactic wants at the profiles' largest shapes if more.
  plan.profiles = config.profiles;
  plan.memory = plan_memory(net, plan.profiles);
  plan.memory.workspace_bytes =
      static_cast<int64_t>(std::max(config.workspace_bytes, workspace_wanted(net, kernels, plan.profiles)));

  plan.header.kiln_version = kiln_version_number();
  plan.header.cuda_version = static_cast<uint32_t>(cuda_runtime_version());
  plan.header.cublaslt_version = static_cast<uint32_t>(cublaslt_version());
  plan.header.cudnn_version = static_cast<uint32_t>(cudnn_version());
  plan.header.sm_arch = backend == Backend::kCuda ? static_cast<uint32_t>(cuda_device_arch()) : 0;
  KILN_LOG(kInfo, "builder: " << net.layers().size() << " layers, arena " << plan.memory.arena_bytes
                              << " bytes, target " << backend_name(backend)
                              << (plan.header.sm_arch ? " sm_" + std::to_string(plan.header.sm_arch)
                                                      : std::string()));
  report_progress("builder stages", kBuilderStages, kBuilderStages);
  if (!cache_key.empty())
    engine_cache_store(config.engine_cache_dir, cache_key, plan, config.engine_cache_max_bytes);
  return plan;
}

}  // namespace kiln
