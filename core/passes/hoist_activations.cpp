// hoist_activations: an activation that reads a GEMM's or a convolution's output through view
// layers only (reshape, flatten, squeeze, unsqueeze, transpose) moves up to read that output
// directly; the views then rearrange its result:
//
//   y = activation(view*(gemm(...)))   ->   y = view*(activation(gemm(...)))
//
// Exact: an activation maps each element on its own, and views only move elements. It hands the
// activation to the epilogue fusions after it (fuse_conv_epilogue, fuse_gemm_epilogue):
// patchify_convolutions leaves a squeeze-and-excitation block's 1x1 convolutions on its 1x1
// image as fully_connected -> reshape -> transpose -> relu / hardsigmoid (mobilenet_v3), and the
// activations ran as kernels of their own. Fires only along tensors read once and no network
// output (no other reader sees the moved values), on GEMMs and convolutions without an epilogue
// activation or residual yet.
#include <set>
#include <string>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"

namespace kiln {
namespace {

bool is_view(const Layer& l) {
  return l.op == "reshape" || l.op == "flatten" || l.op == "squeeze" || l.op == "unsqueeze" ||
         l.op == "transpose";
}

bool takes_an_activation(const Layer& l) {
  if (l.op != "fully_connected" && l.op != "matmul" && l.op != "convolution") return false;
  return !l.attrs.has("activation") && l.attrs.get_int("residual", int64_t{0}) == 0;
}

}  // namespace

bool hoist_activations(Network& net) {
  const std::vector<int> producer = net.producers();
  std::vector<int> uses = reader_counts(net);
  auto read_once = [&](TensorId t) { return uses[t] == 1 && !net.is_output(t); };

  struct Move {
    int activation, head, first_view, last_view;
  };
  std::vector<Move> moves;
  std::set<int> heads;
  const auto& layers = net.layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& a = layers[i];
    if (a.op != "activation" || a.inputs.size() != 1) continue;
    TensorId t = a.inputs[0];
    int first_view = -1, last_view = -1;
    while (read_once(t) && producer[t] >= 0 && is_view(layers[producer[t]])) {
      first_view = producer[t];
      if (last_view < 0) last_view = first_view;
      t = layers[first_view].inputs[0];
    }
    const int head = t >= 0 && read_once(t) ? producer[t] : -1;
    if (first_view < 0 || head < 0 || heads.count(head) || !takes_an_activation(layers[head])) continue;
    heads.insert(head);
    moves.push_back({static_cast<int>(i), head, first_view, last_view});
  }
  if (moves.empty()) return false;

  std::vector<Layer>& list = net.mutable_layers();
  std::vector<int> after_head(list.size(), -1);  // head index -> the activation moved behind it
  std::set<int> moved;
  for (const Move& m : moves) {
    Layer& a = list[m.activation];
    const TensorId head_out = list[m.head].outputs[0];
    const DataType dtype = net.tensor(head_out).dtype;
    const Dims dims = net.tensor(head_out).dims;
    const TensorId hoisted = add_pass_tensor(net, a.name + "/hoisted", dtype, dims);
    // The last view writes what the activation wrote; the first reads the activation.
    list[m.last_view].outputs[0] = a.outputs[0];
    list[m.first_view].inputs[0] = hoisted;
    a.inputs[0] = head_out;
    a.outputs[0] = hoisted;
    after_head[m.head] = m.activation;
    moved.insert(m.activation);
  }
  std::vector<Layer> reordered;
  reordered.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    if (moved.count(static_cast<int>(i))) continue;
    reordered.push_back(std::move(list[i]));
    if (after_head[i] >= 0) reordered.push_back(std::move(list[after_head[i]]));
  }
  list = std::move(reordered);
  net.compact();
  return true;
}

}  // namespace kiln
