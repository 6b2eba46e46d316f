// ONNX's integer and quantized linear operators: MatMulInteger, ConvInteger, QLinearMatMul and
// QLinearConv, computed exactly in integers as ONNX's reference does: (a - a_zero_point) and
// (b - b_zero_point) as small integers, their products summed in float32 (exact: each partial sum
// stays below 2^24) and the sums as int32; the QLinear forms then requantize,
// rint(sum * a_scale * b_scale / y_scale) + y_zero_point clamped to the output type. MatMul sums
// over K in chunks of 256 (each exact in float32) added in int32; a convolution must sum at most
// kMaxExactTerms products per output. uint8 is held in int32 (parser.cpp).
#include <algorithm>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

constexpr int64_t kChunk = 256;          // 256 * 255 * 255 < 2^24
constexpr int64_t kMaxExactTerms = 258;  // products per convolution output

// x - zero_point (per tensor, or per row / column `axis` of a 1-D zero point) as float32.
TensorId centered(NodeContext& ctx, int value, int zero_point, int64_t axis) {
  TensorId x = ctx.cast(ctx.input(value), DataType::kInt32);
  if (ctx.has_input(zero_point)) {
    TensorId zp = ctx.cast(ctx.input(zero_point), DataType::kInt32);
    const Dims zd = ctx.net().desc(zp).dims;
    if (zd.size() == 1 && zd[0] != 1 && axis >= 0) {  // per channel along `axis` of x
      const Dims xd = ctx.net().desc(x).dims;
      const int64_t rank = static_cast<int64_t>(xd.size());
      if (axis >= rank || xd[static_cast<size_t>(axis)] != zd[0]) {
        ctx.fail("a per-channel zero point needs one value per entry of axis " + std::to_string(axis));
      }
      Dims shape(static_cast<size_t>(rank - axis), 1);
      shape[0] = zd[0];
      zp = ctx.add1("reshape", {zp}, Attributes().set("shape", shape));
    }
    x = ctx.elementwise("sub", x, zp);
  }
  return ctx.cast(x, DataType::kFloat32);
}

// a @ b exactly, as int32 (chunks of K summed in int32).
TensorId integer_matmul(NodeContext& ctx, TensorId a, TensorId b) {
  const Dims ad = ctx.net().desc(a).dims, bd = ctx.net().desc(b).dims;
  if (ad.empty() || bd.empty()) ctx.fail("inputs must be at least 1-D");
  const int64_t k = ad.back();
  if (k == kDynamic) ctx.fail("the summed dim K must be static");
  if (k <= kChunk) return ctx.cast(ctx.add1("matmul", {a, b}), DataType::kInt32);
  const int64_t b_axis = bd.size() == 1 ? 0 : -2;
  TensorId sum = -1;
  for (int64_t start = 0; start < k; start += kChunk) {
    const int64_t end = std::min(k, start + kChunk);
    auto part = [&](TensorId t, int64_t axis) {
      return ctx.add1("slice", {t},
                      Attributes()
                          .set("axes", std::vector<int64_t>{axis})
                          .set("starts", std::vector<int64_t>{start})
                          .set("ends", std::vector<int64_t>{end}));
    };
    TensorId c = ctx.cast(ctx.add1("matmul", {part(a, -1), part(b, b_axis)}), DataType::kInt32);
    sum = sum < 0 ? c : ctx.elementwise("add", sum, c);
  }
  return sum;
}

// The output type of a QLinear op: the y zero point's (uint8 held in int32, or int8).
bool is_uint8(NodeContext& ctx, int zero_point) {
  if (!ctx.has_input(zero_point)) return true;
  return ctx.held_type(ctx.input(zero_point)) == 2 || ctx.desc(zero_point).dtype != DataType::kInt8;
}

