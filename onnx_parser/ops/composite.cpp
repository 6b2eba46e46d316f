// ONNX operators Kiln builds from several layers: Trilu, OneHot, EyeLike, Hardmax, LpNormalization,
// MeanVarianceNormalization, BitShift, the losses (NegativeLogLikelihoodLoss,
// SoftmaxCrossEntropyLoss) and GridSample.
#include <cstring>
#include <numeric>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

TensorId bool_constant(NodeContext& ctx, const std::vector<uint8_t>& v, const Dims& dims) {
  return ctx.net().add_constant(ctx.name() + "/mask", DataType::kBool, dims, v.data(), v.size());
}

// 0..n-1 along `axis` of a rank-`rank` tensor (size 1 elsewhere), int64.
TensorId iota_along(NodeContext& ctx, int64_t n, int64_t axis, int64_t rank) {
  check_host_elements(n, "an index range", ctx);
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  Dims dims(static_cast<size_t>(rank), 1);
  dims[axis] = n;
  return ctx.constant_i64(v, dims);
}

void import_trilu(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const size_t r = x.dims.size();
  if (r < 2 || x.dims[r - 1] < 0 || x.dims[r - 2] < 0) ctx.fail("needs static last two dims");
  int64_t k = 0;
  if (ctx.has_input(1)) {
    auto v = ctx.int_values(1);
    if (!v || v->size() != 1) ctx.fail("k must be a known one-element tensor");
    k = v->at(0);
  }
  const bool upper = ctx.attr_int("upper", 1) != 0;
  const int64_t n = x.dims[r - 2], m = x.dims[r - 1];
  check_host_elements(volume({n, m}), "a triangle mask", ctx);
  std::vector<uint8_t> keep(static_cast<size_t>(n * m));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) keep[i * m + j] = upper ? j - i >= k : j - i <= k;
  }
  TensorId mask = bool_constant(ctx, keep, {n, m});
  ctx.set_output(0, ctx.add1("where", {mask, ctx.input(0), ctx.scalar(x.dtype, 0.0)}));
}

void import_eye_like(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  if (x.dims.size() != 2 || !is_static(x.dims)) ctx.fail("needs a static 2-D input");
  const int64_t k = ctx.attr_int("k", 0);
  DataType dt = x.dtype;
  if (ctx.has_attr("dtype")) {
    const int64_t t = ctx.attr_int("dtype");
    dt = t == 1 || t == 11 ? DataType::kFloat32
         : t == 10         ? DataType::kFloat16
         : t == 6          ? DataType::kInt32
         : t == 7          ? DataType::kInt64
         : t == 9          ? DataType::kBool
         : t == 16         ? DataType::kBFloat16
                           : DataType::kInt32;
  }
  const int64_t n = x.dims[0], m = x.dims[1];
  check_host_elements(volume({n, m}), "an identity matrix", ctx);
  std::vector<uint8_t> on(static_cast<size_t>(n * m));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) on[i * m + j] = j - i == k;
  }
  TensorId mask = bool_constant(ctx, on, {n, m});
  ctx.set_output(0, ctx.add1("where", {mask, ctx.scalar(dt, 1.0), ctx.scalar(dt, 0.0)}));
}

void import_one_hot(NodeContext& ctx) {
  const TensorDesc ind = ctx.desc(0);
  auto depth = ctx.float_values(1);
  if (!depth || depth->size() != 1) ctx.fail("depth must be a known one-element tensor");
  if (!(depth->at(0) >= 1 && depth->at(0) <= static_cast<double>(kMaxHostElements))) {
    ctx.fail("depth must be a number from 1 to " + std::to_string(kMaxHostElements));
  }
  const int64_t d = static_cast<int64_t>(depth->at(0));
  const int64_t rank = static_cast<int64_t>(ind.dims.size()) + 1;
  const int64_t axis = normalize_axis(ctx.attr_int("axis", -1), rank, ctx);
  TensorId idx = ctx.cast(ctx.input(0), DataType::kInt64);
  // Negative indices count from the end (ONNX), then compare with 0..depth-1 along `axis`.
  TensorId zero = ctx.scalar(DataType::kInt64, 0.0),
           dd = ctx.scalar(DataType::kInt64, static_cast<double>(d));
  idx = ctx.add1("where", {ctx.elementwise("lt", idx, zero), ctx.elementwise("add", idx, dd), idx});
  idx = ctx.add1("unsqueeze", {idx}, Attributes().set("axes", std::vector<int64_t>{axis}));
  TensorId hit = ctx.elementwise("eq", idx, iota_along(ctx, d, axis, rank));
  TensorId off =
      ctx.add1("gather", {ctx.input(2), ctx.constant_i64({0}, {})}, Attributes().set("axis", int64_t{0}));
  TensorId on =
      ctx.add1("gather", {ctx.input(2), ctx.constant_i64({1}, {})}, Attributes().set("axis", int64_t{0}));
  ctx.set_output(0, ctx.add1("where", {hit, on, off}));
}

