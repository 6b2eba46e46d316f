// ONNX Attention (opset 23, with opset 24's nonpad_kv_seqlen and 25's sliding windows) and
// RotaryEmbedding (opset 23).
//
// The engine's attention layer takes the common cases (3-D or 4-D q/k/v, grouped heads, a bool
// or additive mask, top-left causal, a scale); everything else is built from layers as ONNX's
// reference computes it: past key/value concatenated (present outputs), bias = mask (+ causal
// and window masks offset by the past length, + a padding mask from nonpad_kv_seqlen), scores =
// (q * sqrt(scale)) (k * sqrt(scale))^T, softcap, + bias, softmax (rows whose bias is all -inf give
// 0), @ v; qk_matmul_output in any of its four modes.
#include <cmath>
#include <limits>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// [B, S, H*D] -> [B, H, S, D] (static dims).
TensorId split_heads(NodeContext& ctx, TensorId t, int64_t heads) {
  const Dims d = ctx.net().desc(t).dims;
  if (!is_static(d) || heads <= 0 || d[2] % heads != 0)
    ctx.fail("3-D inputs need static dims divisible by the heads");
  t = ctx.add1("reshape", {t},
               Attributes().set("shape", std::vector<int64_t>{d[0], d[1], heads, d[2] / heads}));
  return ctx.add1("transpose", {t}, Attributes().set("perm", std::vector<int64_t>{0, 2, 1, 3}));
}

TensorId merge_heads(NodeContext& ctx, TensorId t) {  // [B, H, S, D] -> [B, S, H*D]
  const Dims d = ctx.net().desc(t).dims;
  t = ctx.add1("transpose", {t}, Attributes().set("perm", std::vector<int64_t>{0, 2, 1, 3}));
  return ctx.add1("reshape", {t}, Attributes().set("shape", std::vector<int64_t>{d[0], d[2], d[1] * d[3]}));
}

// 0 where `allowed`, -inf elsewhere, in `dt`.
TensorId bias_of(NodeContext& ctx, TensorId allowed, DataType dt) {
  return ctx.add1("where", {allowed, ctx.scalar(dt, 0.0), ctx.scalar(dt, -kInf)});
}

TensorId index_along(NodeContext& ctx, int64_t n, int axis) {  // 0..n-1 shaped [.., n at axis, ..] of rank 4
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  Dims dims(4, 1);
  dims[axis] = n;
  return ctx.constant_i64(v, dims);
}