// rint(acc * a_scale * b_scale / y_scale) + y_zero_point, clamped to the output type.
TensorId requantize(NodeContext& ctx, TensorId acc, int a_scale, int b_scale, int y_scale, int y_zp,
                    int64_t channel_axis) {
  // the factor in the scales' dtype (ONNX's reference multiplies float16 scales in float16)
  TensorId bs = ctx.input(b_scale);
  const Dims bsd = ctx.net().desc(bs).dims;
  if (bsd.size() == 1 && bsd[0] != 1 && channel_axis >= 0) {  // per output channel
    const Dims ad = ctx.net().desc(acc).dims;
    const int64_t rank = static_cast<int64_t>(ad.size());
    if (channel_axis >= rank || ad[static_cast<size_t>(channel_axis)] != bsd[0]) {
      ctx.fail("a per-channel weight scale needs one value per output channel");
    }
    Dims shape(static_cast<size_t>(rank - channel_axis), 1);
    shape[0] = bsd[0];
    bs = ctx.add1("reshape", {bs}, Attributes().set("shape", shape));
  }
  TensorId factor =
      ctx.cast(ctx.elementwise("div", ctx.elementwise("mul", ctx.input(a_scale), bs), ctx.input(y_scale)),
               DataType::kFloat32);
  TensorId v = ctx.unary("round", ctx.elementwise("mul", ctx.cast(acc, DataType::kFloat32), factor));
  const bool u8 = is_uint8(ctx, y_zp);
  if (ctx.has_input(y_zp)) v = ctx.elementwise("add", v, ctx.cast(ctx.input(y_zp), DataType::kFloat32));
  v = ctx.add1("activation", {v},
               Attributes()
                   .set("type", std::string("clip"))
                   .set("alpha", u8 ? 0.0 : -128.0)
                   .set("beta", u8 ? 255.0 : 127.0));
  TensorId y = ctx.cast(v, u8 ? DataType::kInt32 : DataType::kInt8);
  if (u8) ctx.set_held_type(y, 2);
  return y;
}

void import_matmul_integer(NodeContext& ctx) {
  // a's zero point is per row (axis -2 of a 2-D a: its M axis), b's per column (its last axis)
  TensorId a = centered(ctx, 0, 2, static_cast<int64_t>(ctx.desc(0).dims.size()) - 2);
  TensorId b = centered(ctx, 1, 3, -1);  // a per-column zero point broadcasts along b's last axis
  ctx.set_output(0, integer_matmul(ctx, a, b));
}

void import_qlinear_matmul(NodeContext& ctx) {
  // inputs: a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point
  TensorId a = centered(ctx, 0, 2, -1);
  TensorId b = ctx.cast(ctx.input(3), DataType::kInt32);
  if (ctx.has_input(5)) b = ctx.elementwise("sub", b, ctx.cast(ctx.input(5), DataType::kInt32));
  b = ctx.cast(b, DataType::kFloat32);
  TensorId acc = integer_matmul(ctx, a, b);
  ctx.set_output(0, requantize(ctx, acc, 1, 4, 6, 7, -1));
}

TensorId integer_convolution(NodeContext& ctx, int x, int x_zp, int w, int w_zp) {
  const TensorDesc wd = ctx.desc(w);
  const size_t rank = ctx.desc(x).dims.size();
  if (rank < 3 || rank > 5 || wd.dims.size() != rank)
    ctx.fail("input and weight must be 3-D to 5-D, of one rank");
  int64_t terms = 1;
  for (size_t d = 1; d < wd.dims.size(); ++d) terms *= wd.dims[d];
  if (terms > kMaxExactTerms) {
    ctx.fail("more than " + std::to_string(kMaxExactTerms) +
             " products per output (input channels per group x kernel size) would round in float32");
  }
  TensorId xc = centered(ctx, x, x_zp, 1);
  TensorId wc = centered(ctx, w, w_zp, 0);  // a per-output-channel weight zero point
  return ctx.cast(convolution(ctx, xc, wc), DataType::kInt32);
}

void import_conv_integer(NodeContext& ctx) { ctx.set_output(0, integer_convolution(ctx, 0, 2, 1, 3)); }

void import_qlinear_conv(NodeContext& ctx) {
  // inputs: x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B (int32)
  TensorId acc = integer_convolution(ctx, 0, 2, 3, 5);
  if (ctx.has_input(8)) {
    const Dims ad = ctx.net().desc(acc).dims, bd = ctx.desc(8).dims;
    if (bd.size() != 1 || bd[0] != ad[1]) ctx.fail("the bias needs one value per output channel");
    Dims shape(ad.size() - 1, 1);
    shape[0] = bd[0];
    acc = ctx.elementwise(
        "add", acc,
        ctx.add1("reshape", {ctx.cast(ctx.input(8), DataType::kInt32)}, Attributes().set("shape", shape)));
  }
  ctx.set_output(0, requantize(ctx, acc, 1, 4, 6, 7, 1));
}

const ImporterRegistration kRegistered{
    {"MatMulInteger", import_matmul_integer},
    {"QLinearMatMul", import_qlinear_matmul},
    {"ConvInteger", import_conv_integer},
    {"QLinearConv", import_qlinear_conv},
};

}  // namespace
}  // namespace kiln::onnx
