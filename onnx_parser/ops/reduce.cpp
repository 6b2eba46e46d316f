// ONNX reductions, arg-reductions, TopK, CumSum, and the Q/DQ operators.
#include <numeric>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

// Reduce*: axes from the input (opset 18; ReduceSum from 13) or the attribute; an empty list
// reduces everything unless noop_with_empty_axes.
enum class Pre { kNone, kAbs, kSquare, kExp };
enum class Post { kNone, kSqrt, kLog };

ImportFn reduce(const std::string& op, Pre pre = Pre::kNone, Post post = Post::kNone) {
  return [op, pre, post](NodeContext& ctx) {
    const int64_t keepdims = ctx.attr_int("keepdims", 1);
    const bool noop = ctx.attr_int("noop_with_empty_axes", 0) != 0;
    std::vector<int64_t> axes;
    if (ctx.has_input(1)) {
      auto v = ctx.int_values(1);
      if (!v) ctx.fail("axes must be known while parsing");
      axes = *v;
    } else if (ctx.has_attr("axes")) {
      axes = ctx.attr_ints("axes");
    }
    TensorId x = ctx.input(0);
    if (axes.empty() && noop) {
      ctx.set_output(0, ctx.add1("identity", {x}));
      return;
    }
    const int64_t rank = static_cast<int64_t>(ctx.desc(0).dims.size());
    if (axes.empty()) {
      axes.resize(static_cast<size_t>(rank));
      std::iota(axes.begin(), axes.end(), 0);
    }
    if (pre == Pre::kAbs) x = ctx.unary("abs", x);
    if (pre == Pre::kSquare) x = ctx.elementwise("mul", x, x);
    TensorId shift = -1;
    if (pre == Pre::kExp) {  // log(sum(exp(x - max))) + max
      shift =
          ctx.add1("reduce", {x},
                   Attributes().set("op", std::string("max")).set("axes", axes).set("keepdim", int64_t{1}));
      x = ctx.unary("exp", ctx.elementwise("sub", x, shift));
    }
    TensorId y =
        ctx.add1("reduce", {x}, Attributes().set("op", op).set("axes", axes).set("keepdim", keepdims));
    if (post == Post::kSqrt) y = ctx.unary("sqrt", y);
    if (post == Post::kLog) y = ctx.unary("log", y);
    if (shift >= 0) {
      if (!keepdims) {
        std::vector<int64_t> norm;
        for (int64_t a : axes) norm.push_back(normalize_axis(a, rank, ctx));
        shift = ctx.add1("squeeze", {shift}, Attributes().set("axes", norm));
      }
      y = ctx.elementwise("add", y, shift);
    }
    ctx.set_output(0, y);
  };
}

ImportFn arg_reduce(const std::string& op) {
  return [op](NodeContext& ctx) {
    const TensorDesc x = ctx.desc(0);
    const int64_t axis = normalize_axis(ctx.attr_int("axis", 0), static_cast<int64_t>(x.dims.size()), ctx);
    Attributes attrs;
    attrs.set("op", op).set("axis", axis).set("keepdim", ctx.attr_int("keepdims", 1));
    if (ctx.attr_int("select_last_index", 0) == 0) {
      ctx.set_output(0, ctx.add1("arg_reduce", {ctx.input(0)}, attrs));
      return;
    }
    // The last index among ties: the first one of the reversed axis, mapped back.
    const int64_t d = x.dims[axis];
    if (d < 0) ctx.fail("select_last_index needs a static dim on the axis");
    check_host_elements(d, "a reversed axis", ctx);
    std::vector<int64_t> rev(static_cast<size_t>(d));
    for (int64_t i = 0; i < d; ++i) rev[i] = d - 1 - i;
    TensorId flipped =
        ctx.add1("gather", {ctx.input(0), ctx.constant_i64(rev)}, Attributes().set("axis", axis));
    TensorId idx = ctx.add1("arg_reduce", {flipped}, attrs);
    ctx.set_output(0, ctx.elementwise("sub", ctx.scalar(DataType::kInt64, static_cast<double>(d - 1)), idx));
  };
}

void import_topk(NodeContext& ctx) {
  auto k = ctx.int_values(1);
  if (!k || k->size() != 1) ctx.fail("K must be a known one-element tensor");
  Layer& l = ctx.add("topk", {ctx.input(0)},
                     Attributes()
                         .set("k", k->at(0))
                         .set("axis", ctx.attr_int("axis", -1))
                         .set("largest", ctx.attr_int("largest", 1))
                         .set("sorted", ctx.attr_int("sorted", 1)));
  const std::vector<TensorId> outs = l.outputs;
  ctx.set_output(0, outs[0]);
  ctx.set_output(1, outs[1]);
}

void import_cumsum(NodeContext& ctx) {
  auto axis = ctx.int_values(1);
  if (!axis || axis->size() != 1) ctx.fail("axis must be a known one-element tensor");
  ctx.set_output(0, ctx.add1("cumsum", {ctx.input(0)},
                             Attributes()
                                 .set("axis", axis->at(0))
                                 .set("exclusive", ctx.attr_int("exclusive", 0))
                                 .set("reverse", ctx.attr_int("reverse", 0))));
}

