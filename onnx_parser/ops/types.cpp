// ONNX element-type operators: Cast, CastLike, QuantizeLinear, DequantizeLinear and
// DynamicQuantizeLinear, over the types Kiln holds in another dtype (parser.cpp's elem_type):
// uint8 / int16 / uint16 in int32, uint32 / uint64 in int64, float64 in float32, and the narrow
// types: float8 e5m2 / e4m3fnuz / e5m2fnuz and float4 e2m1 held in float32 (their values
// exactly; a cast to one rounds with fake_quantize's format of that name, ir/minifloat.h), int4 /
// uint4 / int2 / uint2 held in int32. float8 e4m3fn has an engine dtype: a cast to it is a
// quantize with scale 1, a cast from it a dequantize. Conversions follow ml_dtypes, which ONNX's
// reference defines them by: floats to a narrow integer truncate and give 0 out of range,
// integers wrap.
#include <cmath>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

// TensorProto::DataType numbers.
enum OnnxType : int32_t {
  kFloat = 1,
  kUint8 = 2,
  kInt8 = 3,
  kUint16 = 4,
  kInt16 = 5,
  kInt32 = 6,
  kInt64 = 7,
  kBool = 9,
  kFloat16 = 10,
  kDouble = 11,
  kUint32 = 12,
  kUint64 = 13,
  kBFloat16 = 16,
  kE4M3FN = 17,
  kE4M3FNUZ = 18,
  kE5M2 = 19,
  kE5M2FNUZ = 20,
  kUint4 = 21,
  kInt4 = 22,
  kE2M1 = 23,
  kUint2 = 25,
  kInt2 = 26,
};

// fake_quantize's format for a narrow floating type; nullptr for another type.
const char* narrow_float_format(int64_t t) {
  switch (t) {
    case kE4M3FNUZ:
      return "e4m3fnuz";
    case kE5M2:
      return "e5m2";
    case kE5M2FNUZ:
      return "e5m2fnuz";
    case kE2M1:
      return "e2m1";
    default:
      return nullptr;
  }
}

// The range of an integer type Kiln holds wider; false for another type.
bool held_int_range(int64_t t, int64_t* lo, int64_t* hi) {
  switch (t) {
    case kUint8:
      *lo = 0, *hi = 255;
      return true;
    case kInt16:
      *lo = -32768, *hi = 32767;
      return true;
    case kUint16:
      *lo = 0, *hi = 65535;
      return true;
    case kUint4:
      *lo = 0, *hi = 15;
      return true;
    case kInt4:
      *lo = -8, *hi = 7;
      return true;
    case kUint2:
      *lo = 0, *hi = 3;
      return true;
    case kInt2:
      *lo = -2, *hi = 1;
      return true;
    default:
      return false;
  }
}

bool is_narrow_int(int64_t t) { return t == kUint4 || t == kInt4 || t == kUint2 || t == kInt2; }

// The dtype Kiln holds ONNX type `t` in.
DataType held_dtype(NodeContext& ctx, int64_t t) {
  int64_t lo, hi;
  if (narrow_float_format(t)) return DataType::kFloat32;
  if (held_int_range(t, &lo, &hi)) return DataType::kInt32;
  switch (t) {
    case kFloat:
    case kDouble:  // held as float32
      return DataType::kFloat32;
    case kFloat16:
      return DataType::kFloat16;
    case kBFloat16:
      return DataType::kBFloat16;
    case kInt32:
      return DataType::kInt32;
    case kInt64:
    case kUint32:  // held as int64
    case kUint64:
      return DataType::kInt64;
    case kInt8:
      return DataType::kInt8;
    case kBool:
      return DataType::kBool;
    case kE4M3FN:
      return DataType::kFloat8E4M3;
    default:
      ctx.fail("casting to ONNX element type " + std::to_string(t) + " is not supported");
  }
}

