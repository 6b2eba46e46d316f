// pack_attention_views: attention whose q, k and v are views of one fused QKV projection reads
// them from it as packed_attention, without the copies the views cost:
//
//   y = fully_connected(...)                              [..., 3 * H * D] (rows = tokens)
//   q, k, v = view chains of y (reshape, transpose, squeeze, unsqueeze, select)   [B, H, S, D]
//   o = attention(q, k, v)                                                        [B, H, S, D]
//     -> o' = packed_attention(reshape(y, [S, B, 3, H, D]); layout = "sbhd")     [S, B, H, D]
//        (or [B, S, 3, H, D] with layout "bshd" when y's rows are batch-first)
//
// torch's MultiheadAttention (torchvision's ViT, nn.TransformerEncoder) exports this: its packed
// in-projection is viewed as [S, B, 3, E], unsqueezed, transposed and squeezed to [3, S, B, E],
// selected per q/k/v, viewed as [S, B * H, D], transposed to [B * H, S, D] and viewed as
// [B, H, S, D]. Each view chain is traced as strides over y's row-major memory; the pass fires
// when q, k and v are exactly the q, k and v of each token of a [S, B, 3, H, D] (or
// [B, S, 3, H, D]) reading of y. Then packed_attention computes the same attention from the same
// elements. The output: when its only reader transposes it to [S, B, H, D] (torch's
// permute(2, 0, 1, 3) before the out-projection; or [B, S, H, D] for bshd), packed_attention writes
// that tensor; otherwise a transpose back to [B, H, S, D] follows it.
// With a batch-first input (x [B, S, E] transposed to [S, B, E] before the QKV projection and the
// out-projection's result transposed back), and projections that read and write nothing else,
// both transposes go too: the QKV GEMM reads x's rows in (b, s) order, the attention runs in
// layout bshd and the out-projection writes [B, S, N] rows (match_batch_first).
// Static shapes only (the strides depend on B and S); attention with a layout other than bhsd,
// grouped-query attention and differing q/k/v shapes are left alone. The view chains are left to
// eliminate_dead_layers. After pack_qkv_attention, which handles the split-based pattern.
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/passes/strided_view.h"
#include "ir/ops/attention.h"
#include "ir/ops/shape.h"

