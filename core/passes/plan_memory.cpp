// plan_memory: places every arena tensor (an activation that is not a network output) at an
// offset of one activation arena. Tensors whose lifetimes overlap never share bytes. Greedy:
// largest tensor first, each at the lowest 256-byte-aligned offset free during its lifetime
// (place_in_arena, core/plan.h, which execution contexts also use for the shapes in use).
// Sizes are the maximum over every profile's min/opt/max shapes.
#include "core/passes/passes.h"

namespace kiln {

MemoryPlan plan_memory(const Network& net, const std::vector<OptimizationProfile>& profiles) {
  return place_in_arena(net, arena_conflicts(net), max_tensor_bytes(net, profiles));
}

}  // namespace kiln
