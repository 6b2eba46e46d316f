// fold_attention_transposes: attention reads and writes the projections' [B, S, H, D] layout
// itself instead of going through transposes (torch's `.transpose(1, 2)` around SDPA):
//
//   attention(transpose(q'), transpose(k'), transpose(v'))            with each transpose (1 2)
//     -> attention(q', k', v'; layout = "bshd")                        output [B, S, H, Dv]
//   then  transpose(attention(...))            (its only reader)  -> the attention writes it
//   or    attention(...) read otherwise        -> one transpose (1 2) after the attention
//
// Safe because bshd attention computes exactly bhsd attention on the transposed views (the mask
// keeps its [B..., Hq, Sq, Sk] meaning). Fires only on bhsd attention of rank >= 4 whose q, k and
// v all come from transposes swapping the head and sequence dims (1 and 2 at rank 4; MaxViT's
// [B, windows, S, H, D] at rank 5): three copies go for at most one. The input
// transposes stay while other layers (or the network outputs) read them; the pass removes those
// it left unused.
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "ir/ops/attention.h"
#include "ir/ops/shape.h"

namespace kiln {
namespace {

// The permutation of a rank-`rank` tensor that swaps its dims rank - 3 and rank - 2 (head and
// sequence): [0, 2, 1, 3] at rank 4.
std::vector<int64_t> head_seq_swap(size_t rank) {
  std::vector<int64_t> perm(rank);
  for (size_t d = 0; d < rank; ++d) perm[d] = static_cast<int64_t>(d);
  std::swap(perm[rank - 3], perm[rank - 2]);
  return perm;
}

// `l` is a transpose of a rank >= 4 tensor swapping its head and sequence dims.
bool swaps_head_and_seq(const Network& net, const Layer& l) {
  const size_t rank = net.tensor(l.inputs[0]).dims.size();
  if (l.op != "transpose" || rank < 4) return false;
  return resolve_perm(l, static_cast<int64_t>(rank)) == head_seq_swap(rank);
}

}  // namespace

bool fold_attention_transposes(Network& net) {
  const std::vector<int> producer = net.producers();
  std::vector<int> uses(net.tensors().size(), 0);
  for (const auto& l : net.layers()) {
    for (TensorId t : l.inputs) ++uses[t];
  }
  std::set<std::string> names;
  for (const auto& l : net.layers()) names.insert(l.name);

  std::set<int> input_transposes, removed;   // layer indices
  std::vector<std::pair<int, Layer>> after;  // transposes to insert after attention layer i
  bool changed = false;
  for (size_t i = 0; i < net.layers().size(); ++i) {
    const Layer& l = net.layers()[i];
    if (l.op != "attention" || net.tensor(l.inputs[0]).dims.size() < 4) continue;
    if (attention_attrs(l).layout != AttentionLayout::kBHSD) continue;
    std::vector<int> sources;
    for (int j = 0; j < 3; ++j) {
      const int p = producer[l.inputs[j]];
      // (Not a transpose this pass already folded into an earlier attention's output.)
      if (p >= 0 && !removed.count(p) && swaps_head_and_seq(net, net.layers()[p])) sources.push_back(p);
    }
    if (sources.size() != 3) continue;

    // The output: taken over from a transpose (1 2) that is its only reader, or transposed back.
    const TensorId out = l.outputs[0];
    int reader = -1;
    if (!net.is_output(out) && uses[out] == 1) {
      for (size_t r = i + 1; r < net.layers().size() && reader < 0; ++r) {
        for (TensorId t : net.layers()[r].inputs) {
          if (t == out) reader = static_cast<int>(r);
        }
      }
      if (reader >= 0 && !swaps_head_and_seq(net, net.layers()[reader])) reader = -1;
    }

    Layer folded = l;  // a copy: add_layer below may move the layer list
    folded.attrs.set("layout", std::string("bshd"));
    for (int j = 0; j < 3; ++j) folded.inputs[j] = net.layers()[sources[j]].inputs[0];
    if (reader >= 0) {
      folded.outputs[0] = net.layers()[reader].outputs[0];
      add_fused_name(folded, net.layers()[reader].name);
      removed.insert(reader);
    } else {
      // A fresh [B, S, H, Dv] output (add_layer infers it), then a transpose back to `out`.
      Layer probe =
          net.add_layer("attention", folded.inputs, folded.attrs, unique_name(names, l.name + "_bshd"));
      net.mutable_layers().pop_back();
      folded.outputs[0] = probe.outputs[0];
      Layer back;
      back.name = unique_name(names, folded.name + "_to_bhsd");  // `l` may dangle after add_layer
      back.op = "transpose";
      back.inputs = {probe.outputs[0]};
      back.outputs = {out};
      back.attrs.set("perm", head_seq_swap(net.tensor(out).dims.size()));
      after.emplace_back(static_cast<int>(i), std::move(back));
    }
    net.mutable_layers()[i] = std::move(folded);
    input_transposes.insert(sources.begin(), sources.end());
    changed = true;
  }
  if (!changed) return false;

  // Input transposes nobody reads any more go. (Recounted over every tensor: the outputs the
  // probes above added are past the end of the first count.)
  uses.assign(net.tensors().size(), 0);
  for (size_t i = 0; i < net.layers().size(); ++i) {
    if (removed.count(static_cast<int>(i))) continue;
    for (TensorId t : net.layers()[i].inputs) ++uses[t];
  }
  for (const auto& kv : after) ++uses[kv.second.inputs[0]];
  for (int t : input_transposes) {
    const TensorId y = net.layers()[t].outputs[0];
    if (uses[y] == 0 && !net.is_output(y)) removed.insert(t);
  }

  std::vector<Layer> kept;
  auto& layers = net.mutable_layers();
  size_t next = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!removed.count(static_cast<int>(i))) kept.push_back(std::move(layers[i]));
    for (; next < after.size() && after[next].first == static_cast<int>(i); ++next) {
      kept.push_back(std::move(after[next].second));
    }
  }
  layers = std::move(kept);
  net.compact();
  return true;
}

}  // namespace kiln