void import_hardmax(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  const int64_t axis = normalize_axis(ctx.attr_int("axis", -1), rank, ctx);
  if (x.dims[axis] < 0) ctx.fail("needs a static dim on the axis");
  TensorId arg =
      ctx.add1("arg_reduce", {ctx.input(0)},
               Attributes().set("op", std::string("argmax")).set("axis", axis).set("keepdim", int64_t{1}));
  TensorId hit = ctx.elementwise("eq", arg, iota_along(ctx, x.dims[axis], axis, rank));
  ctx.set_output(0, ctx.add1("where", {hit, ctx.scalar(x.dtype, 1.0), ctx.scalar(x.dtype, 0.0)}));
}

void import_lp_normalization(NodeContext& ctx) {
  const int64_t p = ctx.attr_int("p", 2);
  const int64_t axis = ctx.attr_int("axis", -1);
  if (p != 1 && p != 2) ctx.fail("p must be 1 or 2");
  TensorId x = ctx.input(0);
  TensorId a = p == 1 ? ctx.add1("unary", {x}, Attributes().set("op", std::string("abs")))
                      : ctx.elementwise("mul", x, x);
  TensorId n = ctx.add1("reduce", {a},
                        Attributes()
                            .set("op", std::string("sum"))
                            .set("axes", std::vector<int64_t>{axis})
                            .set("keepdim", int64_t{1}));
  if (p == 2) n = ctx.add1("unary", {n}, Attributes().set("op", std::string("sqrt")));
  // A zero norm gives 0 (as the reference), not NaN.
  const DataType dt = ctx.desc(0).dtype;
  TensorId zero = ctx.elementwise("eq", n, ctx.scalar(dt, 0.0));
  TensorId safe = ctx.add1("where", {zero, ctx.scalar(dt, 1.0), n});
  ctx.set_output(0, ctx.elementwise("div", x, safe));
}

void import_mvn(NodeContext& ctx) {
  const std::vector<int64_t> axes = ctx.attr_ints("axes", std::vector<int64_t>{0, 2, 3});
  TensorId x = ctx.input(0);
  auto reduce = [&](const char* op, TensorId t) {
    return ctx.add1("reduce", {t},
                    Attributes().set("op", std::string(op)).set("axes", axes).set("keepdim", int64_t{1}));
  };
  TensorId mean = reduce("mean", x);
  TensorId var = ctx.add1("reduce", {x},
                          Attributes()
                              .set("op", std::string("var"))
                              .set("axes", axes)
                              .set("keepdim", int64_t{1})
                              .set("correction", int64_t{0}));
  const DataType dt = ctx.desc(0).dtype;
  TensorId sd = ctx.add1("unary", {ctx.elementwise("add", var, ctx.scalar(dt, 1e-9))},
                         Attributes().set("op", std::string("sqrt")));
  ctx.set_output(0, ctx.elementwise("div", ctx.elementwise("sub", x, mean), sd));
}

void import_bit_shift(NodeContext& ctx) {
  const std::string dir = ctx.attr_string("direction");
  const DataType dt = ctx.desc(0).dtype;
  if (!is_integral(dt) || dt == DataType::kBool) ctx.fail("BitShift takes unsigned integers");
  if (dir != "LEFT" && dir != "RIGHT") ctx.fail("direction must be LEFT or RIGHT");
  // A shift outside [0, bits) shifts every bit out: 0, or -1 for a negative x shifted right.
  const int32_t held = ctx.held_type(ctx.input(0));
  const int64_t bits = held == 2                ? 8
                       : held == 4 || held == 5 ? 16
                       : held == 12             ? 32
                       : held == 13             ? 64
                                                : 8 * static_cast<int64_t>(dtype_size(dt));
  const TensorId x = ctx.input(0), s = ctx.cast(ctx.input(1), dt), zero = ctx.scalar(dt, 0.0);
  TensorId valid = ctx.elementwise("and", ctx.elementwise("ge", s, zero),
                                   ctx.elementwise("lt", s, ctx.scalar(dt, static_cast<double>(bits))));
  TensorId factor = ctx.elementwise("pow", ctx.scalar(dt, 2.0), ctx.add1("where", {valid, s, zero}));
  TensorId y;
  if (dir == "LEFT") {
    y = ctx.add1("where", {valid, ctx.elementwise("mul", x, factor), zero});
  } else {
    TensorId out = ctx.add1("where", {ctx.elementwise("lt", x, zero), ctx.scalar(dt, -1.0), zero});
    y = ctx.add1("where", {valid, ctx.elementwise("floor_div", x, factor), out});
  }
  if (held) ctx.set_held_type(y, held);
  ctx.set_output(0, y);
}

