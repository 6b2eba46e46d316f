// fold_repeat_kv: grouped-query attention reads its key/value heads as they are.
//
//   k' = reshape(expand(unsqueeze(k) [.., Hkv, 1, S, D] -> [.., Hkv, n, S, D]) -> [.., Hkv * n, S, D])
//   v' likewise, with the same n
//   attention(q, k', v', ...)  ->  attention(q, k, v, ...)
//
// transformers' repeat_kv (Llama, Mistral, Qwen2, Gemma) copies every key/value head n times
// before attention. Kiln's attention pairs query head h with key/value head h / (Hq / Hkv), which
// is the pairing the copies make (expanded head j * n + r is head j), so the copies go. In layout
// bshd the heads sit one dim later ([.., S, Hkv, 1, D]). The unsqueeze may be a reshape; a dynamic
// dim (the sequence) may stay dynamic as long as it is the same dim all along. The views and the
// expand are left to eliminate_dead_layers (they stay where something else reads them).
#include <vector>

#include "core/passes/passes.h"
#include "core/passes/pattern_match.h"

namespace kiln {
namespace {

// `got` is `want` with `extra` inserted at `at` (extra < 0: no insertion), dims equal elsewhere.
bool dims_with(const Dims& want, const Dims& got, size_t at, int64_t extra) {
  Dims expected = want;
  if (extra >= 0) expected.insert(expected.begin() + static_cast<std::ptrdiff_t>(at), extra);
  return expected == got;
}

// The tensor a repeat_kv chain ending in `t` copies (heads at dim `head` of t), and its repeat
// count; {-1, 0} when t is not such a chain.
std::pair<TensorId, int64_t> repeated_from(const Network& net, const PatternMatcher& match, TensorId t,
                                           size_t head) {
  auto made_by = [&](TensorId id, std::initializer_list<const char*> ops) -> const Layer* {
    const Layer* l = match.producer(id);
    for (const char* op : ops) {
      if (l && l->op == op && !l->inputs.empty() && l->outputs.size() == 1) return l;
    }
    return nullptr;
  };
  const Layer* reshape = made_by(t, {"reshape"});
  const Layer* expand = reshape ? made_by(reshape->inputs[0], {"expand"}) : nullptr;
  const Layer* unsqueeze = expand ? made_by(expand->inputs[0], {"unsqueeze", "reshape"}) : nullptr;
  if (!unsqueeze) return {-1, 0};
  const TensorId x = unsqueeze->inputs[0];
  const Dims& xd = net.tensor(x).dims;
  const Dims& ed = net.tensor(expand->outputs[0]).dims;
  const Dims& td = net.tensor(t).dims;
  if (xd.size() != td.size() || head >= xd.size() || ed.size() != xd.size() + 1) return {-1, 0};
  const int64_t n = ed[head + 1], hkv = xd[head];
  int dynamic = 0;
  for (int64_t d : xd) dynamic += d == kDynamic ? 1 : 0;
  if (n <= 1 || hkv == kDynamic || dynamic > 1 || net.tensor(x).dtype != net.tensor(t).dtype) return {-1, 0};
  Dims flat = xd;
  flat[head] = hkv * n;
  if (!dims_with(xd, net.tensor(unsqueeze->outputs[0]).dims, head + 1, 1) ||
      !dims_with(xd, ed, head + 1, n) || !dims_with(flat, td, 0, -1)) {
    return {-1, 0};
  }
  return {x, n};
}

}  // namespace

bool fold_repeat_kv(Network& net) {
  const PatternMatcher match(net);
  bool changed = false;
  for (auto& l : net.mutable_layers()) {
    if (l.op != "attention" || l.inputs.size() < 3) continue;
    const size_t rank = net.tensor(l.inputs[0]).dims.size();
    const bool bshd = l.attrs.has("layout") && l.attrs.get_string("layout", l.name) == "bshd";
    if (rank < 3 || (bshd && rank < 4)) continue;
    const size_t head = bshd ? rank - 2 : rank - 3;
    const auto [k, nk] = repeated_from(net, match, l.inputs[1], head);
    const auto [v, nv] = repeated_from(net, match, l.inputs[2], head);
    if (k < 0 || v < 0 || nk != nv) continue;
    l.inputs[1] = k;
    l.inputs[2] = v;
    changed = true;
  }
  if (changed) net.compact();
  return changed;
}

}  // namespace kiln
