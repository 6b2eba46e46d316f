// attention: scaled dot-product attention with the semantics of torch's
// scaled_dot_product_attention (inference, no dropout):
//   out = softmax(q @ k^T * scale + mask) @ v
// Inputs q [B..., Hq, Sq, D], k [B..., Hkv, Sk, D], v [B..., Hkv, Sk, Dv] of one floating dtype and
// one rank (>= 3; at rank 3 dim 0 plays the head role, as in torch), and an optional mask
// broadcastable to [B..., Hq, Sq, Sk]: bool (true = attend) or q's dtype (added to the scores).
// Grouped-query attention: Hq a multiple of Hkv, query head h reads kv head h / (Hq / Hkv).
// Attributes: `causal` (0/1, query i sees keys j <= i, aligned top-left like torch's is_causal),
// `scale` (> 0; absent or <= 0 means 1/sqrt(D)), `layout` ("bhsd", the default, as above; or
// "bshd": rank >= 4 with q [B..., Sq, Hq, D], k [B..., Sk, Hkv, D], v [B..., Sk, Hkv, Dv] and output
// [B..., Sq, Hq, Dv], the projections' layout before torch's transpose(1, 2); the mask keeps its
// [B..., Hq, Sq, Sk] meaning). causal together with a mask is refused, as torch does. A row whose keys
// are all masked (or Sk == 0) gives zeros, as torch's math backend does.
// Output [B..., Hq, Sq, Dv] in q's dtype (bhsd).
//
// packed_attention: the same attention with q, k and v read from one tensor qkv [B, S, 3, H, D]
// (per token q, k, v one after another, as a fused QKV projection writes them), an optional mask
// as attention's and the attributes `causal` and `scale`. Output [B, S, H, D] in qkv's dtype.
// With `layout` "sbhd" the tokens are sequence-first: qkv [S, B, 3, H, D], output [S, B, H, D]
// (torch's MultiheadAttention projects and attends in this order). With `output_inv_scale` (an e4m3
// quantize folded in by fold_quantize_copies: float16/bfloat16 qkv, head size 32, 64 or 128, no
// mask) the output is float8_e4m3fn: e4m3(o * output_inv_scale) of the value o rounded to qkv's dtype.
#include "ir/ops/attention.h"

#include <cmath>
#include <string>
#include <utility>

#include "ir/error.h"
#include "ir/op_schema.h"