// The ONNX type of a tensor: the one it is held for, else its dtype's.
int64_t onnx_type(NodeContext& ctx, TensorId t) {
  if (int32_t held = ctx.held_type(t)) return held;
  switch (ctx.net().desc(t).dtype) {
    case DataType::kFloat32:
      return kFloat;
    case DataType::kFloat16:
      return kFloat16;
    case DataType::kBFloat16:
      return kBFloat16;
    case DataType::kInt32:
      return kInt32;
    case DataType::kInt64:
      return kInt64;
    case DataType::kInt8:
      return kInt8;
    case DataType::kBool:
      return kBool;
    case DataType::kFloat8E4M3:
      return kE4M3FN;
    default:
      ctx.fail("a tensor of dtype " + std::string(dtype_name(ctx.net().desc(t).dtype)) +
               " has no ONNX element type");
  }
}

TensorId scale_one(NodeContext& ctx) { return ctx.scalar(DataType::kFloat32, 1.0); }

// float8 e4m3fn <-> a floating dtype, exactly (scale 1).
TensorId from_e4m3(NodeContext& ctx, TensorId x, DataType to) {
  return ctx.add1("dequantize", {x, scale_one(ctx)},
                  Attributes().set("format", std::string("e4m3")).set("dtype", std::string(dtype_name(to))));
}

// The values of x as float32 (float8 e4m3fn dequantized, other dtypes cast).
TensorId float_value(NodeContext& ctx, TensorId x) {
  if (ctx.net().desc(x).dtype == DataType::kFloat8E4M3) return from_e4m3(ctx, x, DataType::kFloat32);
  return ctx.cast(x, DataType::kFloat32);
}

// Without saturation, float8 e4m3fn overflows to NaN: values that round past 448 (above 464,
// the midpoint to the next step, which e4m3fn lacks).
TensorId e4m3_overflow_to_nan(NodeContext& ctx, TensorId v) {
  TensorId over = ctx.elementwise("gt", ctx.unary("abs", v), ctx.scalar(DataType::kFloat32, 464.0));
  return ctx.add1("where", {over, ctx.scalar(DataType::kFloat32, std::nan("")), v});
}

// An integer tensor wrapped into [lo, hi] (two's complement), as int32.
TensorId wrap_into(NodeContext& ctx, TensorId y, int64_t lo, int64_t hi) {
  y = ctx.cast(y, DataType::kInt32);
  auto op = [&](const char* name, TensorId a, TensorId b) { return ctx.elementwise(name, a, b); };
  const double span = static_cast<double>(hi - lo + 1);
  TensorId m = ctx.scalar(DataType::kInt32, span);
  y = op("sub", y, op("mul", op("floor_div", y, m), m));  // in [0, span)
  if (lo < 0) y = ctx.add1("where", {op("gt", y, ctx.scalar(DataType::kInt32, hi)), op("sub", y, m), y});
  return y;
}

// x converted to ONNX type `to`, held as Kiln holds that type.
TensorId cast_to(NodeContext& ctx, TensorId x, int64_t to, bool saturate) {
  const DataType from = ctx.net().desc(x).dtype;
  if (to == kE4M3FN) {
    if (from == DataType::kFloat8E4M3) return ctx.add1("identity", {x});
    TensorId v = float_value(ctx, x);
    if (!saturate) v = e4m3_overflow_to_nan(ctx, v);
    return ctx.add1("quantize", {v, scale_one(ctx)}, Attributes().set("format", std::string("e4m3")));
  }
  if (const char* format = narrow_float_format(to)) {
    TensorId y = ctx.add1("fake_quantize", {float_value(ctx, x), scale_one(ctx)},
                          Attributes().set("format", std::string(format)).set("saturate", int64_t{saturate}));
    ctx.set_held_type(y, static_cast<int32_t>(to));
    return y;
  }
  int64_t lo, hi;
  if (held_int_range(to, &lo, &hi)) {
    TensorId y;
    if (is_narrow_int(to) && (is_floating(from) || from == DataType::kFloat8E4M3)) {
      // ml_dtypes: truncated toward zero, 0 when out of range (NaN too)
      TensorId v = float_value(ctx, x);
      TensorId inside =
          ctx.elementwise("and", ctx.elementwise("gt", v, ctx.scalar(DataType::kFloat32, lo - 1.0)),
                          ctx.elementwise("lt", v, ctx.scalar(DataType::kFloat32, hi + 1.0)));
      v = ctx.add1("where", {inside, v, ctx.scalar(DataType::kFloat32, 0.0)});
      y = ctx.cast(v, DataType::kInt32);
    } else {
      y = wrap_into(ctx, from == DataType::kFloat8E4M3 ? float_value(ctx, x) : x, lo, hi);
    }
    ctx.set_held_type(y, static_cast<int32_t>(to));
    return y;
  }
  const DataType dt = held_dtype(ctx, to);
  TensorId y;
  if (from == DataType::kFloat8E4M3) {
    y = from_e4m3(ctx, x, is_floating(dt) ? dt : DataType::kFloat32);
    y = ctx.cast(y, dt);
  } else {
    y = from == dt ? ctx.add1("identity", {x}) : ctx.cast(x, dt);
  }
  if (to == kUint32 || to == kUint64) ctx.set_held_type(y, static_cast<int32_t>(to));
  return y;
}

