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
//
// First, transposes sink to the attention through the layers that commute with them: a rotary
// embedding between the transposes and the attention (transformers' Llama, Mistral, Qwen2: q and
// k transposed to [B, H, S, D], then q * cos + rotate_half(q) * sin) is computed in [B, S, H, D]
// instead, so that q, k and v reach the attention as transposes, which the fold then takes:
//
//   attention(f(transpose(q'), c...), ...)  ->  attention(transpose(f(q', swap(c)...)), ...)
//
// where f is a cone of pointwise layers (elementwise, unary, activation, cast) and gathers along
// another dim with a 1-D index, each read only inside the cone, whose other operands c broadcast
// with a size-1 head or sequence dim (cos and sin [B, 1, S, D]: their swap is a reshape).
// Pointwise arithmetic on the same values in another order: exact. Fires only where all three
// operands then are transposes (so no transpose is added that the fold does not take).
#include <algorithm>
#include <map>
#include <optional>
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

// ---- sinking transposes through the layers between them and the attention ----------------------

constexpr int kMaxConeDepth = 16;

// `l` commutes with a head/sequence swap of its rank-`rank` output: pointwise, or a gather along
// another dim than the two swapped with a 1-D index.
bool commutes_with_swap(const Network& net, const Layer& l, size_t rank) {
  if (l.outputs.size() != 1) return false;
  if (l.op == "elementwise" || l.op == "unary" || l.op == "activation" || l.op == "cast") return true;
  if (l.op != "gather" || l.inputs.size() != 2 || net.tensor(l.inputs[1]).dims.size() != 1) return false;
  int64_t axis = l.attrs.get_int("axis", int64_t{0});
  if (axis < 0) axis += static_cast<int64_t>(rank);
  return axis != static_cast<int64_t>(rank) - 3 && axis != static_cast<int64_t>(rank) - 2;
}

// The dims a side operand (broadcast against rank `rank`) has in the swapped order, or nothing when
// the swap is not a reshape (both swapped dims above 1) or the reshape would have two unknown dims.
std::optional<Dims> swapped_side(const Dims& d, size_t rank) {
  if (d.size() > rank) return std::nullopt;
  Dims padded(rank - d.size(), 1);
  padded.insert(padded.end(), d.begin(), d.end());
  if (padded[rank - 3] != 1 && padded[rank - 2] != 1) return std::nullopt;
  std::swap(padded[rank - 3], padded[rank - 2]);
  if (std::count(padded.begin(), padded.end(), kDynamic) > 1) return std::nullopt;
  return padded;
}

class Sinker {
 public:
  explicit Sinker(Network& net) : net_(net), producer_(net.producers()), uses_(reader_counts(net)) {}

  // Rewrites the cones in front of every bhsd attention whose q, k and v all are (or become)
  // head/sequence transposes; true when one was rewritten.
  bool run() {
    const size_t count = net_.layers().size();
    std::vector<std::vector<Layer>> replacement(count);
    std::vector<bool> dropped(count, false);
    names_ = names_in_use(net_);
    bool changed = false;
    for (size_t i = 0; i < count; ++i) {
      const Layer l = net_.layers()[i];  // a copy: adding layers below may move the list
      if (l.op != "attention" || net_.tensor(l.inputs[0]).dims.size() < 4) continue;
      if (attention_attrs(l).layout != AttentionLayout::kBHSD) continue;
      bool all = true;
      std::vector<std::pair<TensorId, std::set<int>>> cones;  // (operand, its cone's layers)
      for (int j = 0; j < 3 && all; ++j) {
        const int p = producer_[l.inputs[j]];
        if (p >= 0 && swaps_head_and_seq(net_, net_.layers()[p])) continue;
        cone_.clear();
        all = main(l.inputs[j], true, 0) && !taken(replacement, dropped);
        // An operand read twice (q and k one tensor) has one cone, rewritten once.
        const TensorId t = l.inputs[j];
        if (all && std::none_of(cones.begin(), cones.end(), [&](const auto& c) { return c.first == t; }))
          cones.emplace_back(t, cone_);
      }
      if (!all || cones.empty()) continue;
      for (auto& [operand, cone] : cones) {
        cone_ = std::move(cone);
        rewrite(operand, replacement, dropped);
      }
      changed = true;
    }
    if (changed) splice_replacements(net_, replacement, dropped);
    return changed;
  }