namespace kiln {

AttentionAttrs attention_attrs(const Layer& layer) {
  const std::string who = describe(layer);
  AttentionAttrs a;
  a.causal = layer.attrs.has("causal") && layer.attrs.get_int("causal", who) != 0;
  a.scale = layer.attrs.has("scale") ? layer.attrs.get_float("scale", who) : 0.0;
  if (layer.attrs.has("layout")) {
    const std::string layout = layer.attrs.get_string("layout", who);
    if (layout == "bshd") a.layout = AttentionLayout::kBSHD;
    if (layout == "sbhd") a.layout = AttentionLayout::kSBHD;
  }
  if (layer.attrs.has("output_inv_scale"))
    a.out_inv_scale = static_cast<float>(layer.attrs.get_float("output_inv_scale", who));
  return a;
}

double attention_scale(const AttentionAttrs& attrs, int64_t d) {
  if (attrs.scale > 0) return attrs.scale;
  return d > 0 ? 1.0 / std::sqrt(static_cast<double>(d)) : 1.0;
}

AttentionGeometry attention_geometry(AttentionLayout layout, const Dims& q, const Dims& k, const Dims& v) {
  const size_t rank = q.size();
  AttentionGeometry g;
  // Positions of the head and sequence dims: bhsd [..., H, S, D], bshd [B..., S, H, D].
  const size_t h_dim = layout == AttentionLayout::kBSHD ? rank - 2 : rank - 3;
  const size_t s_dim = layout == AttentionLayout::kBSHD ? rank - 3 : rank - 2;
  g.batch = volume(Dims(q.begin(), q.end() - 3));
  g.hq = q[h_dim];
  g.sq = q[s_dim];
  g.d = q[rank - 1];
  g.hkv = k[h_dim];
  g.sk = k[s_dim];
  g.dv = v[rank - 1];
  auto operand = [&](const Dims& x) {
    AttentionOperand o;
    o.seq = layout == AttentionLayout::kBSHD ? x[h_dim] * x[rank - 1] : x[rank - 1];
    o.head = layout == AttentionLayout::kBSHD ? x[rank - 1] : x[s_dim] * x[rank - 1];
    o.batch = x[h_dim] * x[s_dim] * x[rank - 1];
    return o;
  };
  g.q = operand(q);
  g.k = operand(k);
  g.v = operand(v);
  Dims out = q;
  out[rank - 1] = g.dv;
  g.out = operand(out);
  g.scores = Dims(q.begin(), q.end() - 3);
  for (int64_t d : {g.hq, g.sq, g.sk}) g.scores.push_back(d);
  return g;
}

AttentionGeometry packed_attention_geometry(AttentionLayout layout, const Dims& qkv) {
  const bool seq_first = layout == AttentionLayout::kSBHD;
  AttentionGeometry g;
  g.batch = seq_first ? qkv[1] : qkv[0];
  g.sq = g.sk = seq_first ? qkv[0] : qkv[1];
  g.hq = g.hkv = qkv[3];
  g.d = g.dv = qkv[4];
  const int64_t token = 3 * g.hq * g.d;  // one token's q, k and v
  for (int t = 0; t < 3; ++t) {
    AttentionOperand& o = t == 0 ? g.q : t == 1 ? g.k : g.v;
    o.offset = t * g.hq * g.d;
    o.batch = seq_first ? token : g.sq * token;
    o.head = g.d;
    o.seq = seq_first ? g.batch * token : token;
  }
  const int64_t row = g.hq * g.d;  // one token's output
  g.out =
      seq_first ? AttentionOperand{0, row, g.d, g.batch * row} : AttentionOperand{0, g.sq * row, g.d, row};
  g.scores = {g.batch, g.hq, g.sq, g.sk};
  return g;
}

namespace {

bool dims_match(int64_t a, int64_t b) { return a == b || a == kDynamic || b == kDynamic; }
int64_t known_of(int64_t a, int64_t b) { return a != kDynamic ? a : b; }

// The causal / scale attributes, shared by attention and packed_attention.
void check_common_attrs(const Layer& layer, const std::string& who) {
  if (layer.attrs.has("causal")) {
    int64_t c = layer.attrs.get_int("causal", who);
    KILN_CHECK(c == 0 || c == 1, who << ": causal must be 0 or 1, got " << c);
  }
  if (layer.attrs.has("scale")) layer.attrs.get_float("scale", who);  // type check
}

// Validates q, k, v (and the mask) given in bhsd order and returns the output dims in bhsd order.
Dims check_attention(const std::string& who, const AttentionAttrs& attrs, const TensorDesc& q,
                     const TensorDesc& k, const TensorDesc& v, const TensorDesc* mask) {
  KILN_CHECK(is_floating(q.dtype), who << ": q must be floating point, got " << dtype_name(q.dtype));
  KILN_CHECK(k.dtype == q.dtype && v.dtype == q.dtype,
             who << ": q, k and v must share one dtype, got " << dtype_name(q.dtype) << ", "
                 << dtype_name(k.dtype) << ", " << dtype_name(v.dtype) << "; insert a cast");
  const size_t rank = q.dims.size();
  KILN_CHECK(rank >= 3 && k.dims.size() == rank && v.dims.size() == rank,
             who << ": q, k and v need one rank >= 3 ([B..., H, S, D]), got " << to_string(q.dims) << ", "
                 << to_string(k.dims) << ", " << to_string(v.dims));

  Dims out(q.dims.begin(), q.dims.end());
  for (size_t i = 0; i + 3 < rank; ++i) {
    KILN_CHECK(dims_match(q.dims[i], k.dims[i]) && dims_match(q.dims[i], v.dims[i]),
               who << ": batch dims of q, k and v must be equal, got " << to_string(q.dims) << ", "
                   << to_string(k.dims) << ", " << to_string(v.dims));
    out[i] = known_of(known_of(q.dims[i], k.dims[i]), v.dims[i]);
  }
  const int64_t hq = q.dims[rank - 3], hkv = k.dims[rank - 3];
  KILN_CHECK(dims_match(hkv, v.dims[rank - 3]), who << ": k and v must have the same number of heads, got "
                                                    << to_string(k.dims) << " and " << to_string(v.dims));
  KILN_CHECK(hq == kDynamic || hkv == kDynamic || (hkv > 0 && hq % hkv == 0) || (hq == 0 && hkv == 0),
             who << ": query heads (" << hq << ") must be a multiple of key/value heads (" << hkv
                 << ") for grouped-query attention; q is " << to_string(q.dims) << ", k is "
                 << to_string(k.dims));
  KILN_CHECK(dims_match(q.dims[rank - 1], k.dims[rank - 1]),
             who << ": q and k must have the same head size (last dim), got " << to_string(q.dims) << " and "
                 << to_string(k.dims));
  KILN_CHECK(dims_match(k.dims[rank - 2], v.dims[rank - 2]),
             who << ": k and v must have the same sequence length (dim -2), got " << to_string(k.dims)
                 << " and " << to_string(v.dims));
  out[rank - 1] = v.dims[rank - 1];

  if (mask) {
    KILN_CHECK(!attrs.causal, who << ": causal=1 together with an explicit mask is not supported (torch "
                                     "refuses it too); fold the causal pattern into the mask");
    KILN_CHECK(mask->dtype == DataType::kBool || mask->dtype == q.dtype,
               who << ": mask must be bool (true = attend) or q's dtype " << dtype_name(q.dtype)
                   << " (added to the scores), got " << dtype_name(mask->dtype));
    Dims scores(q.dims.begin(), q.dims.end() - 1);
    scores.push_back(k.dims[rank - 2]);
    for (size_t i = 0; i + 3 < rank; ++i) scores[i] = out[i];
    bool ok = mask->dims.size() <= scores.size();
    for (size_t i = 0; ok && i < mask->dims.size(); ++i) {
      int64_t m = mask->dims[mask->dims.size() - 1 - i], s = scores[scores.size() - 1 - i];
      ok = m == 1 || dims_match(m, s);
    }
    KILN_CHECK(ok, who << ": mask " << to_string(mask->dims) << " does not broadcast to the scores' shape "
                       << to_string(scores) << " ([B..., Hq, Sq, Sk])");
  }
  return out;
}

// [B..., S, H, D] <-> [B..., H, S, D] (rank >= 4).
TensorDesc swap_head_and_seq(TensorDesc t) {
  const size_t r = t.dims.size();
  std::swap(t.dims[r - 3], t.dims[r - 2]);
  return t;
}

std::vector<TensorDesc> infer_attention(const Layer& layer, const std::vector<TensorDesc>& in) {
  std::string who = describe(layer);
  check_common_attrs(layer, who);
  if (layer.attrs.has("layout")) {
    const std::string layout = layer.attrs.get_string("layout", who);
    KILN_CHECK(layout == "bhsd" || layout == "bshd",
               who << ": layout must be \"bhsd\" ([B..., H, S, D]) or \"bshd\" ([B..., S, H, D]), got \""
                   << layout << "\"");
  }
  const AttentionAttrs attrs = attention_attrs(layer);
  const TensorDesc* mask = in.size() == 4 ? &in[3] : nullptr;
  if (attrs.layout == AttentionLayout::kBHSD) {
    return {{in[0].dtype, check_attention(who, attrs, in[0], in[1], in[2], mask)}};
  }
  const size_t rank = in[0].dims.size();
  KILN_CHECK(rank >= 4 && in[1].dims.size() == rank && in[2].dims.size() == rank,
             who << ": layout \"bshd\" needs q, k and v of one rank >= 4 ([B..., S, H, D]), got "
                 << to_string(in[0].dims) << ", " << to_string(in[1].dims) << ", " << to_string(in[2].dims));
  who += " (layout bshd; shapes shown as [B..., H, S, D])";
  Dims out = check_attention(who, attrs, swap_head_and_seq(in[0]), swap_head_and_seq(in[1]),
                             swap_head_and_seq(in[2]), mask);
  std::swap(out[rank - 3], out[rank - 2]);
  return {{in[0].dtype, out}};
}

std::vector<TensorDesc> infer_packed_attention(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  check_common_attrs(layer, who);
  bool seq_first = false;
  if (layer.attrs.has("layout")) {
    const std::string layout = layer.attrs.get_string("layout", who);
    KILN_CHECK(layout == "bshd" || layout == "sbhd",
               who << ": packed_attention's layout must be \"bshd\" (qkv [B, S, 3, H, D]) or \"sbhd\" (qkv "
                      "[S, B, 3, H, D]), got \""
                   << layout << "\"");
    seq_first = layout == "sbhd";
  }
  const TensorDesc& qkv = in[0];
  KILN_CHECK(qkv.dims.size() == 5 && dims_match(qkv.dims[2], 3),
             who << ": qkv must be " << (seq_first ? "[S, B, 3, H, D]" : "[B, S, 3, H, D]")
                 << " (q, k and v of each token one after another), got " << to_string(qkv.dims));
  const Dims& x = qkv.dims;
  const int64_t b = seq_first ? x[1] : x[0], s = seq_first ? x[0] : x[1];
  const TensorDesc per_head{qkv.dtype, {b, x[3], s, x[4]}};  // q, k and v in bhsd order
  const AttentionAttrs attrs = attention_attrs(layer);
  const Dims out =
      check_attention(who, attrs, per_head, per_head, per_head, in.size() == 2 ? &in[1] : nullptr);
  DataType out_dtype = qkv.dtype;
  if (layer.attrs.has("output_inv_scale")) {
    KILN_CHECK(attrs.out_inv_scale > 0.f && std::isfinite(attrs.out_inv_scale),
               who << ": output_inv_scale must be a positive finite number, got " << attrs.out_inv_scale);
    KILN_CHECK(
        (qkv.dtype == DataType::kFloat16 || qkv.dtype == DataType::kBFloat16) && in.size() == 1 &&
            (x[4] == 32 || x[4] == 64 || x[4] == 128),
        who << ": a float8 output (output_inv_scale) needs float16 or bfloat16 qkv with head size 32, 64 "
               "or 128 and no mask, got "
            << dtype_name(qkv.dtype) << " " << to_string(qkv.dims) << (in.size() == 2 ? " with a mask" : ""));
    out_dtype = DataType::kFloat8E4M3;
  }
  return {
      {out_dtype, seq_first ? Dims{out[2], out[0], out[1], out[3]} : Dims{out[0], out[2], out[1], out[3]}}};
}

}  // namespace

namespace {

const std::vector<AttrSpec> kAttentionAttributes = {
    {"causal", AttrType::kInt, AttrValue{int64_t{0}},
     "0/1: query i sees keys j <= i (top-left aligned); not with a mask"},
    {"scale", AttrType::kFloat, std::nullopt,
     "the factor on q @ k^T; absent or <= 0: 1/sqrt(D) (attention_scale)"},
    {"layout", AttrType::kString, AttrValue{std::string("bhsd")},
     "bhsd [B..., H, S, D] or bshd ([B..., S, H, D], rank >= 4; fold_attention_transposes sets it)"},
    {"fused", AttrType::kString, std::nullopt,
     "set by the builder (fold_attention_transposes): the original layer names, informational; absent: the "
     "layer's own name"},
};

const std::vector<AttrSpec> kPackedAttentionAttributes = {
    {"causal", AttrType::kInt, AttrValue{int64_t{0}}, "0/1, as attention's"},
    {"scale", AttrType::kFloat, std::nullopt, "as attention's; absent or <= 0: 1/sqrt(D) (attention_scale)"},
    {"layout", AttrType::kString, AttrValue{std::string("bshd")},
     "bshd (qkv [B, S, 3, H, D]) or sbhd (qkv [S, B, 3, H, D], sequence-first)"},
    {"fused", AttrType::kString, std::nullopt,
     "set by the builder (pack_qkv_attention, pack_attention_views): the original layer names, "
     "informational; absent: the layer's own name"},
    {"output_inv_scale", AttrType::kFloat, std::nullopt,
     "set by the builder (fold_quantize_copies): the output is float8_e4m3fn, e4m3(o * output_inv_scale) of "
     "the value o rounded to qkv's dtype (an e4m3 quantize folded in)"},
};

// q @ k^T and p @ v: 2 * Sq * Sk * (D + Dv) per batch and head; half of it when causal (the
// masked half is skipped).
double attention_flops(const Layer& l, const std::vector<TensorDesc>& in, const std::vector<TensorDesc>&) {
  const AttentionAttrs attrs = attention_attrs(l);
  const AttentionGeometry g = l.op == "packed_attention"
                                  ? packed_attention_geometry(attrs.layout, in[0].dims)
                                  : attention_geometry(attrs.layout, in[0].dims, in[1].dims, in[2].dims);
  const double full = 2.0 * static_cast<double>(g.batch) * static_cast<double>(g.hq) *
                      static_cast<double>(g.sq) * static_cast<double>(g.sk) * static_cast<double>(g.d + g.dv);
  return attrs.causal ? full / 2 : full;
}

const SchemaRegistration kRegistered{
    {"attention", 3, 4, infer_attention, kAttentionAttributes, kNoTraits, attention_flops},
    {"packed_attention", 1, 2, infer_packed_attention, kPackedAttentionAttributes, kNoTraits,
     attention_flops},
};

}  // namespace

}  // namespace kiln