// The per-element loss of NegativeLogLikelihoodLoss over log-probabilities `logp` [N, C, d...],
// then its reduction; shared with SoftmaxCrossEntropyLoss.
TensorId nll(NodeContext& ctx, TensorId logp, TensorId target, int weight_input) {
  const std::string reduction = ctx.attr_string("reduction", std::string("mean"));
  const bool has_ignore = ctx.has_attr("ignore_index");
  const int64_t ignore = has_ignore ? ctx.attr_int("ignore_index") : 0;
  const DataType dt = ctx.net().desc(logp).dtype;
  target = ctx.cast(target, DataType::kInt64);
  TensorId valid = -1;
  if (has_ignore) {
    valid = ctx.elementwise("ne", target, ctx.scalar(DataType::kInt64, static_cast<double>(ignore)));
    target = ctx.add1("where", {valid, target, ctx.scalar(DataType::kInt64, 0.0)});  // a safe index
  }
  TensorId t1 = ctx.add1("unsqueeze", {target}, Attributes().set("axes", std::vector<int64_t>{1}));
  TensorId picked =
      ctx.add1("gather_elements", {logp, t1}, Attributes().set("axis", int64_t{1}).set("wrap", int64_t{0}));
  picked = ctx.add1("squeeze", {picked}, Attributes().set("axes", std::vector<int64_t>{1}));
  TensorId w = -1;
  if (ctx.has_input(weight_input)) {
    w = ctx.add1("gather", {ctx.input(weight_input), target},
                 Attributes().set("axis", int64_t{0}).set("wrap", int64_t{0}));
  }
  if (valid >= 0) {
    TensorId v = ctx.add1("where", {valid, ctx.scalar(dt, 1.0), ctx.scalar(dt, 0.0)});
    w = w >= 0 ? ctx.elementwise("mul", w, v) : v;
  }
  TensorId loss = ctx.add1("unary", {picked}, Attributes().set("op", std::string("neg")));
  if (w >= 0) loss = ctx.elementwise("mul", loss, w);
  auto sum_all = [&](TensorId t) {
    return ctx.add1("reduce", {t}, Attributes().set("op", std::string("sum")).set("keepdim", int64_t{0}));
  };
  if (reduction == "none") return loss;
  if (reduction == "sum") return sum_all(loss);
  if (reduction != "mean") ctx.fail("reduction must be none, sum or mean");
  if (w < 0)
    return ctx.add1("reduce", {loss}, Attributes().set("op", std::string("mean")).set("keepdim", int64_t{0}));
  return ctx.elementwise("div", sum_all(loss), sum_all(w));
}

void import_nll_loss(NodeContext& ctx) { ctx.set_output(0, nll(ctx, ctx.input(0), ctx.input(1), 2)); }

void import_softmax_cross_entropy(NodeContext& ctx) {
  TensorId logp =
      ctx.add1("softmax", {ctx.input(0)}, Attributes().set("axis", int64_t{1}).set("log", int64_t{1}));
  ctx.set_output(0, nll(ctx, logp, ctx.input(1), 2));
  if (ctx.wants_output(1)) ctx.set_output(1, logp);
}

void import_grid_sample(NodeContext& ctx) {
  std::string mode = ctx.attr_string("mode", std::string(ctx.opset() >= 20 ? "linear" : "bilinear"));
  if (mode == "linear") mode = "bilinear";
  if (mode == "cubic") mode = "bicubic";
  const std::string padding = ctx.attr_string("padding_mode", std::string("zeros"));
  if (ctx.desc(0).dims.size() != 4) ctx.fail("only 4-D inputs (2-D images) are supported");
  ctx.set_output(0, ctx.add1("grid_sample", {ctx.input(0), ctx.input(1)},
                             Attributes()
                                 .set("mode", mode)
                                 .set("padding_mode", padding)
                                 .set("align_corners", ctx.attr_int("align_corners", 0))));
}

const ImporterRegistration kRegistered{
    {"Trilu", import_trilu},
    {"EyeLike", import_eye_like},
    {"OneHot", import_one_hot},
    {"Hardmax", import_hardmax, 13},
    {"LpNormalization", import_lp_normalization},
    {"MeanVarianceNormalization", import_mvn},
    {"BitShift", import_bit_shift},
    {"NegativeLogLikelihoodLoss", import_nll_loss},
    {"SoftmaxCrossEntropyLoss", import_softmax_cross_entropy},
    {"GridSample", import_grid_sample},
};

}  // namespace
}  // namespace kiln::onnx