// QuantizeLinear / DequantizeLinear: int8 (per tensor or per axis) and float8 e4m3fn.
// uint8 Q/DQ on the int8 engine ops: q_u8 = q_i8 + 128 with the zero point shifted by -128
// (the same rounding and clamping); dequantization is (x - zero_point) * scale in float32.
void import_uint8_qdq(NodeContext& ctx, bool quantize, int64_t rank) {
  const TensorDesc scale = ctx.desc(1);
  const bool per_axis = scale.dims.size() == 1 && scale.dims[0] != 1;
  const int64_t axis_attr = ctx.attr_int("axis", 1);
  const int64_t axis = per_axis ? normalize_axis(axis_attr, rank, ctx) : 0;
  TensorId s = ctx.cast(ctx.input(1), DataType::kFloat32);
  TensorId zp =
      ctx.has_input(2) ? ctx.cast(ctx.input(2), DataType::kInt32) : ctx.scalar(DataType::kInt32, 0.0);
  if (quantize) {
    Attributes a;
    if (per_axis) a.set("axis", axis);
    TensorId shifted = ctx.elementwise("sub", zp, ctx.scalar(DataType::kInt32, 128.0));
    if (!per_axis)
      shifted = ctx.add1("reshape", {shifted}, Attributes().set("shape", std::vector<int64_t>{}));
    if (!per_axis) s = ctx.add1("reshape", {s}, Attributes().set("shape", std::vector<int64_t>{}));
    TensorId q = ctx.add1("quantize", {ctx.input(0), s, shifted}, a);
    TensorId y = ctx.elementwise("add", ctx.cast(q, DataType::kInt32), ctx.scalar(DataType::kInt32, 128.0));
    ctx.set_held_type(y, 2);
    ctx.set_output(0, y);
    return;
  }
  if (per_axis) {  // [C] -> [C, 1, ..., 1] aligned at `axis`
    Dims shape(static_cast<size_t>(rank - axis), 1);
    shape[0] = scale.dims[0];
    s = ctx.add1("reshape", {s}, Attributes().set("shape", shape));
    zp = ctx.add1("reshape", {zp}, Attributes().set("shape", shape));
  }
  TensorId x =
      ctx.elementwise("sub", ctx.cast(ctx.input(0), DataType::kFloat32), ctx.cast(zp, DataType::kFloat32));
  ctx.set_output(0, ctx.cast(ctx.elementwise("mul", x, s), scale.dtype));
}

void import_qdq(NodeContext& ctx, bool quantize) {
  const int64_t rank = static_cast<int64_t>(ctx.desc(0).dims.size());
  const TensorDesc scale = ctx.desc(1);
  if (ctx.attr_int("block_size", 0) != 0) ctx.fail("blocked quantization (block_size) is not supported");
  ctx.attr_int("saturate", 1);
  ctx.attr_int("precision", 0);
  DataType qtype = DataType::kInt8;
  bool uint8 = false;  // ONNX's uint8 scheme, held in int32
  if (ctx.has_input(2)) {
    qtype = ctx.desc(2).dtype;
    uint8 = ctx.held_type(ctx.input(2)) == 2;
  } else if (!quantize) {
    qtype = ctx.desc(0).dtype;
    uint8 = ctx.held_type(ctx.input(0)) == 2;
  } else if (ctx.has_attr("output_dtype")) {
    const int64_t t = ctx.attr_int("output_dtype");
    if (t == 17)
      qtype = DataType::kFloat8E4M3;
    else if (t == 2)
      uint8 = true;
    else if (t != 3 && t != 0)
      ctx.fail("output_dtype " + std::to_string(t) + " is not supported (int8, uint8, float8e4m3fn)");
  } else {
    uint8 = true;  // no zero point and no output_dtype: ONNX's default is uint8
  }
  if (uint8) {
    import_uint8_qdq(ctx, quantize, rank);
    return;
  }
  Attributes attrs;
  if (qtype == DataType::kFloat8E4M3) {
    attrs.set("format", std::string("e4m3"));
  } else if (qtype != DataType::kInt8) {
    ctx.fail("only int8 and float8e4m3fn quantization are supported (uint8 and others are not)");
  }
  if (scale.dims.size() == 1 && scale.dims[0] != 1)
    attrs.set("axis", normalize_axis(ctx.attr_int("axis", 1), rank, ctx));
  else
    ctx.attr_int("axis", 1);
  TensorId s = ctx.cast(ctx.input(1), DataType::kFloat32);
  std::vector<TensorId> in = {ctx.input(0), s};
  if (ctx.has_input(2) && qtype == DataType::kInt8) in.push_back(ctx.cast(ctx.input(2), DataType::kInt32));
  if (quantize) {
    ctx.set_output(0, ctx.add1("quantize", in, attrs));
  } else {
    attrs.set("dtype", std::string(dtype_name(scale.dtype)));
    ctx.set_output(0, ctx.add1("dequantize", in, attrs));
  }
}

const ImporterRegistration kRegistered{
    {"ReduceSum", reduce("sum")},
    {"ReduceMean", reduce("mean")},
    {"ReduceMax", reduce("max")},
    {"ReduceMin", reduce("min")},
    {"ReduceProd", reduce("prod")},
    {"ReduceL1", reduce("sum", Pre::kAbs)},
    {"ReduceL2", reduce("sum", Pre::kSquare, Post::kSqrt)},
    {"ReduceSumSquare", reduce("sum", Pre::kSquare)},
    {"ReduceLogSum", reduce("sum", Pre::kNone, Post::kLog)},
    {"ReduceLogSumExp", reduce("sum", Pre::kExp, Post::kLog)},
    {"ArgMax", arg_reduce("argmax")},
    {"ArgMin", arg_reduce("argmin")},
    {"TopK", import_topk},
    {"CumSum", import_cumsum},
    {"QuantizeLinear", [](NodeContext& c) { import_qdq(c, true); }},
    {"DequantizeLinear", [](NodeContext& c) { import_qdq(c, false); }},
};

}  // namespace
}  // namespace kiln::onnx
