// eliminate_common_subexpressions: layers that compute the same thing become one.
//
//   y1 = op(x1..xn; attrs), y2 = op(x1..xn; attrs)  ->  y1 = op(x1..xn; attrs), y2's readers read y1
//
// Every op is a pure function of its inputs and attributes, so two layers with the same op, the
// same input tensors and equal attributes produce equal outputs. torch.export repeats work the
// model wrote once per use (BERT reshapes the LayerNorm output three times, once each for the
// Q, K and V projections); merging those lets fuse_parallel_gemms see one shared input.
// Layers are visited in order with their inputs already redirected, so chains of duplicates
// merge in one sweep. A duplicate that writes a network output stays (its binding needs the
// tensor), and so do layers in `keep` (a per-layer precision belongs to that layer). Small
// constants with equal dtype, shape and bytes count as one tensor for the comparison, unless they
// derive from refittable weights (equal today, zero biases say, they may differ after a refit).
#include <map>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/passes/passes.h"
#include "core/weight_transforms.h"

namespace kiln {
namespace {
constexpr size_t kMaxComparedConstantBytes = 1024;
}  // namespace

bool eliminate_common_subexpressions(Network& net, const std::set<std::string>& keep) {
  using Key = std::tuple<std::string, std::vector<TensorId>, size_t>;  // op, inputs, output count
  std::map<Key, std::vector<int>> seen;                                // -> earlier layers (indices)
  std::unordered_map<TensorId, TensorId> replace;                      // duplicate output -> first's
  // Small constants with equal contents are one value (converters make a fresh constant for each
  // literal, e.g. the 64 of every reshape target [-1, 64]); large ones (weights) are not compared.
  std::map<std::tuple<DataType, Dims, std::vector<uint8_t>>, TensorId> constants;
  for (const Tensor& t : net.tensors()) {
    if (t.kind != TensorKind::kConstant || !t.data || t.data->size() > kMaxComparedConstantBytes ||
        derives_from_weight(t))
      continue;
    auto it = constants.emplace(std::make_tuple(t.dtype, t.dims, *t.data), t.id).first;
    if (it->second != t.id) replace[t.id] = it->second;
  }
  bool changed = false;  // a layer dropped or an input redirected to an equal constant
  auto& layers = net.mutable_layers();
  std::vector<bool> dropped(layers.size(), false);
  for (size_t i = 0; i < layers.size(); ++i) {
    Layer& l = layers[i];
    for (TensorId& t : l.inputs) {
      auto it = replace.find(t);
      if (it != replace.end()) {
        t = it->second;
        changed = true;
      }
    }
    if (keep.count(l.name)) continue;
    bool writes_output = false;
    for (TensorId t : l.outputs) writes_output = writes_output || net.is_output(t);
    auto& candidates = seen[Key{l.op, l.inputs, l.outputs.size()}];
    int first = -1;
    for (int c : candidates) {
      if (layers[c].attrs == l.attrs) {
        first = c;
        break;
      }
    }
    if (first < 0 || writes_output) {
      if (first < 0) candidates.push_back(static_cast<int>(i));
      continue;
    }
    for (size_t o = 0; o < l.outputs.size(); ++o) replace[l.outputs[o]] = layers[first].outputs[o];
    dropped[i] = true;
    changed = true;
  }
  if (!changed) return false;
  std::vector<Layer> kept;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!dropped[i]) kept.push_back(std::move(layers[i]));
  }
  layers = std::move(kept);
  net.compact();
  return true;
}

}  // namespace kiln
