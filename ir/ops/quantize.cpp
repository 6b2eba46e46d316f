// Quantization, with torch's arithmetic (quantized_decomposed ops, fake_quantize_*_affine):
//   quantize       x (floating), scale, [zero_point] -> int8
//                  q = clamp(nearbyint(x * (1 / scale)) + zero_point, quant_min, quant_max)
//   dequantize     x (int8), scale, [zero_point]     -> `dtype` (default float32)
//                  y = (x - zero_point) * scale
//   fake_quantize  x (floating), scale, [zero_point] -> x's dtype
//                  y = (clamp(nearbyint(x * (1 / scale)) + zero_point, quant_min, quant_max)
//                       - zero_point) * scale
// With format = "e4m3" (FP8; per tensor, no zero point): quantize gives float8_e4m3fn,
// q = e4m3(x * (1 / scale)) rounded to nearest even and saturated to +-448 (ir/float8.h);
// dequantize reads float8_e4m3fn, y = x * scale; fake_quantize y = e4m3(x * (1 / scale)) * scale.
// fake_quantize also rounds to the narrow formats without an engine dtype (format = "e5m2",
// "e4m3fnuz", "e5m2fnuz" or "e2m1", ir/minifloat.h; per tensor or per channel, no zero point):
// y = round_minifloat(x * (1 / scale), saturate) * scale.
// All in float32 (1 / scale rounded to float32 first, nearbyint: half to even), as torch
// computes them, so results match torch bit for bit. torch's decomposed per-tensor quantize
// rounds 1 / scale from a double scale instead: its converter passes that float as `inv_scale`.
// scale is float32 and zero_point int32/int64, both with one element (per tensor) or one per
// index of x along `axis` (per channel: a 1-D tensor of x.dims[axis] elements). quant_min /
// quant_max: int8's range at most for quantize (an int8 result), any ordered pair for
// fake_quantize (0..255 for a uint8 scheme).
#include "ir/ops/quantize.h"

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/shape_values.h"

