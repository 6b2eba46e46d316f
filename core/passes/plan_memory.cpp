// plan_memory: places every arena tensor (an activation that is not a network output) at an
// offset of one activation arena. Tensors whose lifetimes overlap never share bytes. Greedy:
// largest tensor first, each at the lowest 256-byte-aligned offset free during its lifetime.
// Sizes are the maximum over every profile's min/opt/max shapes.
#include <algorithm>
#include <numeric>

#include "core/passes/passes.h"
#include "ir/error.h"

namespace kiln {
namespace {
constexpr int64_t kAlignment = 256;
int64_t align_up(int64_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; }
}  // namespace

MemoryPlan plan_memory(const Network& net, const std::vector<OptimizationProfile>& profiles) {
  const size_t n = net.tensors().size();
  std::vector<Lifetime> life = activation_lifetimes(net);
  std::vector<int64_t> bytes = max_tensor_bytes(net, profiles);
  MemoryPlan plan;
  plan.offsets.assign(n, -1);
  plan.sizes.assign(n, 0);
  std::vector<size_t> order;
  for (size_t t = 0; t < n; ++t) {
    if (life[t].in_arena) order.push_back(t);
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return bytes[a] > bytes[b]; });
  std::vector<size_t> placed;
  for (size_t t : order) {
    int64_t size = align_up(std::max<int64_t>(bytes[t], 1));
    // Busy intervals of already placed tensors that are live at the same time, by offset.
    std::vector<std::pair<int64_t, int64_t>> busy;
    for (size_t p : placed) {
      if (life[p].first <= life[t].last && life[t].first <= life[p].last) {
        busy.push_back({plan.offsets[p], plan.offsets[p] + plan.sizes[p]});
      }
    }
    std::sort(busy.begin(), busy.end());
    // Sizes are at most 2^62 (tensor_bytes), offsets below 2^62 (checked as each is placed): the
    // sums here cannot wrap.
    int64_t offset = 0;
    for (const auto& [begin, end] : busy) {
      if (offset + size <= begin) break;
      offset = std::max(offset, align_up(end));
    }
    KILN_CHECK(offset + size <= (int64_t{1} << 62), "the activation arena would exceed 2^62 bytes (tensor '"
                                                        << net.tensor(static_cast<TensorId>(t)).name << "', "
                                                        << size << " bytes)");
    plan.offsets[t] = offset;
    plan.sizes[t] = size;
    plan.arena_bytes = std::max(plan.arena_bytes, offset + size);
    placed.push_back(t);
  }
  return plan;
}

}  // namespace kiln
