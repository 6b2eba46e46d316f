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
// [B, windows, S, H, D] at rank 5): three copies go for at most one. An operand that is such a
// swap written as another chain of view layers (ONNX exports of SDPA give k as
// reshape [B*H, S, D] -> transpose -> reshape, which fuse_attention turns back into k) counts
// too: it is read as a reshape of the chain's root to [B..., S, H, D]. The input transposes and
// view chains stay while other layers (or the network outputs) read them; the pass removes those
// it left unused.
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/passes/strided_view.h"
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

// The tensor R that attention operand `t` ([B..., H, S, D]) reads through view layers as R
// reshaped to [B..., S, H, D] with the head and sequence dims swapped; -1 when there is none.
TensorId bshd_root(const Network& net, const ViewTracer& tracer, TensorId t) {
  StridedView v;
  if (!tracer.trace(t, &v) || v.root == t) return -1;
  const Tensor& root = net.tensor(v.root);
  if (root.dtype != net.tensor(t).dtype) return -1;
  Dims bshd = net.tensor(t).dims;
  const size_t rank = bshd.size();
  std::swap(bshd[rank - 3], bshd[rank - 2]);
  StridedView swapped;
  if (!reshape_view(row_major(v.root, root.dims), bshd, &swapped)) return -1;
  std::swap(swapped.dims[rank - 3], swapped.dims[rank - 2]);
  return same_view(v, swapped) ? v.root : -1;
}

}  // namespace

bool fold_attention_transposes(Network& net) {
  const std::vector<int> producer = net.producers();
  std::vector<int> uses = reader_counts(net);
  std::set<std::string> names;
  for (const auto& l : net.layers()) names.insert(l.name);

  const ViewTracer tracer(net);
  std::set<int> input_transposes, removed;    // layer indices
  std::vector<std::pair<int, Layer>> before;  // reshapes to insert before attention layer i
  std::vector<std::pair<int, Layer>> after;   // transposes to insert after attention layer i
  // Outputs of folded attention layers whose transpose reader now writes the result: nothing
  // produces them any more (the tracer, built before, would still trace through that reader).
  std::set<TensorId> orphaned;
  bool changed = false;
  for (size_t i = 0; i < net.layers().size(); ++i) {
    const Layer& l = net.layers()[i];
    if (l.op != "attention" || net.tensor(l.inputs[0]).dims.size() < 4) continue;
    if (attention_attrs(l).layout != AttentionLayout::kBHSD) continue;
    std::vector<TensorId> sources;  // q, k, v in [B..., S, H, D]
    std::vector<int> transposes;
    std::vector<std::pair<int, TensorId>> views;  // (operand, root) read through other view chains
    for (int j = 0; j < 3; ++j) {
      const int p = producer[l.inputs[j]];
      // (Not a transpose this pass already folded into an earlier attention's output.)
      if (p >= 0 && !removed.count(p) && swaps_head_and_seq(net, net.layers()[p])) {
        sources.push_back(net.layers()[p].inputs[0]);
        transposes.push_back(p);
      } else if (const TensorId root = bshd_root(net, tracer, l.inputs[j]);
                 root >= 0 && !orphaned.count(root)) {
        sources.push_back(-1);  // the reshape made below
        views.emplace_back(j, root);
      }
    }
    if (sources.size() != 3) continue;
    for (const auto& [j, root] : views) {
      Dims bshd = net.tensor(l.inputs[j]).dims;
      std::swap(bshd[bshd.size() - 3], bshd[bshd.size() - 2]);
      const std::string name = unique_name(names, l.name + "/" + "qkv"[j] + "_bshd");
      Layer reshape;
      reshape.name = name;
      reshape.op = "reshape";
      reshape.inputs = {root};
      reshape.attrs.set("shape", bshd);
      reshape.outputs = {add_pass_tensor(net, name, net.tensor(root).dtype, bshd)};
      sources[j] = reshape.outputs[0];
      before.emplace_back(static_cast<int>(i), std::move(reshape));
    }

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
    for (int j = 0; j < 3; ++j) folded.inputs[j] = sources[j];
    if (reader >= 0) {
      folded.outputs[0] = net.layers()[reader].outputs[0];
      add_fused_name(folded, net.layers()[reader].name);
      removed.insert(reader);
      orphaned.insert(out);
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
    input_transposes.insert(transposes.begin(), transposes.end());
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
  size_t next = 0, next_before = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    for (; next_before < before.size() && before[next_before].first == static_cast<int>(i); ++next_before) {
      kept.push_back(std::move(before[next_before].second));
    }
    if (!removed.count(static_cast<int>(i))) kept.push_back(std::move(layers[i]));
    for (; next < after.size() && after[next].first == static_cast<int>(i); ++next) {
      kept.push_back(std::move(after[next].second));
    }
  }
  layers = std::move(kept);
  net.compact();
  // The view chains the reshapes above bypassed, now unread.
  if (!before.empty()) eliminate_dead_layers(net);
  return true;
}

}  // namespace kiln