void import_cast(NodeContext& ctx) {
  const int64_t to = ctx.attr_int("to");
  const bool saturate = ctx.attr_int("saturate", 1) != 0;
  ctx.attr_string("round_mode", std::string("up"));  // float8 e8m0 only, which Kiln lacks
  ctx.set_output(0, cast_to(ctx, ctx.input(0), to, saturate));
}

void import_cast_like(NodeContext& ctx) {
  const bool saturate = ctx.attr_int("saturate", 1) != 0;
  ctx.attr_string("round_mode", std::string("up"));
  ctx.set_output(0, cast_to(ctx, ctx.input(0), onnx_type(ctx, ctx.input(1)), saturate));
}

// ---- quantization ----------------------------------------------------------------------------

// A scale or zero point of `count` entries along `axis` of a rank-`rank` x, shaped to broadcast
// against x ([C] -> [C, 1, ..., 1]); per tensor values pass unchanged.
TensorId along_axis(NodeContext& ctx, TensorId v, bool per_axis, int64_t axis, int64_t rank) {
  if (!per_axis) return v;
  const Dims& dims = ctx.net().desc(v).dims;
  if (dims.size() != 1) {
    ctx.fail("a per-axis scale and its zero point must both be 1-D (one entry per channel); got a rank-" +
             std::to_string(dims.size()) + " zero point");
  }
  Dims shape(static_cast<size_t>(rank - axis), 1);
  shape[0] = dims[0];
  return ctx.add1("reshape", {v}, Attributes().set("shape", shape));
}

// uint8 Q/DQ on the int8 engine ops: q_u8 = q_i8 + 128 with the zero point shifted by -128
// (the same rounding and clamping); dequantization is (x - zero_point) * scale in float32.
TensorId quantize_uint8(NodeContext& ctx, TensorId s, TensorId zp, bool per_axis, int64_t axis) {
  Attributes a;
  if (per_axis) a.set("axis", axis);
  TensorId shifted = ctx.elementwise("sub", zp, ctx.scalar(DataType::kInt32, 128.0));
  if (!per_axis) {
    shifted = ctx.add1("reshape", {shifted}, Attributes().set("shape", std::vector<int64_t>{}));
    s = ctx.add1("reshape", {s}, Attributes().set("shape", std::vector<int64_t>{}));
  }
  TensorId q = ctx.add1("quantize", {ctx.input(0), s, shifted}, a);
  return ctx.elementwise("add", ctx.cast(q, DataType::kInt32), ctx.scalar(DataType::kInt32, 128.0));
}

