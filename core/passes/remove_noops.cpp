// remove_noops: drops layers that compute y = x by pointing y's consumers at x: identity, and
// layers whose attributes make them copies: a pad of zeros, a slice that keeps every element
// (steps 1, static dims unchanged), a transpose by the identity permutation, a cast to the
// input's own dtype, a reshape or expand to the input's own static dims (torchvision's Swin pads
// each window grid by (size - W % size) % size, zero at 224 x 224, and slices it back).
// A no-op whose output is a network output is kept: the output binding needs its own buffer.
#include <unordered_map>

#include "core/passes/passes.h"
#include "ir/ops/shape.h"

namespace kiln {
namespace {

bool all_equal(const std::vector<int64_t>& v, int64_t value) {
  for (int64_t x : v) {
    if (x != value) return false;
  }
  return true;
}

bool is_noop(const Network& net, const Layer& l) {
  if (l.op == "identity") return true;
  if (l.inputs.size() != 1 || l.outputs.size() != 1) return false;
  const Tensor &x = net.tensor(l.inputs[0]), &y = net.tensor(l.outputs[0]);
  if (x.dtype != y.dtype) return false;
  if (l.op == "cast") return true;
  if (l.op == "pad") return all_equal(l.attrs.get_ints("pads", l.name), 0);
  if (x.dims != y.dims || !is_static(x.dims)) return false;
  if (l.op == "slice") return !l.attrs.has("steps") || all_equal(l.attrs.get_ints("steps", l.name), 1);
  if (l.op == "transpose") {
    const std::vector<int64_t> perm = resolve_perm(l, static_cast<int64_t>(x.dims.size()));
    for (size_t d = 0; d < perm.size(); ++d) {
      if (perm[d] != static_cast<int64_t>(d)) return false;
    }
    return true;
  }
  return l.op == "reshape" || l.op == "expand";
}

}  // namespace

bool remove_noops(Network& net) {
  std::unordered_map<TensorId, TensorId> replace;  // y -> x
  std::vector<Layer> kept;
  for (auto& l : net.mutable_layers()) {
    for (TensorId& t : l.inputs) {
      auto it = replace.find(t);
      if (it != replace.end()) t = it->second;
    }
    if (!net.is_output(l.outputs[0]) && is_noop(net, l)) {
      replace[l.outputs[0]] = l.inputs[0];
      continue;
    }
    kept.push_back(std::move(l));
  }
  net.mutable_layers() = std::move(kept);
  if (replace.empty()) return false;
  net.compact();
  return true;
}

}  // namespace kiln
