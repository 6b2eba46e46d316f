// The build pipeline, read top to bottom. Later stages (fusion, precision, layouts, tactics)
// slot in between canonicalization and memory planning, in the order DESIGN.md gives.
#include "core/builder.h"

#include <functional>

#include "core/error.h"
#include "core/logging.h"
#include "core/passes/passes.h"
#include "kernels/device.h"
#include "kernels/kernel.h"

namespace kiln {
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

void run_pass(const char* name, const std::function<bool(Network&)>& pass, Network& net) {
  size_t before = net.layers().size();
  bool changed = pass(net);
  KILN_LOG(kVerbose, "builder: " << name << (changed ? " changed the network (" : " changed nothing (")
                                 << before << " -> " << net.layers().size() << " layers)");
}

}  // namespace

Plan Builder::build(const Network& network, const BuilderConfig& config) const {
  Backend backend = resolve_target(config.target);
  Plan plan;
  plan.network = network;  // the builder never modifies the caller's network
  Network& net = plan.network;

  // 1. validate: layers, shapes and profiles.
  validate_network(net, config.profiles);

  // 2. canonicalize. Folding first turns constant subgraphs into weights; no-op removal then
  //    reroutes around identities, and dead-layer elimination collects what both left unused.
  if (config.optimization_level > 0) {
    run_pass("fold_constants", fold_constants, net);
    run_pass("remove_noops", remove_noops, net);
    run_pass("eliminate_dead_layers", eliminate_dead_layers, net);
  }

  // 3. fuse.
  if (config.optimization_level > 0) {
    // BN folding first: it needs the conv without an epilogue, and leaves conv -> add -> act
    // chains that the epilogue fusion then folds into the conv.
    run_pass("fold_batch_norm", fold_batch_norm, net);
    run_pass("fuse_conv_epilogue", fuse_conv_epilogue, net);
  }
  // 4. assign precision per layer: reduced precision where the flags allow it, TF32 marks.
  for (const auto& kv : config.precision.layer_precisions) {
    bool found = false;
    for (const auto& l : network.layers()) found |= l.name == kv.first;
    KILN_CHECK(found, "layer precision set for '" << kv.first << "', but the network has no such layer");
  }
  run_pass(
      "assign_precision", [&](Network& n) { return assign_precision(n, config.precision); }, net);
  if (config.optimization_level > 0) run_pass("eliminate_dead_layers", eliminate_dead_layers, net);

  // 5. choose layouts: channels last for float16/bfloat16 convolutions (after precision, which
  //    decides the dtypes), transposes only where a chain of channels-last layers ends.
  if (config.optimization_level > 0) run_pass("assign_layouts", assign_layouts, net);

  // 6. choose kernels: one implementation per layer on the target backend.
  for (const auto& l : net.layers()) plan.kernels.push_back(create_kernel(l, backend)->name());

  // 7. plan memory: tensor lifetimes -> offsets in one activation arena.
  plan.profiles = config.profiles;
  plan.memory = plan_memory(net, plan.profiles);
  plan.memory.workspace_bytes = static_cast<int64_t>(config.workspace_bytes);

  plan.header.kiln_version = kiln_version_number();
  plan.header.cuda_version = static_cast<uint32_t>(cuda_runtime_version());
  plan.header.cublaslt_version = static_cast<uint32_t>(cublaslt_version());
  plan.header.cudnn_version = static_cast<uint32_t>(cudnn_version());
  plan.header.sm_arch = backend == Backend::kCuda ? static_cast<uint32_t>(cuda_device_arch()) : 0;
  KILN_LOG(kInfo, "builder: " << net.layers().size() << " layers, arena " << plan.memory.arena_bytes
                              << " bytes, target " << backend_name(backend)
                              << (plan.header.sm_arch ? " sm_" + std::to_string(plan.header.sm_arch)
                                                      : std::string()));
  return plan;
}

}  // namespace kiln
