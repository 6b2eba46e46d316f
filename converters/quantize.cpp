// Quantize / dequantize ops of exported graphs -> the quantize, dequantize and fake_quantize
// layers (ir/ops/quantize.cpp), with the scales and zero points the graph carries:
//   aten.fake_quantize_per_tensor_affine (.default, .tensor_qparams) and
//   aten.fake_quantize_per_channel_affine: torch's QAT fake quantization -> fake_quantize;
//   quantized_decomposed.quantize_per_tensor (.default, .tensor), quantize_per_channel -> quantize
//   (int8 results); quantized_decomposed.dequantize_per_tensor (.default, .tensor),
//   dequantize_per_channel -> dequantize: the pt2e flow's Q/DQ pairs;
//   kiln.fake_quantize_fp8 (kiln.compile's FP8 calibration) -> fake_quantize, format e4m3.
//   kiln.fake_quantize_int8 (kiln.compile's INT8 calibration) -> fake_quantize, calibrated.
// The layers compute as torch does, so a Q/DQ model's engine agrees with its eager fake-quant
// model. uint8 schemes (an X86 pt2e quantizer's activations) have no engine dtype: those nodes run
// in PyTorch.
#include <cmath>
#include <cstring>
#include <limits>

#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// A float32 constant of one value (scale) or an int64 one (zero point), 0-d.
TensorId scalar_f32(ConversionContext& ctx, const KNode& n, double v, const std::string& tag) {
  const float f = static_cast<float>(v);
  return ctx.net().add_constant(n.name + "/" + tag, DataType::kFloat32, {}, &f, sizeof f);
}

// A tensor argument as the layer's scale (float32) or zero point (int64).
TensorId scale_tensor(ConversionContext& ctx, const KNode& n, const std::string& name) {
  return cast_to(ctx, n, ctx.tensor(n, name), DataType::kFloat32, name + "_f32");
}
TensorId zero_point_tensor(ConversionContext& ctx, const KNode& n, const std::string& name) {
  return cast_to(ctx, n, ctx.tensor(n, name), DataType::kInt64, name + "_i64");
}

std::string check_range(const KNode& n, bool int8_result) {
  const int64_t lo = int_arg(n, "quant_min"), hi = int_arg(n, "quant_max");
  if (lo > hi) return "quant_min is above quant_max";
  if (int8_result && (lo < -128 || hi > 127)) return "quant_min/quant_max exceed int8's range";
  return "";
}

// "" when the dtype argument names int8 (the only quantized dtype engines have).
std::string int8_dtype(const KNode& n) {
  const Arg& d = n.arg("dtype");
  if (d.kind == Arg::Kind::kString && d.s == "int8") return "";
  return "only int8 quantization converts (got " + d.describe() + "; uint8 has no engine dtype)";
}

// A per-channel scale / zero point argument: a 1-D tensor of x.dims[axis] elements.
std::string per_channel_args(const KGraph& g, const KNode& n, const char* scale, const char* zp) {
  const KValue& x = value_arg(g, n, "input");
  const KValue& s = value_arg(g, n, scale);
  if (s.dims.size() != 1 || s.dims[0] == kDynamic) return std::string(scale) + " must be 1-D and static";
  const int64_t axis = wrap_axis(int_arg(n, "axis"), x.dims.size());
  if (axis < 0 || axis >= static_cast<int64_t>(x.dims.size())) return "axis is out of range";
  if (zp != nullptr && !n.arg(zp).is_none()) {
    const KValue& z = value_arg(g, n, zp);
    if (!is_integer(z.dtype)) return std::string(zp) + " must be an integer tensor";
    if (z.dims != s.dims) return std::string(zp) + " must match " + scale;
  }
  return "";
}

// A per-tensor scale and zero point given as [1] tensors (inputs 1 and 2) as 0-d ones.
void as_scalars(ConversionContext& ctx, const KNode& n, std::vector<TensorId>& in) {
  for (size_t k = 1; k < in.size(); ++k) {
    if (ctx.net().tensor(in[k]).dims.empty()) continue;
    Attributes scalar;
    scalar.set("shape", std::vector<int64_t>{});
    in[k] = ctx.add(n, "reshape", {in[k]}, scalar, k == 1 ? "scale_0d" : "zp_0d").outputs[0];
  }
}