void import_attention(NodeContext& ctx) {
  const bool causal = ctx.attr_int("is_causal", 0) != 0;
  const int64_t q_heads = ctx.attr_int("q_num_heads", 0), kv_heads = ctx.attr_int("kv_num_heads", 0);
  const int64_t mode = ctx.attr_int("qk_matmul_output_mode", 0);
  const double softcap = ctx.attr_float("softcap", 0.0);
  const int64_t softmax_precision = ctx.attr_int("softmax_precision", 0);
  const int64_t left = ctx.attr_int("left_window_size", -1), right = ctx.attr_int("right_window_size", -1);
  const bool has_scale = ctx.has_attr("scale");
  const double scale_attr = has_scale ? ctx.attr_float("scale") : 0.0;
  TensorId q = ctx.input(0), k = ctx.input(1), v = ctx.input(2);
  const DataType dt = ctx.desc(0).dtype;
  const size_t qrank = ctx.desc(0).dims.size();
  const bool three_d = qrank == 3;
  if ((qrank != 3 && qrank != 4) || ctx.desc(1).dims.size() != qrank || ctx.desc(2).dims.size() != qrank) {
    ctx.fail("q, k and v must all be 3-D or all 4-D");
  }
  if (ctx.has_input(4) && (ctx.desc(4).dims.size() != 4 || ctx.desc(5).dims.size() != 4)) {
    ctx.fail("past_key and past_value must be 4-D");
  }
  if (ctx.has_input(3) && ctx.desc(3).dims.empty()) ctx.fail("attn_mask must have rank >= 1");
  if (three_d) {
    q = split_heads(ctx, q, q_heads);
    k = split_heads(ctx, k, kv_heads);
    v = split_heads(ctx, v, kv_heads);
  }
  if (ctx.has_input(4) != ctx.has_input(5)) ctx.fail("past_key and past_value come together");
  const bool past = ctx.has_input(4);
  const bool nonpad = ctx.has_input(6);
  if (nonpad && past) ctx.fail("nonpad_kv_seqlen cannot be combined with past key/value");
  int64_t past_len = 0;
  if (past) {
    past_len = ctx.desc(4).dims.at(2);
    if (past_len < 0) ctx.fail("past_key needs a static sequence length");
    k = ctx.add1("concat", {ctx.input(4), k}, Attributes().set("axis", int64_t{2}));
    v = ctx.add1("concat", {ctx.input(5), v}, Attributes().set("axis", int64_t{2}));
  }
  ctx.set_output(1, k);
  ctx.set_output(2, v);
  const Dims qd = ctx.net().desc(q).dims, kd = ctx.net().desc(k).dims;
  const int64_t sq = qd[2], skv = kd[2], head = qd[3];
  const bool windowed = left >= 0 || right >= 0;
  const bool simple = softcap <= 0 && !ctx.wants_output(3) && !windowed && !nonpad && !past &&
                      softmax_precision == 0 && (!causal || !ctx.has_input(3)) &&
                      (!ctx.has_input(3) || ctx.desc(3).dims.back() == skv);
  if (simple) {
    Attributes a;
    a.set("causal", int64_t{causal});
    if (has_scale) a.set("scale", scale_attr);
    std::vector<TensorId> in = {q, k, v};
    if (ctx.has_input(3))
      in.push_back(ctx.cast(ctx.input(3), ctx.desc(3).dtype == DataType::kBool ? DataType::kBool : dt));
    TensorId y = ctx.add1("attention", in, a);
    ctx.set_output(0, three_d ? merge_heads(ctx, y) : y);
    return;
  }
  if (sq < 0 || skv < 0 || head < 0) ctx.fail("needs static sequence lengths and head size");
  // bias [.., sq, skv]
  TensorId bias = -1;
  if (ctx.has_input(3)) {
    TensorId m = ctx.input(3);
    const TensorDesc md = ctx.desc(3);
    const int64_t pad = skv - md.dims.back();
    if (pad > 0) {
      m = ctx.add1("pad", {m},
                   Attributes()
                       .set("pads", std::vector<int64_t>{0, pad})
                       .set("mode", std::string("constant"))
                       .set("value", md.dtype == DataType::kBool ? 0.0 : -kInf));
    }
    bias = md.dtype == DataType::kBool ? bias_of(ctx, m, dt) : ctx.cast(m, dt);
  }
  // Query i (in the block) at absolute position i + offset; offset per batch with nonpad.
  TensorId i_idx = index_along(ctx, sq, 2), j_idx = index_along(ctx, skv, 3);
  TensorId pos = i_idx;  // [1, 1, sq, 1] (or [B, 1, sq, 1])
  if (nonpad) {
    TensorId n = ctx.add1("reshape", {ctx.cast(ctx.input(6), DataType::kInt64)},
                          Attributes().set("shape", std::vector<int64_t>{-1, 1, 1, 1}));
    pos = ctx.elementwise(
        "add", i_idx, ctx.elementwise("sub", n, ctx.scalar(DataType::kInt64, static_cast<double>(sq), 4)));
    // keys at or past a batch's valid length are padding
    TensorId valid = ctx.elementwise("lt", j_idx, n);
    TensorId b = bias_of(ctx, valid, dt);
    bias = bias >= 0 ? ctx.elementwise("add", bias, b) : b;
  } else if (past_len > 0) {
    pos = ctx.elementwise("add", i_idx, ctx.scalar(DataType::kInt64, static_cast<double>(past_len), 4));
  }
  if (causal) {
    TensorId b = bias_of(ctx, ctx.elementwise("le", j_idx, pos), dt);
    bias = bias >= 0 ? ctx.elementwise("add", bias, b) : b;
  }
  if (windowed) {
    TensorId diff = ctx.elementwise("sub", pos, j_idx);
    TensorId allowed = -1;
    if (left >= 0)
      allowed = ctx.elementwise("le", diff, ctx.scalar(DataType::kInt64, static_cast<double>(left), 4));
    if (right >= 0) {
      TensorId r = ctx.elementwise("le", ctx.unary("neg", diff),
                                   ctx.scalar(DataType::kInt64, static_cast<double>(right), 4));
      allowed = allowed >= 0 ? ctx.elementwise("and", allowed, r) : r;
    }
    TensorId b = bias_of(ctx, allowed, dt);
    bias = bias >= 0 ? ctx.elementwise("add", bias, b) : b;
  }
  // grouped heads: each kv head repeated for its group of query heads
  const int64_t hq = qd[1], hk = kd[1];
  TensorId kr = k, vr = v;
  if (hq != hk) {
    if (hk <= 0 || hq % hk != 0 || !is_static(kd))
      ctx.fail("query heads must be a static multiple of the kv heads");
    auto repeat = [&](TensorId t) {
      const Dims d = ctx.net().desc(t).dims;
      TensorId u = ctx.add1("unsqueeze", {t}, Attributes().set("axes", std::vector<int64_t>{2}));
      u = ctx.add1("expand", {u},
                   Attributes().set("shape", std::vector<int64_t>{d[0], d[1], hq / hk, d[2], d[3]}));
      return ctx.add1("reshape", {u}, Attributes().set("shape", std::vector<int64_t>{d[0], hq, d[2], d[3]}));
    };
    kr = repeat(k);
    vr = repeat(v);
  }
  const double scale = has_scale ? scale_attr : 1.0 / std::sqrt(static_cast<double>(head));
  TensorId root = ctx.scalar(dt, std::sqrt(scale), 4);
  TensorId scores = ctx.add1("matmul", {ctx.elementwise("mul", q, root), ctx.elementwise("mul", kr, root)},
                             Attributes().set("transpose_b", int64_t{1}));
  if (softcap > 0) {
    TensorId c = ctx.scalar(dt, softcap, 4);
    TensorId t = ctx.add1("activation", {ctx.elementwise("div", scores, c)},
                          Attributes().set("type", std::string("tanh")));
    scores = ctx.elementwise("mul", t, c);
  }
  TensorId with_bias = bias >= 0 ? ctx.elementwise("add", scores, bias) : scores;
  TensorId sm_in = with_bias;
  if (softmax_precision != 0) {
    const DataType sp = softmax_precision == 1    ? DataType::kFloat32
                        : softmax_precision == 10 ? DataType::kFloat16
                        : softmax_precision == 16 ? DataType::kBFloat16
                                                  : dt;
    sm_in = ctx.cast(sm_in, sp);
  }
  TensorId probs = ctx.add1("softmax", {sm_in}, Attributes().set("axis", int64_t{-1}));
  if (bias >= 0) {
    TensorId bmax = ctx.add1("reduce", {bias},
                             Attributes()
                                 .set("op", std::string("max"))
                                 .set("axes", std::vector<int64_t>{-1})
                                 .set("keepdim", int64_t{1}));
    TensorId masked = ctx.elementwise("eq", bmax, ctx.scalar(dt, -kInf, 4));
    probs = ctx.add1("where", {masked, ctx.scalar(ctx.net().desc(probs).dtype, 0.0, 4), probs});
  }
  probs = ctx.cast(probs, dt);
  if (ctx.wants_output(3)) {
    TensorId qk = mode == 3 ? probs : mode == 2 ? with_bias : scores;
    if (mode < 0 || mode > 3) ctx.fail("qk_matmul_output_mode must be 0 to 3");
    ctx.set_output(3, ctx.add1("identity", {qk}));
  }
  TensorId y = ctx.add1("matmul", {probs, vr});
  ctx.set_output(0, three_d ? merge_heads(ctx, y) : y);
}