// QuantizeLinear / DequantizeLinear: int8 and float8 e4m3fn on the engine's quantize and
// dequantize (per tensor or per axis); uint8 through int8 (above); int4 / uint4 / int2 / uint2
// on int8 quantize with their range; the narrow floats as x / scale rounded by fake_quantize.
// Not supported: blocked quantization (block_size).
void import_qdq(NodeContext& ctx, bool quantize) {
  const int64_t rank = static_cast<int64_t>(ctx.desc(0).dims.size());
  const TensorDesc scale = ctx.desc(1);
  if (ctx.attr_int("block_size", 0) != 0) ctx.fail("blocked quantization (block_size) is not supported");
  const bool saturate = ctx.attr_int("saturate", 1) != 0;
  ctx.attr_int("precision", 0);
  const int64_t output_dtype = ctx.attr_int("output_dtype", 0);
  int64_t qt;  // the quantized ONNX type
  if (ctx.has_input(2)) {
    qt = onnx_type(ctx, ctx.input(2));
  } else if (!quantize) {
    qt = onnx_type(ctx, ctx.input(0));
  } else {
    qt = output_dtype != 0 ? output_dtype : int64_t{kUint8};  // ONNX's default is uint8
  }
  if (quantize && output_dtype != 0 && output_dtype != qt) {
    ctx.fail("output_dtype " + std::to_string(output_dtype) + " differs from the zero point's type " +
             std::to_string(qt));
  }
  const bool per_axis = scale.dims.size() == 1 && scale.dims[0] != 1;
  const int64_t axis_attr = ctx.attr_int("axis", 1);
  const int64_t axis = per_axis ? normalize_axis(axis_attr, rank, ctx) : 0;
  const DataType out_dtype = !quantize && output_dtype != 0 ? held_dtype(ctx, output_dtype) : scale.dtype;
  if (!is_floating(out_dtype)) ctx.fail("output_dtype must be a floating type");
  TensorId s = ctx.cast(ctx.input(1), DataType::kFloat32);
  auto set_quantized = [&](TensorId y) {
    ctx.set_held_type(y, static_cast<int32_t>(qt));
    ctx.set_output(0, y);
  };
  int64_t lo, hi;
  if (const char* format = narrow_float_format(qt)) {
    TensorId s_b = along_axis(ctx, s, per_axis, axis, rank);
    if (!quantize) {  // a float8 zero point must be 0 and float4's is ignored (ONNX's reference)
      ctx.set_output(0, ctx.cast(ctx.elementwise("mul", ctx.input(0), s_b), out_dtype));
      return;
    }
    TensorId v = ctx.elementwise("div", float_value(ctx, ctx.input(0)), s_b);
    if (qt == kE2M1 && ctx.has_input(2)) {
      v = ctx.elementwise("add", v, along_axis(ctx, ctx.input(2), per_axis, axis, rank));
    }
    set_quantized(
        ctx.add1("fake_quantize", {v, scale_one(ctx)},
                 Attributes().set("format", std::string(format)).set("saturate", int64_t{saturate})));
    return;
  }
  if (held_int_range(qt, &lo, &hi)) {  // uint8 and the narrow integers, held in int32
    TensorId zp =
        ctx.has_input(2) ? ctx.cast(ctx.input(2), DataType::kInt32) : ctx.scalar(DataType::kInt32, 0.0);
    if (!quantize) {
      TensorId x = ctx.elementwise("sub", ctx.cast(ctx.input(0), DataType::kFloat32),
                                   ctx.cast(along_axis(ctx, zp, per_axis, axis, rank), DataType::kFloat32));
      ctx.set_output(
          0, ctx.cast(ctx.elementwise("mul", x, along_axis(ctx, s, per_axis, axis, rank)), out_dtype));
      return;
    }
    if (qt == kUint8) {
      set_quantized(quantize_uint8(ctx, s, zp, per_axis, axis));
      return;
    }
    if (!is_narrow_int(qt)) {  // int16, uint16: in float32, rint(x / scale) + zero point, clamped
      TensorId v =
          ctx.elementwise("div", float_value(ctx, ctx.input(0)), along_axis(ctx, s, per_axis, axis, rank));
      v = ctx.elementwise("add", ctx.unary("round", v),
                          ctx.cast(along_axis(ctx, zp, per_axis, axis, rank), DataType::kFloat32));
      v = ctx.add1("activation", {v},
                   Attributes()
                       .set("type", std::string("clip"))
                       .set("alpha", static_cast<double>(lo))
                       .set("beta", static_cast<double>(hi)));
      set_quantized(ctx.cast(v, DataType::kInt32));
      return;
    }
    Attributes a;
    a.set("quant_min", lo).set("quant_max", hi);
    if (per_axis) a.set("axis", axis);
    set_quantized(ctx.cast(ctx.add1("quantize", {ctx.input(0), s, zp}, a), DataType::kInt32));
    return;
  }
  if (qt != kInt8 && qt != kE4M3FN) {
    ctx.fail("quantized type " + std::to_string(qt) +
             " is not supported (int8, uint8, int4, uint4, int2, uint2, float8 and float4 types)");
  }
  Attributes attrs;
  if (qt == kE4M3FN) attrs.set("format", std::string("e4m3"));
  if (per_axis) attrs.set("axis", axis);
  std::vector<TensorId> in = {ctx.input(0), s};
  if (ctx.has_input(2) && qt == kInt8) in.push_back(ctx.cast(ctx.input(2), DataType::kInt32));
  if (quantize && qt == kE4M3FN && !saturate) {  // overflow to NaN: x / scale first
    TensorId v =
        ctx.elementwise("div", float_value(ctx, ctx.input(0)), along_axis(ctx, s, per_axis, axis, rank));
    in = {e4m3_overflow_to_nan(ctx, v), scale_one(ctx)};
    attrs = Attributes().set("format", std::string("e4m3"));
  }
  if (quantize) {
    ctx.set_output(0, ctx.add1("quantize", in, attrs));
  } else {
    attrs.set("dtype", std::string(dtype_name(out_dtype)));
    ctx.set_output(0, ctx.add1("dequantize", in, attrs));
  }
}