// "" when a per-tensor scale and zero point are usable: constants, or (.tensor overloads) tensors.
std::string per_tensor_args(const KNode& n, bool tensor_args) {
  if (tensor_args || (n.arg("scale").is_number() && n.arg("zero_point").kind == Arg::Kind::kInt)) return "";
  return "scale and zero_point must be constants";
}

// Appends a per-tensor scale and zero point to `in` (0-d); returns the scale as torch's decomposed
// ops see it (a double: the number, or the float32 constant's value), or NaN when only known at
// run time.
double add_per_tensor_args(ConversionContext& ctx, const KNode& n, bool tensor_args,
                           std::vector<TensorId>& in) {
  if (!tensor_args) {
    const double scale = n.arg("scale").as_double();
    in.push_back(scalar_f32(ctx, n, scale, "scale"));
    in.push_back(ctx.constant_i64(n, {int_arg(n, "zero_point")}, {}, "zero_point"));
    return scale;
  }
  in.push_back(scale_tensor(ctx, n, "scale"));
  in.push_back(zero_point_tensor(ctx, n, "zero_point"));
  as_scalars(ctx, n, in);
  const KValue& s = ctx.graph().value(n.arg("scale").value);
  if (!s.is_constant() || s.dtype != DataType::kFloat32 || s.data->size() != sizeof(float))
    return std::numeric_limits<double>::quiet_NaN();
  float v;
  std::memcpy(&v, s.data->data(), sizeof v);
  return v;
}

