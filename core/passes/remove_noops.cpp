// remove_noops: drops layers that compute y = x (identity) by pointing y's consumers at x.
// A no-op whose output is a network output is kept: the output binding needs its own buffer.
#include <unordered_map>

#include "core/passes/passes.h"

namespace kiln {

bool remove_noops(Network& net) {
  std::unordered_map<TensorId, TensorId> replace;  // y -> x
  std::vector<Layer> kept;
  for (auto& l : net.mutable_layers()) {
    for (TensorId& t : l.inputs) {
      auto it = replace.find(t);
      if (it != replace.end()) t = it->second;
    }
    if (l.op == "identity" && !net.is_output(l.outputs[0])) {
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