namespace kiln {
namespace {

// `v` [B, H, S, D] has these strides where its dims are larger than 1 (a size-1 dim's stride never
// matters).
bool has_strides(const StridedView& v, const Dims& dims, const std::vector<int64_t>& strides) {
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t stride = 0;
    if (dims[i] > 1 && (!dim_stride(v.dims[i], &stride) || stride != strides[i])) return false;
  }
  return true;
}

// The layouts (bshd, sbhd) in which q, k, v [B, H, S, D] are the three parts of each token of
// their root: none, one, or both (with B == 1 the two readings are the same memory).
std::vector<AttentionLayout> packed_layouts(const StridedView (&v)[3], const Dims& q, const Network& net) {
  const int64_t b = q[0], h = q[1], s = q[2], d = q[3];
  // Products of dims the fuzzer makes huge (with an empty dim elsewhere) must not wrap: any
  // overflow means these are no packed QKV views.
  int64_t hd = 0, row = 0, rows = 0, total = 0, batch_row = 0;
  if (__builtin_mul_overflow(h, d, &hd) || __builtin_mul_overflow(3, hd, &row) ||
      __builtin_mul_overflow(s, row, &rows) || __builtin_mul_overflow(b, rows, &total) ||
      __builtin_mul_overflow(b, row, &batch_row))
    return {};
  if (volume(net.tensor(v[0].root).dims) != total) return {};
  for (int j = 0; j < 3; ++j) {
    if (v[j].root != v[0].root || v[j].offset != j * hd) return {};
  }
  std::vector<AttentionLayout> found;
  for (AttentionLayout layout : {AttentionLayout::kBSHD, AttentionLayout::kSBHD}) {
    const std::vector<int64_t> want = layout == AttentionLayout::kBSHD
                                          ? std::vector<int64_t>{rows, d, row, 1}
                                          : std::vector<int64_t>{row, d, batch_row, 1};
    bool all = true;
    for (int j = 0; j < 3; ++j) all = all && has_strides(v[j], q, want);
    if (all) found.push_back(layout);
  }
  return found;
}

// Dims in the order `to` (a string of b, h, s, d) from the order `from`: a transpose's perm.
std::vector<int64_t> reorder(const std::string& from, const std::string& to) {
  std::vector<int64_t> perm;
  for (char c : to) perm.push_back(static_cast<int64_t>(from.find(c)));
  return perm;
}

// torch's MultiheadAttention with batch-first input transposes x [B, S, E] to [S, B, E] before
// the QKV projection and the out-projection's result back after it. Between the transposes every
// layer works on token rows: GEMMs are row-wise, and reshapes that keep the S * B tokens apart
// from the features only relabel rows. So the rows may as well be in (b, s) order: the first
// transpose becomes a reshape (x's bytes read as [S, B, E]), the attention reads the QKV rows as
// [B, S, 3, H, D] (bshd), the permute after it becomes a reshape of its [B, S, H, D] output, and
// the last transpose a reshape to [B, S, N]. Every one of them is then a view.
struct BatchFirst {
  int t_in = -1, permute = -1, t_out = -1;
};

class Readers {
 public:
  explicit Readers(const Network& net) : net_(net), readers_(net.tensors().size()) {
    for (size_t i = 0; i < net.layers().size(); ++i) {
      for (TensorId t : net.layers()[i].inputs) readers_[t].push_back(static_cast<int>(i));
    }
  }
  // The one layer reading `t` (not a network output), or -1.
  int only(TensorId t) const {
    if (t >= static_cast<TensorId>(readers_.size()) || net_.is_output(t) || readers_[t].size() != 1)
      return -1;
    return readers_[t][0];
  }
  // Everything derived from `t` goes through view layers into layer `sink` only.
  bool views_only_into(TensorId t, int sink) const {
    if (net_.is_output(t)) return false;
    for (int r : readers_[t]) {
      if (r == sink) continue;
      const Layer& l = net_.layers()[r];
      const bool view = l.op == "reshape" || l.op == "flatten" || l.op == "squeeze" || l.op == "unsqueeze" ||
                        l.op == "transpose" || l.op == "gather";
      if (!view || l.inputs[0] != t || !views_only_into(l.outputs[0], sink)) return false;
    }
    return true;
  }

 private:
  const Network& net_;
  std::vector<std::vector<int>> readers_;
};

// Some leading dims of `d` (not all of them) hold exactly `tokens` elements.
bool token_rows(const Dims& d, int64_t tokens) {
  int64_t n = 1;
  for (size_t k = 0; k + 1 < d.size(); ++k) {
    n *= d[k];
    if (n == tokens) return true;
  }
  return false;
}

// From `t`, through single-reader token-row reshapes and exactly one GEMM without a residual,
// to `until` (a tensor) or to a layer `stop` accepts (returned); -1 when the chain is another.
template <typename Stop>
int token_chain(const Network& net, const Readers& readers, TensorId t, int64_t tokens, TensorId until,
                Stop stop) {
  int gemms = 0;
  while (true) {
    if (t == until) return gemms == 1 ? 0 : -1;
    const int r = readers.only(t);
    if (r < 0) return -1;
    const Layer& l = net.layers()[r];
    if (l.inputs[0] != t) return -1;
    if (stop(l)) return gemms == 1 ? r : -1;
    const bool residual = l.attrs.has("residual") && l.attrs.get_int("residual", l.name) != 0;
    if (l.op == "fully_connected" && !residual && token_rows(net.tensor(t).dims, tokens)) {
      ++gemms;
    } else if (l.op != "reshape" || l.inputs.size() != 1 || !token_rows(net.tensor(t).dims, tokens) ||
               !token_rows(net.tensor(l.outputs[0]).dims, tokens)) {
      return -1;
    }
    t = l.outputs[0];
  }
}

bool swaps_first_two(const Network& net, const Layer& l) {
  return l.op == "transpose" && net.tensor(l.inputs[0]).dims.size() == 3 &&
         resolve_perm(l, 3) == std::vector<int64_t>{1, 0, 2};
}

bool match_batch_first(const Network& net, const std::vector<int>& producer, const Readers& readers,
                       TensorId root, int attention, int permute, int64_t tokens, BatchFirst* m) {
  if (!readers.views_only_into(root, attention)) return false;
  // Up from the root: the transpose of x that starts the token chain.
  TensorId t = root;
  int p = producer[t];
  while (p >= 0 && (net.layers()[p].op == "reshape" || net.layers()[p].op == "fully_connected")) {
    t = net.layers()[p].inputs[0];
    p = producer[t];
  }
  if (p < 0 || !swaps_first_two(net, net.layers()[p])) return false;
  m->t_in = p;
  if (token_chain(net, readers, t, tokens, root, [](const Layer&) { return false; }) != 0) return false;
  m->permute = permute;
  m->t_out = token_chain(net, readers, net.layers()[permute].outputs[0], tokens, -1,
                         [&](const Layer& l) { return swaps_first_two(net, l); });
  return m->t_out > 0;
}

}  // namespace