 private:
  // True when `t` reaches head/sequence transposes through commuting layers read only inside the
  // cone (the root `t` may have other readers); records the cone's layers in cone_.
  bool main(TensorId t, bool root, int depth) {
    const int p = producer_[static_cast<size_t>(t)];
    if (p < 0 || depth > kMaxConeDepth) return false;
    const Layer& l = net_.layers()[static_cast<size_t>(p)];
    if (swaps_head_and_seq(net_, l)) return !root;
    const size_t rank = net_.tensor(t).dims.size();
    if (!commutes_with_swap(net_, l, rank)) return false;
    if (!root && (uses_[static_cast<size_t>(t)] != 1 || net_.is_output(t))) return false;
    const std::set<int> entry = cone_;  // what a failed attempt must not leave behind
    bool any = false;
    for (size_t k = 0; k < l.inputs.size(); ++k) {
      const TensorId u = l.inputs[k];
      if (l.op == "gather" && k == 1) continue;  // the index
      if (net_.tensor(u).dims == net_.tensor(t).dims) {
        const std::set<int> before = cone_;
        if (main(u, false, depth + 1)) {
          any = true;
          continue;
        }
        cone_ = before;
      }
      if (!swapped_side(net_.tensor(u).dims, rank)) {
        cone_ = entry;
        return false;
      }
    }
    if (!any) {
      cone_ = entry;
      return false;
    }
    cone_.insert(p);
    return true;
  }

  // A layer of cone_ is already rewritten for another attention.
  bool taken(const std::vector<std::vector<Layer>>& replacement, const std::vector<bool>& dropped) const {
    for (int c : cone_)
      if (!replacement[static_cast<size_t>(c)].empty() || dropped[static_cast<size_t>(c)]) return true;
    return false;
  }

  // The cone of root `t` computed in the swapped order, then one transpose writing `t`; all of it
  // where the root's producer was.
  void rewrite(TensorId t, std::vector<std::vector<Layer>>& replacement, std::vector<bool>& dropped) {
    const size_t rank = net_.tensor(t).dims.size();
    std::map<TensorId, TensorId> mapped;  // old tensor -> its value in the swapped order
    std::vector<Layer> added;
    auto add = [&](const std::string& op, const std::vector<TensorId>& in, const Attributes& attrs,
                   const std::string& base) {
      net_.add_layer(op, in, attrs, unique_name(names_, base));
      added.push_back(net_.layers().back());
      net_.mutable_layers().pop_back();
      return added.back().outputs[0];
    };
    for (int c : cone_) {  // in network order (a set of indices)
      const Layer l = net_.layers()[static_cast<size_t>(c)];
      std::vector<TensorId> in = l.inputs;
      for (size_t k = 0; k < in.size(); ++k) {
        const TensorId u = in[k];
        const int p = producer_[static_cast<size_t>(u)];
        if (mapped.count(u)) {
          in[k] = mapped[u];
        } else if (p >= 0 && swaps_head_and_seq(net_, net_.layers()[static_cast<size_t>(p)]) &&
                   net_.tensor(u).dims == net_.tensor(l.outputs[0]).dims) {
          in[k] = mapped[u] = net_.layers()[static_cast<size_t>(p)].inputs[0];
        } else if (!(l.op == "gather" && k == 1)) {
          const Dims side = *swapped_side(net_.tensor(u).dims, rank);
          Dims padded(rank - net_.tensor(u).dims.size(), 1);
          padded.insert(padded.end(), net_.tensor(u).dims.begin(), net_.tensor(u).dims.end());
          if (side != padded)
            in[k] = add("reshape", {u}, Attributes().set("shape", side), l.name + "/bshd_operand");
        }
      }
      added.push_back(net_.add_layer(l.op, in, l.attrs, unique_name(names_, l.name + "/bshd")));
      net_.mutable_layers().pop_back();
      added.back().name = l.name;  // the old layer goes: its name stays (per-layer precisions)
      mapped[l.outputs[0]] = added.back().outputs[0];
      dropped[static_cast<size_t>(c)] = true;
    }
    const int root = producer_[static_cast<size_t>(t)];
    Layer back =
        net_.add_layer("transpose", {mapped[t]}, Attributes().set("perm", head_seq_swap(rank)),
                       unique_name(names_, net_.layers()[static_cast<size_t>(root)].name + "/to_bhsd"));
    net_.mutable_layers().pop_back();
    back.outputs[0] = t;  // the root's readers read the same tensor
    added.push_back(std::move(back));
    dropped[static_cast<size_t>(root)] = false;
    replacement[static_cast<size_t>(root)] = std::move(added);
  }

  Network& net_;
  std::vector<int> producer_, uses_;
  std::set<std::string> names_;
  std::set<int> cone_;
};

bool fold_transposes(Network& net);

}  // namespace

bool fold_attention_transposes(Network& net) {
  bool sunk = Sinker(net).run();
  if (sunk) eliminate_dead_layers(net);  // the transposes the cones read, where nothing else does
  return fold_transposes(net) || sunk;
}

namespace {

bool fold_transposes(Network& net) {
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

}  // namespace
}  // namespace kiln
