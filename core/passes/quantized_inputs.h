// What the quantization passes (quantize_fp8_gemms, quantize_int8_layers, fold_quantize_copies)
// share: from a GEMM's input back to the quantization layer that feeds it, and the views between
// repeated on the quantized tensor; from a quantize back to the layer whose value it quantizes,
// and the views between moved onto the quantized tensor when that layer writes it itself.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/pattern_match.h"
#include "core/plan.h"
#include "ir/network.h"

namespace kiln {

// A max pooling (not adaptive): it commutes with a per-tensor quantization (both monotone), so an
// int8 layer may read it computed on the int8 tensor (ResNet's stem pool before its first block).
inline bool is_max_pooling(const Layer& l) {
  return l.op == "pooling" && l.inputs.size() == 1 && l.attrs.has("type") &&
         l.attrs.get_string("type", l.name) == "max";
}

// The index in `layers` of the layer producing `t`, looking through float casts and, with
// `views`, through view layers (reshape, flatten, squeeze, unsqueeze), with `max_pools` through
// max poolings; -1 for a network input or constant. `chain` receives the layers looked through,
// nearest to `t` first.
inline int quantization_producer(const Network& net, const std::vector<Layer>& layers,
                                 const std::vector<int>& producer, TensorId t, bool views,
                                 std::vector<const Layer*>* chain, bool max_pools = false) {
  int p = producer[static_cast<size_t>(t)];
  while (p >= 0) {
    const Layer& l = layers[static_cast<size_t>(p)];
    if (!is_float_cast(net, l) && !(views && is_view_op(l.op)) && !(max_pools && is_max_pooling(l))) break;
    chain->push_back(&l);
    p = producer[static_cast<size_t>(l.inputs[0])];
  }
  return p;
}

// Repeats `chain` (as quantization_producer filled it) on the quantized tensors: `quantized` maps
// a float tensor to its quantized version and holds the quantization's output; a cast's output
// stands for the same quantized tensor, a view is added again (named with `suffix`) on the
// quantized one. Each tensor is done once. Returns the quantized version of the chain's last
// output (the GEMM's input).
inline TensorId repeat_views(Network& net, std::map<TensorId, TensorId>& quantized,
                             const std::vector<const Layer*>& chain, std::set<std::string>& used,
                             const std::string& suffix, TensorId gemm_input) {
  for (auto v = chain.rbegin(); v != chain.rend(); ++v) {
    const Layer& view = **v;
    if (quantized.count(view.outputs[0])) continue;
    if (view.op == "cast") {
      quantized[view.outputs[0]] = quantized.at(view.inputs[0]);
      continue;
    }
    std::vector<TensorId> in = view.inputs;
    in[0] = quantized.at(in[0]);
    quantized[view.outputs[0]] =
        net.add_layer(view.op, in, view.attrs, unique_name(used, view.name + suffix)).outputs[0];
  }
  return quantized.at(gemm_input);
}

// The index in `layers` of the layer whose value the quantize `q` reads, through views whose
// outputs only the next of them reads (`sole`); -1 for a network input or constant. `views`
// receives them, nearest to the quantize first; *value the producer's output they start from.
template <typename Sole>
int quantized_value_producer(const std::vector<Layer>& layers, const std::vector<int>& producer,
                             const Layer& q, Sole sole, std::vector<size_t>* views, TensorId* value) {
  TensorId t = q.inputs[0];
  int p = producer[static_cast<size_t>(t)];
  while (p >= 0 && is_view_op(layers[static_cast<size_t>(p)].op) && sole(t)) {
    views->push_back(static_cast<size_t>(p));
    t = layers[static_cast<size_t>(p)].inputs[0];
    p = producer[static_cast<size_t>(t)];
  }
  *value = t;
  return p;
}

// The producer now writes the quantize's tensor itself: the views (as quantized_value_producer
// gave them) move onto quantized tensors, the last writing `quantized` (the quantize's output).
// Returns the tensor the producer writes (`quantized` without views).
inline TensorId move_views_to_quantized(Network& net, std::vector<Layer>& layers,
                                        const std::vector<size_t>& views, TensorId quantized,
                                        const std::string& suffix) {
  const DataType dtype = net.tensor(quantized).dtype;
  for (size_t v : views) {
    layers[v].outputs[0] = quantized;
    const Tensor& in = net.tensor(layers[v].inputs[0]);
    quantized = add_pass_tensor(net, in.name + suffix, dtype, in.dims);
    layers[v].inputs[0] = quantized;
  }
  return quantized;
}

// Drops the layers marked `folded` (quantize layers folded into their producers) and compacts the
// network; returns whether any was.
inline bool drop_folded(Network& net, const std::vector<bool>& folded) {
  std::vector<Layer>& layers = net.mutable_layers();
  std::vector<Layer> kept;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!folded[i]) kept.push_back(std::move(layers[i]));
  }
  const bool changed = kept.size() != layers.size();
  layers = std::move(kept);
  if (changed) net.compact();
  return changed;
}

}  // namespace kiln