bool pack_attention_views(Network& net) {
  const ViewTracer tracer(net);
  const Readers readers(net);
  const std::vector<int> producer = net.producers();
  std::set<std::string> names;
  for (const auto& l : net.layers()) names.insert(l.name);

  std::map<int, std::vector<Layer>> before, after;  // layers to insert around layer i
  std::set<int> removed;
  for (size_t i = 0; i < net.layers().size(); ++i) {
    const Layer& att = net.layers()[i];
    if (att.op != "attention" || net.tensor(att.inputs[0]).dims.size() != 4) continue;
    // The attention's own order (fold_attention_transposes may have made it bshd) and q in bhsd.
    const std::string order = attention_attrs(att).layout == AttentionLayout::kBSHD ? "bshd" : "bhsd";
    const std::vector<int64_t> to_bhsd = reorder(order, "bhsd");
    const Dims& q_own = net.tensor(att.inputs[0]).dims;
    Dims q;
    for (int64_t p : to_bhsd) q.push_back(q_own[p]);
    if (!is_static(q) || volume(q) == 0) continue;
    StridedView v[3];
    bool ok = true;
    for (int j = 0; j < 3 && ok; ++j) {
      ok = net.tensor(att.inputs[j]).dims == q_own && tracer.trace(att.inputs[j], &v[j]);
      if (ok) {
        const auto dims = v[j].dims;
        for (int d = 0; d < 4; ++d) v[j].dims[d] = dims[to_bhsd[d]];
      }
    }
    if (!ok) continue;
    const std::vector<AttentionLayout> layouts = packed_layouts(v, q, net);
    if (layouts.empty()) continue;
    auto packed_order = [](AttentionLayout l) {
      return std::string(l == AttentionLayout::kSBHD ? "sbhd" : "bshd");
    };

    // The output, in packed_attention's order: the attention's own tensor when that is its order;
    // else taken over from a transpose to that order that is the attention's only reader; else
    // a transpose back follows.
    const TensorId out = att.outputs[0];
    int reader = -1;
    AttentionLayout layout = layouts[0];
    bool direct = false;
    for (AttentionLayout candidate : layouts) {
      if (!direct && packed_order(candidate) == order) {
        layout = candidate;
        direct = true;
      }
    }
    if (!direct) {
      reader = readers.only(out);
      const Layer* t = reader >= 0 ? &net.layers()[reader] : nullptr;
      bool taken = false;
      if (t && t->op == "transpose" && !removed.count(reader)) {
        const std::vector<int64_t> perm = resolve_perm(*t, 4);
        for (AttentionLayout candidate : layouts) {
          if (!taken && perm == reorder(order, packed_order(candidate))) {
            layout = candidate;
            taken = true;
          }
        }
      }
      if (!taken) reader = -1;
    }
    BatchFirst bf;
    const bool batch_first =
        layout == AttentionLayout::kSBHD && reader >= 0 &&
        match_batch_first(net, producer, readers, v[0].root, static_cast<int>(i), reader, q[0] * q[2], &bf);
    if (batch_first) layout = AttentionLayout::kBSHD;
    const bool seq_first = layout == AttentionLayout::kSBHD;
    const int64_t b = q[0], h = q[1], s = q[2], d = q[3];

    const Layer original = att;  // add_layer below may move the layer list
    const std::string base = original.name + "_qkv";
    const Dims packed_dims = seq_first ? Dims{s, b, 3, h, d} : Dims{b, s, 3, h, d};
    std::vector<Layer> added;
    added.push_back(net.add_layer("reshape", {v[0].root}, Attributes().set("shape", packed_dims),
                                  unique_name(names, base)));
    Attributes attrs;
    for (const char* key : {"causal", "scale", "fused"}) {
      auto it = original.attrs.values().find(key);
      if (it != original.attrs.values().end()) attrs.set(key, it->second);
    }
    attrs.set("layout", std::string(seq_first ? "sbhd" : "bshd"));
    std::vector<TensorId> inputs = {added.back().outputs[0]};
    if (original.inputs.size() == 4) inputs.push_back(original.inputs[3]);
    Layer packed =
        net.add_layer("packed_attention", inputs, attrs, unique_name(names, original.name + "_packed"));
    net.mutable_layers().resize(net.mutable_layers().size() - 2);  // placed below
    packed.name = original.name;
    if (batch_first) {
      // The two transposes and the permute become reshapes (views); packed writes [B, S, H, D].
      auto& layers = net.mutable_layers();
      for (int r : {bf.t_in, bf.permute, bf.t_out}) {
        Layer& l = layers[r];
        l.op = "reshape";
        l.attrs = Attributes().set("shape", net.tensor(l.outputs[0]).dims);
      }
      layers[bf.permute].inputs[0] = packed.outputs[0];
      // The last reshape reads the out-projection's output itself (not through the reshape before
      // it), so that fuse_gemm_epilogue sees GEMM -> reshape -> residual add.
      for (int p = producer[layers[bf.t_out].inputs[0]];
           p >= 0 && layers[p].op == "reshape" && layers[p].inputs.size() == 1 &&
           readers.only(layers[p].outputs[0]) >= 0;
           p = producer[layers[bf.t_out].inputs[0]]) {
        layers[bf.t_out].inputs[0] = layers[p].inputs[0];
      }
    } else if (direct) {
      packed.outputs[0] = out;
    } else if (reader >= 0) {
      const Layer& t = net.layers()[reader];
      packed.outputs[0] = t.outputs[0];
      add_fused_name(packed, t.name);
      removed.insert(reader);
    } else {
      Layer back;
      back.name = unique_name(names, original.name + "_to_" + order);
      back.op = "transpose";
      back.inputs = {packed.outputs[0]};
      back.outputs = {out};
      back.attrs.set("perm", reorder(packed_order(layout), order));
      after[static_cast<int>(i)].push_back(std::move(back));
    }
    net.mutable_layers()[i] = std::move(packed);
    before[static_cast<int>(i)] = std::move(added);
  }
  if (before.empty()) return false;

  std::vector<Layer> kept;
  auto& layers = net.mutable_layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto idx = static_cast<int>(i);
    if (before.count(idx)) {
      for (auto& l : before[idx]) kept.push_back(std::move(l));
    }
    if (!removed.count(idx)) kept.push_back(std::move(layers[i]));
    if (after.count(idx)) {
      for (auto& l : after[idx]) kept.push_back(std::move(l));
    }
  }
  layers = std::move(kept);
  net.compact();
  return true;
}

}  // namespace kiln