Attributes range_attrs(const KNode& n, int64_t axis) {
  Attributes a;
  a.set("quant_min", int_arg(n, "quant_min")).set("quant_max", int_arg(n, "quant_max")).set("axis", axis);
  return a;
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  // fake_quantize_per_tensor_affine(self, scale: float, zero_point: int, quant_min, quant_max)
  Converter fq;
  fq.target = "aten.fake_quantize_per_tensor_affine.default";
  fq.capability = [](const KGraph& g, const KNode& n) -> std::string {
    std::string r = require_floating(value_arg(g, n, "self"), "self");
    if (!n.arg("scale").is_number() || n.arg("zero_point").kind != Arg::Kind::kInt)
      return "scale and zero_point must be constants";
    return r.empty() ? check_range(n, false) : r;
  };
  fq.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId scale = scalar_f32(ctx, n, n.arg("scale").as_double(), "scale");
    TensorId zp = ctx.constant_i64(n, {int_arg(n, "zero_point")}, {}, "zero_point");
    ctx.set_output(
        n, 0, ctx.add(n, "fake_quantize", {ctx.tensor(n, "self"), scale, zp}, range_attrs(n, 0)).outputs[0]);
  };
  fq.limits = "floating self; constant scale and zero point";
  register_converter(std::move(fq));

  // kiln.fake_quantize_int8(x, scale: float, quant_min, quant_max): kiln.compile's INT8
  // calibration (py/kiln/calibration.py) -> fake_quantize, zero point 0, marked calibrated (the
  // builder may quantize the tensor for its other readers too: quantize_int8_layers).
  Converter i8;
  i8.target = "kiln.fake_quantize_int8.default";
  i8.capability = [](const KGraph& g, const KNode& n) -> std::string {
    std::string r = require_floating(value_arg(g, n, "x"), "x");
    if (r.empty() && !n.arg("scale").is_number()) r = "scale must be a constant";
    return r.empty() ? check_range(n, false) : r;
  };
  i8.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId scale = scalar_f32(ctx, n, n.arg("scale").as_double(), "scale");
    TensorId zp = ctx.constant_i64(n, {0}, {}, "zero_point");
    Attributes a = range_attrs(n, 0);
    a.set("calibrated", int64_t{1});
    ctx.set_output(n, 0, ctx.add(n, "fake_quantize", {ctx.tensor(n, "x"), scale, zp}, a).outputs[0]);
  };
  i8.limits = "floating x; constant scale (INT8 per tensor, zero point 0)";
  register_converter(std::move(i8));

  // kiln.fake_quantize_fp8(x, scale: float, inv_scale: float): kiln.compile's FP8 calibration
  // (py/kiln/calibration.py) -> fake_quantize with format e4m3.
  Converter f8;
  f8.target = "kiln.fake_quantize_fp8.default";
  f8.capability = [](const KGraph& g, const KNode& n) -> std::string {
    std::string r = require_floating(value_arg(g, n, "x"), "x");
    if (r.empty() && (!n.arg("scale").is_number() || !n.arg("inv_scale").is_number()))
      r = "scale and inv_scale must be constants";
    return r;
  };
  f8.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId scale = scalar_f32(ctx, n, n.arg("scale").as_double(), "scale");
    Attributes a;
    a.set("format", std::string("e4m3")).set("inv_scale", n.arg("inv_scale").as_double());
    ctx.set_output(n, 0, ctx.add(n, "fake_quantize", {ctx.tensor(n, "x"), scale}, a).outputs[0]);
  };
  f8.limits = "floating x; constant scale (FP8 e4m3, per tensor)";
  register_converter(std::move(f8));

  // .tensor_qparams and per channel: scale / zero_point tensors.
  for (const bool per_channel : {false, true}) {
    Converter c;
    c.target = per_channel ? "aten.fake_quantize_per_channel_affine.default"
                           : "aten.fake_quantize_per_tensor_affine.tensor_qparams";
    c.capability = [per_channel](const KGraph& g, const KNode& n) -> std::string {
      const KValue& x = value_arg(g, n, "self");
      std::string r = require_floating(x, "self");
      if (!r.empty()) return r;
      const KValue& s = value_arg(g, n, "scale");
      const KValue& z = value_arg(g, n, "zero_point");
      if (!is_integer(z.dtype)) return "zero_point must be an integer tensor (a float one is not converted)";
      int64_t count = 1;
      for (int64_t d : s.dims) count = d == kDynamic ? -1 : count * d;
      if (s.dims.size() > 1 || count < 1) return "scale must be 0-d or 1-D and static";
      if (!per_channel && count != 1) return "a per-tensor scale holds one value";
      if (per_channel) {
        const int64_t axis = wrap_axis(int_arg(n, "axis"), x.dims.size());
        if (axis < 0 || axis >= static_cast<int64_t>(x.dims.size())) return "axis is out of range";
      }
      return check_range(n, false);
    };
    c.convert = [per_channel](ConversionContext& ctx, const KNode& n) {
      TensorId x = ctx.tensor(n, "self");
      const int64_t axis = per_channel ? wrap_axis(int_arg(n, "axis"), ctx.net().tensor(x).dims.size()) : 0;
      std::vector<TensorId> in = {x, scale_tensor(ctx, n, "scale"), zero_point_tensor(ctx, n, "zero_point")};
      if (!per_channel) as_scalars(ctx, n, in);
      ctx.set_output(n, 0, ctx.add(n, "fake_quantize", in, range_attrs(n, axis)).outputs[0]);
    };
    c.limits = per_channel ? "floating self; integer zero points"
                           : "floating self; one scale and integer zero point";
    register_converter(std::move(c));
  }

  // quantized_decomposed.quantize_per_tensor(input, scale, zero_point, quant_min, quant_max, dtype)
  for (const bool tensor_args : {false, true}) {
    Converter q;
    q.target = tensor_args ? "quantized_decomposed.quantize_per_tensor.tensor"
                           : "quantized_decomposed.quantize_per_tensor.default";
    q.capability = [tensor_args](const KGraph& g, const KNode& n) -> std::string {
      std::string r = require_floating(value_arg(g, n, "input"), "input");
      if (r.empty()) r = int8_dtype(n);
      if (r.empty()) r = per_tensor_args(n, tensor_args);
      return r.empty() ? check_range(n, true) : r;
    };
    q.convert = [tensor_args](ConversionContext& ctx, const KNode& n) {
      Attributes attrs = range_attrs(n, 0);
      std::vector<TensorId> in = {ctx.tensor(n, "input")};
      // torch multiplies by 1.0 / scale, a double rounded to float32 (known for a constant scale).
      const double scale = add_per_tensor_args(ctx, n, tensor_args, in);
      if (!std::isnan(scale)) attrs.set("inv_scale", static_cast<double>(static_cast<float>(1.0 / scale)));
      ctx.set_output(n, 0, ctx.add(n, "quantize", in, attrs).outputs[0]);
    };
    q.limits = tensor_args ? "int8; one scale and zero point" : "int8; constant scale and zero point";
    register_converter(std::move(q));
  }

  Converter qc;
  qc.target = "quantized_decomposed.quantize_per_channel.default";
  qc.capability = [](const KGraph& g, const KNode& n) -> std::string {
    std::string r = require_floating(value_arg(g, n, "input"), "input");
    if (r.empty()) r = int8_dtype(n);
    if (r.empty()) r = per_channel_args(g, n, "scales", "zero_points");
    return r.empty() ? check_range(n, true) : r;
  };
  qc.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "input");
    const int64_t axis = wrap_axis(int_arg(n, "axis"), ctx.net().tensor(x).dims.size());
    std::vector<TensorId> in = {x, scale_tensor(ctx, n, "scales"), zero_point_tensor(ctx, n, "zero_points")};
    ctx.set_output(n, 0, ctx.add(n, "quantize", in, range_attrs(n, axis)).outputs[0]);
  };
  qc.limits = "int8; 1-D static scales and integer zero points";
  register_converter(std::move(qc));

  // dequantize_per_tensor(input, scale, zero_point, quant_min, quant_max, dtype, out_dtype=None)
  for (const bool tensor_args : {false, true}) {
    Converter dq;
    dq.target = tensor_args ? "quantized_decomposed.dequantize_per_tensor.tensor"
                            : "quantized_decomposed.dequantize_per_tensor.default";
    dq.capability = [tensor_args](const KGraph& g, const KNode& n) -> std::string {
      if (value_arg(g, n, "input").dtype != DataType::kInt8) return "only int8 input converts";
      const std::string r = per_tensor_args(n, tensor_args);
      if (!r.empty()) return r;
      return is_floating(output_dtype(g, n)) ? "" : "the output must be floating";
    };
    dq.convert = [tensor_args](ConversionContext& ctx, const KNode& n) {
      std::vector<TensorId> in = {ctx.tensor(n, "input")};
      add_per_tensor_args(ctx, n, tensor_args, in);
      Attributes attrs = range_attrs(n, 0);
      attrs.set("dtype", std::string(dtype_name(output_dtype(ctx.graph(), n))));
      ctx.set_output(n, 0, ctx.add(n, "dequantize", in, attrs).outputs[0]);
    };
    dq.limits = "int8 input; float32 math, then the output dtype";
    register_converter(std::move(dq));
  }

  Converter dqc;
  dqc.target = "quantized_decomposed.dequantize_per_channel.default";
  dqc.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (value_arg(g, n, "input").dtype != DataType::kInt8) return "only int8 input converts";
    std::string r = per_channel_args(g, n, "scales", "zero_points");
    if (!r.empty()) return r;
    return is_floating(output_dtype(g, n)) ? "" : "the output must be floating";
  };
  dqc.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "input");
    const int64_t axis = wrap_axis(int_arg(n, "axis"), ctx.net().tensor(x).dims.size());
    std::vector<TensorId> in = {x, scale_tensor(ctx, n, "scales")};
    if (!n.arg("zero_points").is_none()) in.push_back(zero_point_tensor(ctx, n, "zero_points"));
    Attributes attrs = range_attrs(n, axis);
    attrs.set("dtype", std::string(dtype_name(output_dtype(ctx.graph(), n))));
    ctx.set_output(n, 0, ctx.add(n, "dequantize", in, attrs).outputs[0]);
  };
  dqc.limits = "int8 input; 1-D static scales, optional integer zero points";
  register_converter(std::move(dqc));
});

}  // namespace kiln
