// eliminate_dead_layers: removes layers none of whose outputs reach a network output, walking
// backwards from the outputs. Always safe: layers have no side effects.
#include "core/passes/passes.h"

namespace kiln {

bool eliminate_dead_layers(Network& net) {
  std::vector<bool> needed(net.tensors().size(), false);
  for (TensorId t : net.outputs()) needed[t] = true;
  auto& layers = net.mutable_layers();
  std::vector<bool> live(layers.size(), false);
  for (int i = static_cast<int>(layers.size()) - 1; i >= 0; --i) {
    for (TensorId t : layers[i].outputs) live[i] = live[i] || needed[t];
    if (live[i]) {
      for (TensorId t : layers[i].inputs) needed[t] = true;
    }
  }
  std::vector<Layer> kept;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (live[i]) kept.push_back(std::move(layers[i]));
  }
  bool changed = kept.size() != layers.size();
  layers = std::move(kept);
  if (changed) net.compact();
  return changed;
}

}  // namespace kiln
