// What the quantization passes (quantize_fp8_gemms, quantize_int8_layers) share: from a GEMM's
// input back to the quantization layer that feeds it, and the views between repeated on the
// quantized tensor.
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

// The index in `layers` of the layer producing `t`, looking through float casts and, with
// `views`, through view layers (reshape, flatten, squeeze, unsqueeze); -1 for a network input or
// constant. `chain` receives the layers looked through, nearest to `t` first.
inline int quantization_producer(const Network& net, const std::vector<Layer>& layers,
                                 const std::vector<int>& producer, TensorId t, bool views,
                                 std::vector<const Layer*>* chain) {
  int p = producer[static_cast<size_t>(t)];
  while (p >= 0) {
    const Layer& l = layers[static_cast<size_t>(p)];
    if (!is_float_cast(net, l) && !(views && is_view_op(l.op))) break;
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

}  // namespace kiln
