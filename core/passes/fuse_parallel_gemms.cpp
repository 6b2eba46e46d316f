// fuse_parallel_gemms: horizontal fusion of fully_connected layers that read the same tensor
// (the Q, K and V projections of attention; gate and up projections of gated MLPs):
//
//   y_i = fully_connected(x, W_i [N_i, K], b_i)  for i = 1..n
//     -> y = fully_connected(x, concat_rows(W_1..W_n), concat(b_1..b_n)); (y_1..y_n) = split(y, -1)
//
// One GEMM with N = sum N_i fills the GPU better than n small ones and saves launches; the split
// costs one copy of the outputs. Safe because a row of x W^T is the concatenation of the rows of
// each x W_i^T. Only plain layers merge: constant weights (and all biases constant or all absent),
// one dtype, no activation or residual, the same allow_tf32. A matmul on a 2-D constant weight
// that no epilogue made a fully_connected (a Linear without bias: Llama's Q, K and V) joins as the
// fully_connected it is (weight W [K, N] taken as W^T [N, K]). The fused layer and the split take
// the place of the first member (every member's inputs exist there); the split writes the
// members' original output tensors, so their consumers are untouched. The fused layer lists the
// original layers in "fused".
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/weight_transforms.h"

namespace kiln {
namespace {

// x [..., K] (rank >= 2) times a 2-D constant: W [K, N], or W [N, K] with transpose_b.
bool constant_weight_matmul(const Network& net, const Layer& l) {
  if (l.op != "matmul" || l.inputs.size() != 2 || l.attrs.get_int("transpose_a", int64_t{0}) != 0)
    return false;
  const Tensor& w = net.tensor(l.inputs[1]);
  return net.tensor(l.inputs[0]).dims.size() >= 2 && w.kind == TensorKind::kConstant && w.dims.size() == 2;
}

bool plain_constant_fc(const Network& net, const Layer& l) {
  if (constant_weight_matmul(net, l)) return true;
  if (l.op != "fully_connected" || l.attrs.get_int("residual", int64_t{0}) != 0) return false;
  if (l.attrs.has("activation") && l.attrs.get_string("activation", l.name) != "none") return false;
  for (size_t i = 1; i < l.inputs.size(); ++i) {
    if (net.tensor(l.inputs[i]).kind != TensorKind::kConstant) return false;
  }
  return true;
}

// The member's weight as fully_connected holds it: [N, K].
Dims fc_weight_dims(const Network& net, const Layer& l) {
  const Dims& d = net.tensor(l.inputs[1]).dims;
  if (l.op == "matmul" && l.attrs.get_int("transpose_b", int64_t{0}) == 0) return {d[1], d[0]};
  return d;
}

// Members of one group must agree on everything but N.
bool compatible(const Network& net, const Layer& a, const Layer& b) {
  const Tensor &wa = net.tensor(a.inputs[1]), &wb = net.tensor(b.inputs[1]);
  if (wa.dtype != wb.dtype || fc_weight_dims(net, a)[1] != fc_weight_dims(net, b)[1] ||
      a.inputs.size() != b.inputs.size())
    return false;
  if (a.inputs.size() == 3 && net.tensor(a.inputs[2]).dtype != net.tensor(b.inputs[2]).dtype) return false;
  return a.attrs.get_int("allow_tf32", int64_t{0}) == b.attrs.get_int("allow_tf32", int64_t{0});
}

}  // namespace

bool fuse_parallel_gemms(Network& net, const std::set<std::string>& keep) {
  // Groups by shared input, in order of first appearance; members in layer order.
  std::map<TensorId, std::vector<std::vector<int>>> groups;
  const auto& layers = net.layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& l = layers[i];
    if (keep.count(l.name) || !plain_constant_fc(net, l)) continue;
    auto& lists = groups[l.inputs[0]];
    bool placed = false;
    for (auto& g : lists) {
      if (compatible(net, layers[g.front()], l)) {
        g.push_back(static_cast<int>(i));
        placed = true;
        break;
      }
    }
    if (!placed) lists.push_back({static_cast<int>(i)});
  }

  std::set<std::string> names;
  for (const auto& l : layers) names.insert(l.name);
  std::map<int, std::vector<Layer>> replacement;  // first member -> fused layer + split
  std::set<int> removed;
  for (auto& kv : groups) {
    for (const auto& g : kv.second) {
      if (g.size() < 2) continue;
      const Layer first = layers[g.front()];  // a copy: add_layer below may move the layer list
      const bool bias = first.inputs.size() == 3;
      std::vector<TensorId> weights, biases;
      std::vector<int64_t> sizes;
      std::string absorbed;
      for (int i : g) {
        const Layer l = layers[i];  // a copy: adding a constant below may move the layer list
        const bool transpose = l.op == "matmul" && l.attrs.get_int("transpose_b", int64_t{0}) == 0;
        weights.push_back(
            transpose ? add_derived_constant(
                            net, unique_tensor_name(net, net.tensor(l.inputs[1]).name + "_transposed"),
                            "transpose2d", Attributes(), {l.inputs[1]})
                      : l.inputs[1]);
        if (bias) biases.push_back(l.inputs[2]);
        sizes.push_back(fc_weight_dims(net, l)[0]);
        absorbed += (absorbed.empty() ? "" : ",") + fused_names(l);
      }
      const std::string base = unique_name(names, first.name + "_merged");
      names.insert(base);
      std::vector<TensorId> inputs = {
          first.inputs[0], add_derived_constant(net, base + ".weight", "concat_rows", Attributes(), weights)};
      if (bias)
        inputs.push_back(add_derived_constant(net, base + ".bias", "concat_rows", Attributes(), biases));
      Attributes attrs;
      if (first.attrs.has("allow_tf32"))
        attrs.set("allow_tf32", first.attrs.get_int("allow_tf32", first.name));
      attrs.set("fused", absorbed);
      // add_layer infers the output and validates; the layer is then moved to its place.
      Layer fused = net.add_layer("fully_connected", inputs, attrs, base);
      net.mutable_layers().pop_back();
      Layer split;
      split.name = unique_name(names, first.name + "_split");
      names.insert(split.name);
      split.op = "split";
      split.inputs = {fused.outputs[0]};
      const int64_t rank = static_cast<int64_t>(net.tensor(fused.outputs[0]).dims.size());
      split.attrs.set("axis", rank - 1).set("sizes", sizes);
      for (int i : g) split.outputs.push_back(layers[i].outputs[0]);
      replacement[g.front()] = {std::move(fused), std::move(split)};
      removed.insert(g.begin(), g.end());
    }
  }
  if (replacement.empty()) return false;

  std::vector<Layer> kept;
  auto& all = net.mutable_layers();
  for (size_t i = 0; i < all.size(); ++i) {
    auto it = replacement.find(static_cast<int>(i));
    if (it != replacement.end()) {
      for (auto& l : it->second) kept.push_back(std::move(l));
    } else if (!removed.count(static_cast<int>(i))) {
      kept.push_back(std::move(all[i]));
    }
  }
  all = std::move(kept);
  net.compact();
  return true;
}

}  // namespace kiln