// RotaryEmbedding (opset 23): x [B, S, H*D] (num_heads) or [B, H, S, D]; the first
// rotary_embedding_dim (R) entries of each head rotated by the cos / sin caches ([B, S, R/2], or
// [max positions, R/2] indexed by position_ids [B, S]): real = cos x1 - sin x2, imag = sin x1 +
// cos x2 with x1, x2 the halves of the rotated part, or its even / odd entries (interleaved).
// The head size must be static; batch and sequence may be dynamic.
void import_rotary_embedding(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const bool interleaved = ctx.attr_int("interleaved", 0) != 0;
  int64_t rdim = ctx.attr_int("rotary_embedding_dim", 0);
  const int64_t heads = ctx.attr_int("num_heads", 0);
  TensorId t = ctx.input(0);
  auto last = [&](TensorId v, int64_t start, int64_t end, int64_t step = 1) {
    return ctx.add1("slice", {v},
                    Attributes()
                        .set("axes", std::vector<int64_t>{-1})
                        .set("starts", std::vector<int64_t>{start})
                        .set("ends", std::vector<int64_t>{end})
                        .set("steps", std::vector<int64_t>{step}));
  };
  const std::vector<int64_t> swap12 = {0, 2, 1, 3};
  if (x.dims.size() == 4) {
    t = ctx.add1("transpose", {t}, Attributes().set("perm", swap12));  // [B, S, H, D]
  } else if (x.dims.size() == 3) {
    if (heads <= 0 || x.dims[2] == kDynamic || x.dims[2] % heads != 0)
      ctx.fail("a 3-D input needs num_heads dividing its static hidden size");
    // [B, S, H*D] -> [B, S, H, D]: B and S from the input's shape at run time
    TensorId bs = ctx.add1("slice", {ctx.add1("shape", {t})},
                           Attributes()
                               .set("axes", std::vector<int64_t>{0})
                               .set("starts", std::vector<int64_t>{0})
                               .set("ends", std::vector<int64_t>{2}));
    TensorId shape = ctx.add1("concat", {bs, ctx.constant_i64({heads, x.dims[2] / heads})},
                              Attributes().set("axis", int64_t{0}));
    t = ctx.add1("reshape", {t, shape});
  } else {
    ctx.fail("the input must be 3-D or 4-D");
  }
  const int64_t head = ctx.net().desc(t).dims[3];
  if (head == kDynamic) ctx.fail("the head size must be static");
  if (rdim == 0) rdim = head;
  if (rdim < 2 || rdim > head || rdim % 2 != 0)
    ctx.fail("rotary_embedding_dim must be even and <= the head size");
  TensorId cos = ctx.input(1), sin = ctx.input(2);
  if (ctx.has_input(3)) {
    TensorId pos = ctx.input(3);
    cos = ctx.add1("gather", {cos, pos}, Attributes().set("axis", int64_t{0}));
    sin = ctx.add1("gather", {sin, pos}, Attributes().set("axis", int64_t{0}));
  }
  if (ctx.net().desc(cos).dims.size() != 3 || ctx.net().desc(cos).dims[2] != rdim / 2)
    ctx.fail("the caches must give [batch, sequence, rotary_embedding_dim / 2]");
  const Attributes at2 = Attributes().set("axes", std::vector<int64_t>{2});
  cos = ctx.add1("unsqueeze", {cos}, at2);  // [B, S, 1, R/2]
  sin = ctx.add1("unsqueeze", {sin}, at2);
  TensorId rot = rdim == head ? t : last(t, 0, rdim);
  TensorId x1 = interleaved ? last(rot, 0, rdim, 2) : last(rot, 0, rdim / 2);
  TensorId x2 = interleaved ? last(rot, 1, rdim, 2) : last(rot, rdim / 2, rdim);
  auto mul = [&](TensorId a, TensorId b) { return ctx.elementwise("mul", a, b); };
  TensorId real = ctx.elementwise("sub", mul(cos, x1), mul(sin, x2));
  TensorId imag = ctx.elementwise("add", mul(sin, x1), mul(cos, x2));
  TensorId y;
  if (interleaved) {  // [.., R/2, 2] -> [.., R]
    const Attributes at4 = Attributes().set("axes", std::vector<int64_t>{4});
    y = ctx.add1("concat", {ctx.add1("unsqueeze", {real}, at4), ctx.add1("unsqueeze", {imag}, at4)},
                 Attributes().set("axis", int64_t{4}));
    y = ctx.add1("flatten", {y}, Attributes().set("start_dim", int64_t{3}).set("end_dim", int64_t{4}));
  } else {
    y = ctx.add1("concat", {real, imag}, Attributes().set("axis", int64_t{3}));
  }
  if (rdim < head) y = ctx.add1("concat", {y, last(t, rdim, head)}, Attributes().set("axis", int64_t{3}));
  if (x.dims.size() == 4) {
    y = ctx.add1("transpose", {y}, Attributes().set("perm", swap12));
  } else {
    y = ctx.add1("flatten", {y}, Attributes().set("start_dim", int64_t{2}).set("end_dim", int64_t{3}));
  }
  ctx.set_output(0, y);
}

const ImporterRegistration kRegistered{{"Attention", import_attention},
                                       {"RotaryEmbedding", import_rotary_embedding}};

}  // namespace
}  // namespace kiln::onnx