// DynamicQuantizeLinear: uint8 with scale = (max(0, max x) - min(0, min x)) / 255 and zero point
// clamp(round(-min / scale), 0, 255); y = clamp(round(x / scale) + zero point, 0, 255).
void import_dynamic_quantize(NodeContext& ctx) {
  const TensorId x = ctx.input(0);
  if (ctx.desc(0).dtype != DataType::kFloat32) ctx.fail("x must be float32");
  auto full_reduce = [&](const char* op) {
    return ctx.add1("reduce", {x}, Attributes().set("op", std::string(op)).set("keepdim", int64_t{0}));
  };
  TensorId zero = ctx.scalar(DataType::kFloat32, 0.0);
  TensorId hi = ctx.elementwise("max", full_reduce("max"), zero),
           lo = ctx.elementwise("min", full_reduce("min"), zero);
  TensorId scale =
      ctx.elementwise("div", ctx.elementwise("sub", hi, lo), ctx.scalar(DataType::kFloat32, 255.0));
  TensorId zp = ctx.unary("round", ctx.elementwise("div", ctx.unary("neg", lo), scale));
  zp = ctx.add1("activation", {zp},
                Attributes().set("type", std::string("clip")).set("alpha", 0.0).set("beta", 255.0));
  TensorId q = ctx.elementwise("add", ctx.unary("round", ctx.elementwise("div", x, scale)), zp);
  q = ctx.add1("activation", {q},
               Attributes().set("type", std::string("clip")).set("alpha", 0.0).set("beta", 255.0));
  TensorId yq = ctx.cast(q, DataType::kInt32), zq = ctx.cast(zp, DataType::kInt32);
  ctx.set_held_type(yq, kUint8);
  ctx.set_held_type(zq, kUint8);
  ctx.set_output(0, yq);
  ctx.set_output(1, ctx.add1("identity", {scale}));
  ctx.set_output(2, zq);
}

const ImporterRegistration kRegistered{
    {"Cast", import_cast},
    {"CastLike", import_cast_like},
    {"QuantizeLinear", [](NodeContext& c) { import_qdq(c, true); }},
    {"DequantizeLinear", [](NodeContext& c) { import_qdq(c, false); }},
    {"DynamicQuantizeLinear", import_dynamic_quantize},
};

}  // namespace
}  // namespace kiln::onnx