namespace kiln {

QuantParams quant_params(const Layer& layer, size_t rank, int64_t scale_count) {
  const std::string who = describe(layer);
  QuantParams p;
  p.quant_min = layer.attrs.get_int("quant_min", int64_t{-128});
  p.quant_max = layer.attrs.get_int("quant_max", int64_t{127});
  p.per_channel = scale_count != 1;
  p.has_inv_scale = layer.attrs.has("inv_scale");
  if (layer.attrs.has("format")) {
    const std::string format = layer.attrs.get_string("format", who);
    p.minifloat = minifloat_format(format, &p.format);
    KILN_CHECK(
        format == "int" || format == "e4m3" || p.minifloat,
        who << ": format must be \"int\", \"e4m3\", \"e5m2\", \"e4m3fnuz\", \"e5m2fnuz\" or \"e2m1\", got \""
            << format << "\"");
    p.e4m3 = format == "e4m3";
  }
  p.saturate = layer.attrs.get_int("saturate", int64_t{1}) != 0;
  if (p.has_inv_scale) p.inv_scale = static_cast<float>(layer.attrs.get_float("inv_scale", who));
  if (p.per_channel) {
    KILN_CHECK(rank >= 1, who << ": a per-channel scale needs x of rank >= 1");
    p.axis = normalize_axis(layer.attrs.get_int("axis", int64_t{0}), static_cast<int64_t>(rank), who);
  }
  return p;
}

namespace {

void check_params(const Layer& layer, const std::vector<TensorDesc>& in, bool int8_range) {
  const std::string who = describe(layer);
  const TensorDesc& x = in[0];
  const TensorDesc& scale = in[1];
  KILN_CHECK(scale.dtype == DataType::kFloat32,
             who << ": scale must be float32, got " << dtype_name(scale.dtype) << "; insert a cast");
  KILN_CHECK(scale.dims.size() <= 1, who << ": scale must be 0-d or 1-D, got " << to_string(scale.dims));
  const int64_t count = scale.dims.empty() ? 1 : scale.dims[0];
  KILN_CHECK(count != kDynamic, who << ": scale needs a static size");
  if (in.size() == 3) {
    const TensorDesc& zp = in[2];
    KILN_CHECK(zp.dtype == DataType::kInt32 || zp.dtype == DataType::kInt64,
               who << ": zero_point must be int32 or int64, got " << dtype_name(zp.dtype));
    const int64_t zp_count = zp.dims.empty() ? 1 : zp.dims.size() == 1 ? zp.dims[0] : -2;
    KILN_CHECK(zp_count == count,
               who << ": zero_point " << to_string(zp.dims) << " must match scale " << to_string(scale.dims));
  }
  const QuantParams p = quant_params(layer, x.dims.size(), count);
  if (p.minifloat) {
    KILN_CHECK(layer.op == "fake_quantize", who << ": format " << layer.attrs.get_string("format", who)
                                                << " has no engine dtype: only fake_quantize rounds to it");
    KILN_CHECK(in.size() == 2, who << ": a narrow floating format has no zero point");
  }
  if (p.e4m3) {
    KILN_CHECK(count == 1, who << ": an e4m3 (FP8) scale is per tensor: one value, got " << count);
    KILN_CHECK(in.size() == 2, who << ": e4m3 (FP8) quantization has no zero point");
    return;
  }
  KILN_CHECK(p.minifloat || p.quant_min <= p.quant_max,
             who << ": quant_min " << p.quant_min << " is above quant_max " << p.quant_max);
  if (int8_range) {
    KILN_CHECK(p.quant_min >= -128 && p.quant_max <= 127, who << ": quant_min/quant_max [" << p.quant_min
                                                              << ", " << p.quant_max
                                                              << "] exceed int8's range [-128, 127]");
  }
  KILN_CHECK(!p.per_channel || !layer.attrs.has("inv_scale"),
             who << ": inv_scale is for a per-tensor scale only");
  if (p.per_channel) {
    const int64_t c = x.dims[static_cast<size_t>(p.axis)];
    KILN_CHECK(c == kDynamic || c == count,
               who << ": " << count << " per-channel scales for axis " << p.axis << " of size " << c);
  }
}

std::vector<TensorDesc> infer_quantize(const Layer& layer, const std::vector<TensorDesc>& in) {
  KILN_CHECK(is_floating(in[0].dtype), describe(layer)
                                           << ": x must be floating, got " << dtype_name(in[0].dtype));
  check_params(layer, in, true);
  const bool e4m3 = quant_params(layer, in[0].dims.size(), 1).e4m3;
  return {{e4m3 ? DataType::kFloat8E4M3 : DataType::kInt8, in[0].dims}};
}

std::vector<TensorDesc> infer_dequantize(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const DataType want =
      quant_params(layer, in[0].dims.size(), 1).e4m3 ? DataType::kFloat8E4M3 : DataType::kInt8;
  KILN_CHECK(in[0].dtype == want,
             who << ": x must be " << dtype_name(want) << ", got " << dtype_name(in[0].dtype));
  check_params(layer, in, false);
  const DataType out =
      layer.attrs.has("dtype") ? parse_dtype(layer.attrs.get_string("dtype", who)) : DataType::kFloat32;
  KILN_CHECK(is_floating(out), who << ": dtype must be floating, got " << dtype_name(out));
  return {{out, in[0].dims}};
}

std::vector<TensorDesc> infer_fake_quantize(const Layer& layer, const std::vector<TensorDesc>& in) {
  KILN_CHECK(is_floating(in[0].dtype), describe(layer)
                                           << ": x must be floating, got " << dtype_name(in[0].dtype));
  check_params(layer, in, false);
  return {{in[0].dtype, in[0].dims}};
}

const std::vector<AttrSpec> kRangeAttributes = {
    {"axis", AttrType::kInt, AttrValue{int64_t{0}}, "per-channel scales: the axis of x they index"},
    {"quant_min", AttrType::kInt, AttrValue{int64_t{-128}}, "the smallest quantized value"},
    {"quant_max", AttrType::kInt, AttrValue{int64_t{127}}, "the largest quantized value"},
    {"inv_scale", AttrType::kFloat, std::nullopt,
     "per tensor: the multiplier of x (rounded to float32) instead of 1 / scale"},
    {"calibrated", AttrType::kInt, AttrValue{int64_t{0}},
     "0/1, set by calibration (kiln.Calibrator, BuilderConfig.int8_calibrator): the builder chose where to "
     "quantize, so it may quantize this tensor for its other readers too (a convolution's residual)"},
    {"format", AttrType::kString, AttrValue{std::string("int")},
     "int (integers in quant_min..quant_max) or e4m3 (float8 e4m3fn, per tensor)"},
};

std::vector<AttrSpec> fake_quantize_attributes() {
  std::vector<AttrSpec> a = kRangeAttributes;  // format last
  a.back() = {"format", AttrType::kString, AttrValue{std::string("int")},
              "int (integers in quant_min..quant_max), e4m3 (float8 e4m3fn, per tensor), or e5m2, "
              "e4m3fnuz, e5m2fnuz, e2m1 (narrow floats without an engine dtype)"};
  a.push_back({"saturate", AttrType::kInt, AttrValue{int64_t{1}},
               "narrow floats: overflow saturates to the largest finite value (1) or gives inf / NaN (0)"});
  return a;
}

const std::vector<AttrSpec> kDequantizeAttributes = {
    {"axis", AttrType::kInt, AttrValue{int64_t{0}}, "per-channel scales: the axis of x they index"},
    {"quant_min", AttrType::kInt, AttrValue{int64_t{-128}}, "checked only (torch's signature)"},
    {"quant_max", AttrType::kInt, AttrValue{int64_t{127}}, "checked only (torch's signature)"},
    {"dtype", AttrType::kString, AttrValue{std::string("float32")}, "the output dtype (floating)"},
    {"format", AttrType::kString, AttrValue{std::string("int")}, "int (x int8) or e4m3 (x float8_e4m3fn)"},
};

const SchemaRegistration kRegistered{
    {"quantize", 2, 3, infer_quantize, kRangeAttributes},
    {"dequantize", 2, 3, infer_dequantize, kDequantizeAttributes},
    {"fake_quantize", 2, 3, infer_fake_quantize, fake_quantize_attributes()},
};

}  // namespace

}  // namespace kiln
