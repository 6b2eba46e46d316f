// convolution: y = conv(x, weight) + bias, torch's Conv1d/2d/3d. x [N, C, spatial...], weight
// [K, C/groups, kernel...], optional bias [K]; y [N, K, out...].
// deconvolution: transposed convolution, torch's ConvTranspose1d/2d/3d. x [N, C, spatial...],
// weight [C, K/groups, kernel...], optional bias [K]; y [N, K, out...].
// N and spatial dims may be dynamic; C and the weight's dims must be static.
// Both take a fused epilogue (see ConvEpilogue): y = act(conv(x) + bias + residual), with the
// residual as an optional last input; `fused` (a string, informational) lists the layers the
// builder folded into this one.
#include "ir/ops/convolution.h"

#include <algorithm>
#include <cmath>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/activation.h"

namespace kiln {

std::vector<int64_t> spatial_ints(const Layer& layer, const char* name, int spatial, int64_t fallback) {
  if (!layer.attrs.has(name)) return std::vector<int64_t>(spatial, fallback);
  std::vector<int64_t> v = layer.attrs.get_ints(name, describe(layer));
  KILN_CHECK(static_cast<int>(v.size()) == spatial,
             describe(layer) << ": attribute '" << name << "' needs " << spatial
                             << " value(s), one per spatial dim, got " << to_string(v));
  // Window geometry is int32 in the kernels, and the bound keeps shape inference's products of
  // two of these (dilation x kernel) inside int64.
  for (int64_t x : v) {
    KILN_CHECK(x > -kMaxGeometry && x < kMaxGeometry,
               describe(layer) << ": attribute '" << name << "' value " << x << " is out of range");
  }
  return v;
}

ConvGeometry conv_geometry(const Layer& layer, int spatial) {
  const std::string who = describe(layer);
  ConvGeometry g;
  g.spatial = spatial;
  g.strides = spatial_ints(layer, "strides", spatial, 1);
  g.pads = spatial_ints(layer, "pads", spatial, 0);
  g.dilations = spatial_ints(layer, "dilations", spatial, 1);
  g.output_padding = layer.op == "deconvolution" ? spatial_ints(layer, "output_padding", spatial, 0)
                                                 : std::vector<int64_t>(spatial, 0);
  g.groups = layer.attrs.get_int("groups", int64_t{1});
  KILN_CHECK(g.groups >= 1 && g.groups < kMaxGeometry, who << ": groups must be >= 1, got " << g.groups);
  for (int i = 0; i < spatial; ++i) {
    KILN_CHECK(g.strides[i] >= 1, who << ": strides must be >= 1, got " << to_string(g.strides));
    KILN_CHECK(g.pads[i] >= 0, who << ": pads must be >= 0, got " << to_string(g.pads));
    KILN_CHECK(g.dilations[i] >= 1, who << ": dilations must be >= 1, got " << to_string(g.dilations));
    // Stricter than torch (which allows output_padding < max(stride, dilation)): with
    // output_padding < stride the layer is exactly the gradient of a convolution, which is what
    // cuDNN computes.
    KILN_CHECK(g.output_padding[i] >= 0 && g.output_padding[i] < g.strides[i],
               who << ": output_padding must be >= 0 and smaller than the stride, got output_padding "
                   << to_string(g.output_padding) << " with strides " << to_string(g.strides));
  }
  return g;
}

int64_t conv_output_dim(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dilation) {
  if (in == kDynamic) return kDynamic;
  int64_t span = in + 2 * pad - dilation * (k - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

int64_t deconv_output_dim(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dilation,
                          int64_t output_padding) {
  if (in == kDynamic) return kDynamic;
  // In 128 bits: `in` may be any dim up to 2^62 and the geometry up to kMaxGeometry.
  const __int128 o = static_cast<__int128>(in - 1) * stride - 2 * static_cast<__int128>(pad) +
                     static_cast<__int128>(dilation) * (k - 1) + output_padding + 1;
  KILN_CHECK(o <= (int64_t{1} << 62),
             "deconvolution: the output size overflows (input size " << in << ", stride " << stride << ")");
  return static_cast<int64_t>(o);
}

ConvEpilogue conv_epilogue(const Layer& layer, size_t num_inputs) {
  const std::string who = describe(layer);
  ConvEpilogue e;
  if (layer.attrs.has("activation")) e.activation = layer.attrs.get_string("activation", who);
  const auto& types = activation_types();
  KILN_CHECK(e.activation == "none" || std::find(types.begin(), types.end(), e.activation) != types.end(),
             who << ": unknown activation '" << e.activation << "' (use none or an activation op type)");
  const ActivationAttrs act = activation_attrs(e.activation, layer.attrs, "activation_");
  e.alpha = act.alpha;
  e.beta = act.beta;
  e.threshold = act.threshold;
  if (e.activation == "clip") {
    KILN_CHECK(e.alpha <= e.beta, who << ": clip needs activation_alpha (min) <= activation_beta (max)");
  }
  if (e.activation == "softplus") {
    KILN_CHECK(e.beta != 0.0, who << ": softplus activation_beta must not be 0");
  }
  const int64_t residual = layer.attrs.get_int("residual", int64_t{0});
  KILN_CHECK(residual == 0 || residual == 1, who << ": residual must be 0 or 1, got " << residual);
  e.residual = residual == 1;
  KILN_CHECK(!e.residual || num_inputs >= 3,
             who << ": residual = 1 needs the residual as the last input (x, weight, [bias], residual)");
  KILN_CHECK(e.residual || num_inputs <= 3,
             who << ": a fourth input is only accepted as the residual; set residual = 1");
  e.has_bias = num_inputs == 4 || (num_inputs == 3 && !e.residual);
  e.residual_input = e.residual ? static_cast<int>(num_inputs) - 1 : -1;
  return e;
}

bool conv_quantized(const Layer& layer) {
  const int64_t q = layer.attrs.get_int("quantized", int64_t{0});
  KILN_CHECK(q == 0 || q == 1, describe(layer) << ": quantized must be 0 or 1, got " << q);
  return q == 1;
}

DataType conv_out_dtype(const Layer& layer) {
  const std::string who = describe(layer);
  const DataType t = parse_dtype(layer.attrs.get_string("out_dtype", who));
  KILN_CHECK(t == DataType::kFloat32 || t == DataType::kFloat16 || t == DataType::kBFloat16,
             who << ": out_dtype must be float32, float16 or bfloat16, got " << dtype_name(t));
  return t;
}

bool channels_last(const Layer& layer) {
  if (!layer.attrs.has("layout")) return false;
  const std::string layout = layer.attrs.get_string("layout", describe(layer));
  KILN_CHECK(layout == "nchw" || layout == "nhwc",
             describe(layer) << ": layout must be nchw or nhwc, got '" << layout << "'");
  KILN_CHECK(layout == "nchw" || layer.op == "convolution" || layer.op == "pooling" ||
                 layer.op == "adaptive_pooling",
             describe(layer) << ": only convolution and pooling take layout nhwc");
  return layout == "nhwc";
}

Dims channels_first_dims(const Dims& d) {
  if (d.size() < 3) return d;
  Dims r = {d[0], d.back()};
  r.insert(r.end(), d.begin() + 1, d.end() - 1);
  return r;
}

Dims channels_last_dims(const Dims& d) {
  if (d.size() < 3) return d;
  Dims r = {d[0]};
  r.insert(r.end(), d.begin() + 2, d.end());
  r.push_back(d[1]);
  return r;
}

namespace {

std::vector<TensorDesc> infer_conv_channels_first(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const bool transposed = layer.op == "deconvolution";
  const TensorDesc &x = in[0], &w = in[1];
  const int rank = static_cast<int>(x.dims.size());
  KILN_CHECK(rank >= 3 && rank <= 5,
             who << ": input must be [N, C, spatial...] with 1 to 3 spatial dims, got " << to_string(x.dims));
  const bool quantized = conv_quantized(layer);
  if (quantized) {
    KILN_CHECK(!transposed, who << ": quantized = 1 is for convolution only");
    KILN_CHECK(x.dtype == DataType::kInt8 && w.dtype == DataType::kInt8,
               who << ": a quantized convolution takes int8 input and weight, got " << dtype_name(x.dtype)
                   << " and " << dtype_name(w.dtype));
  } else {
    KILN_CHECK(is_floating(x.dtype), who << ": input must be floating point, got " << dtype_name(x.dtype));
    KILN_CHECK(w.dtype == x.dtype, who << ": weight dtype " << dtype_name(w.dtype)
                                       << " differs from input dtype " << dtype_name(x.dtype)
                                       << "; insert a cast");
  }
  // The dtype of the bias and the residual, and of y unless the layer requantizes it to int8.
  const DataType y_dtype = quantized ? conv_out_dtype(layer) : x.dtype;
  const bool requantized = layer.attrs.has("output_inv_scale");
  KILN_CHECK(!requantized || quantized, who << ": output_inv_scale needs quantized = 1");
  const int64_t int8_copy = layer.attrs.get_int("int8_copy", int64_t{0});
  KILN_CHECK(int8_copy == 0 || int8_copy == 1, who << ": int8_copy must be 0 or 1, got " << int8_copy);
  KILN_CHECK(!int8_copy || requantized, who << ": int8_copy = 1 needs output_inv_scale");
  if (requantized) {
    const int64_t lo = layer.attrs.get_int("output_quant_min", int64_t{-128});
    const int64_t hi = layer.attrs.get_int("output_quant_max", int64_t{127});
    KILN_CHECK(-128 <= lo && lo <= hi && hi <= 127, who << ": output_quant_min/max [" << lo << ", " << hi
                                                        << "] must be ordered inside [-128, 127]");
  }
  KILN_CHECK(static_cast<int>(w.dims.size()) == rank,
             who << ": weight must have rank " << rank << " like the input, got " << to_string(w.dims));
  KILN_CHECK(is_static(w.dims), who << ": weight shape must be static, got " << to_string(w.dims));
  const int64_t c = x.dims[1];
  KILN_CHECK(c != kDynamic, who << ": the channel dim of input " << to_string(x.dims)
                                << " must be static (only batch and spatial dims may be dynamic)");
  KILN_CHECK(c >= 1, who << ": input needs at least one channel, got " << to_string(x.dims));
  ConvGeometry g = conv_geometry(layer, rank - 2);
  KILN_CHECK(c % g.groups == 0, who << ": groups " << g.groups << " must divide the input channels " << c);
  int64_t k;  // output channels
  if (transposed) {
    KILN_CHECK(w.dims[0] == c, who << ": weight " << to_string(w.dims)
                                   << " must be [C, K/groups, kernel...] with C = " << c
                                   << " input channels");
    KILN_CHECK(w.dims[1] <= (int64_t{1} << 62) / g.groups,
               who << ": weight " << to_string(w.dims) << " with groups " << g.groups << " is too large");
    k = w.dims[1] * g.groups;
  } else {
    k = w.dims[0];
    KILN_CHECK(k % g.groups == 0, who << ": groups " << g.groups << " must divide the output channels " << k
                                      << " (weight " << to_string(w.dims) << ")");
    KILN_CHECK(w.dims[1] == c / g.groups,
               who << ": weight " << to_string(w.dims) << " must be [K, C/groups, kernel...] with C/groups = "
                   << c / g.groups << " (input channels " << c << ", groups " << g.groups << ")");
  }
  KILN_CHECK(k >= 1, who << ": weight " << to_string(w.dims) << " gives no output channels");
  const ConvEpilogue epilogue = conv_epilogue(layer, in.size());
  if (quantized) {
    KILN_CHECK(epilogue.has_bias,
               who << ": a quantized convolution needs its per-channel scale and bias as input 2");
    const TensorDesc& b = in[2];
    KILN_CHECK(b.dtype == DataType::kFloat32 && b.dims == (Dims{2, k}),
               who << ": input 2 of a quantized convolution must be float32 [2, " << k
                   << "] (per-channel scale, bias), got " << dtype_name(b.dtype) << " " << to_string(b.dims));
  } else if (epilogue.has_bias) {
    const TensorDesc& b = in[2];
    KILN_CHECK(b.dtype == x.dtype, who << ": bias dtype " << dtype_name(b.dtype)
                                       << " differs from input dtype " << dtype_name(x.dtype));
    KILN_CHECK(b.dims == Dims{k}, who << ": bias must be [" << k << "], got " << to_string(b.dims));
  }
  int64_t allow_tf32 = layer.attrs.get_int("allow_tf32", int64_t{0});
  KILN_CHECK(allow_tf32 == 0 || allow_tf32 == 1, who << ": allow_tf32 must be 0 or 1");

  Dims out = {x.dims[0], k};
  for (int i = 0; i < g.spatial; ++i) {
    const int64_t size = x.dims[2 + i], kernel = w.dims[2 + i];
    KILN_CHECK(kernel >= 1 && kernel < kMaxGeometry,
               who << ": kernel dims must be >= 1 and < 2^31, weight is " << to_string(w.dims));
    if (transposed) {
      KILN_CHECK(size == kDynamic || size >= 1,
                 who << ": input " << to_string(x.dims) << " has an empty spatial dim");
      int64_t o =
          deconv_output_dim(size, kernel, g.strides[i], g.pads[i], g.dilations[i], g.output_padding[i]);
      KILN_CHECK(o == kDynamic || o >= 1, who << ": output size along spatial dim " << i << " would be " << o
                                              << " for input " << to_string(x.dims) << "; reduce pads");
      out.push_back(o);
    } else {
      const int64_t extent = g.dilations[i] * (kernel - 1) + 1;
      KILN_CHECK(size == kDynamic || size + 2 * g.pads[i] >= extent,
                 who << ": kernel extent " << extent << " (kernel " << kernel << ", dilation "
                     << g.dilations[i] << ") is larger than the padded input (" << size << " + 2*"
                     << g.pads[i] << ") along spatial dim " << i << " of input " << to_string(x.dims));
      out.push_back(conv_output_dim(size, kernel, g.strides[i], g.pads[i], g.dilations[i]));
    }
  }
  const bool int8_residual = layer.attrs.has("residual_scale");
  if (int8_residual) {
    const double rs = layer.attrs.get_float("residual_scale", layer.name);
    KILN_CHECK(quantized && epilogue.residual, who << ": residual_scale needs quantized = 1 and a residual");
    KILN_CHECK(rs > 0 && std::isfinite(rs), who << ": residual_scale must be a positive number, got " << rs);
  }
  if (epilogue.residual) {
    const TensorDesc& r = in[static_cast<size_t>(epilogue.residual_input)];
    const DataType r_dtype = int8_residual ? DataType::kInt8 : y_dtype;
    KILN_CHECK(r.dtype == r_dtype, who << ": residual dtype " << dtype_name(r.dtype) << " must be "
                                       << dtype_name(r_dtype)
                                       << (int8_residual ? " (residual_scale is set)" : " (the output's)"));
    bool same = r.dims.size() == out.size();
    for (size_t i = 0; same && i < out.size(); ++i) {
      same = r.dims[i] == out[i] || r.dims[i] == kDynamic || out[i] == kDynamic;
    }
    KILN_CHECK(same, who << ": residual " << to_string(r.dims) << " must have the output's shape "
                         << to_string(out) << " (no broadcasting)");
  }
  if (int8_copy) return {{y_dtype, out}, {DataType::kInt8, out}};
  return {{requantized ? DataType::kInt8 : y_dtype, out}};
}

std::vector<TensorDesc> infer_conv(const Layer& layer, const std::vector<TensorDesc>& in) {
  if (!channels_last(layer)) return infer_conv_channels_first(layer, in);
  // Validate and infer in the canonical order; the bias keeps its shape.
  std::vector<TensorDesc> canonical = in;
  const ConvEpilogue e = conv_epilogue(layer, in.size());
  canonical[0].dims = channels_first_dims(in[0].dims);
  canonical[1].dims = channels_first_dims(in[1].dims);
  if (e.residual) canonical[e.residual_input].dims = channels_first_dims(in[e.residual_input].dims);
  std::vector<TensorDesc> out = infer_conv_channels_first(layer, canonical);
  for (TensorDesc& o : out) o.dims = channels_last_dims(o.dims);
  return out;
}

}  // namespace

namespace {

// The attributes of convolution, or of deconvolution (`transposed`): geometry (conv_geometry),
// precision, the fused epilogue (conv_epilogue) and what the builder records.
std::vector<AttrSpec> conv_attributes(bool transposed) {
  const ActivationAttrs act;  // the activation op's defaults
  std::vector<AttrSpec> attrs = {
      {"strides", AttrType::kInts, std::nullopt, "one per spatial dim, >= 1; absent: 1 for every dim"},
      {"pads", AttrType::kInts, std::nullopt,
       "symmetric, one per spatial dim, >= 0; absent: 0 for every dim"},
      {"dilations", AttrType::kInts, std::nullopt, "one per spatial dim, >= 1; absent: 1 for every dim"},
  };
  if (transposed) {
    attrs.push_back({"output_padding", AttrType::kInts, std::nullopt,
                     "one per spatial dim, 0 <= value < stride; absent: 0 for every dim"});
  }
  std::vector<AttrSpec> rest = {
      {"groups", AttrType::kInt, AttrValue{int64_t{1}}, "divides C and K"},
      {"allow_tf32", AttrType::kInt, AttrValue{int64_t{0}},
       "0/1: float32 may use TF32 tensor cores (assign_precision sets it from BuilderConfig's TF32 flag)"},
      {"activation", AttrType::kString, AttrValue{std::string("none")},
       "fused epilogue: none or an activation type of the activation op (fuse_conv_epilogue sets it)"},
      {"activation_alpha", AttrType::kFloat, std::nullopt,
       "the epilogue activation's alpha; absent: depends on `activation` (default_activation_alpha)"},
      {"activation_beta", AttrType::kFloat, AttrValue{act.beta}, "the epilogue activation's beta"},
      {"activation_threshold", AttrType::kFloat, AttrValue{act.threshold},
       "the epilogue activation's threshold"},
      {"residual", AttrType::kInt, AttrValue{int64_t{0}},
       "0/1: the last input is added before the activation (fuse_conv_epilogue sets it)"},
      transposed ? AttrSpec{"layout", AttrType::kString, AttrValue{std::string("nchw")},
                            "nchw only (nhwc is refused for deconvolution)"}
                 : AttrSpec{"layout", AttrType::kString, AttrValue{std::string("nchw")},
                            "set by the builder (assign_layouts): nchw, or nhwc (x, weight, residual and y "
                            "channels last)"},
      {"tactic", AttrType::kInt, AttrValue{int64_t{-1}},
       transposed ? "set by the builder (choose_tactics): the cuDNN algorithm, -1 the heuristic's"
                  : "set by the builder (choose_tactics): 0-7 a cuDNN algorithm, 8 the depthwise kernel, -1 "
                    "the heuristic's"},
      {"fused", AttrType::kString, std::nullopt,
       "set by the builder (fuse_conv_epilogue, fold_batch_norm): the original layer names, informational; "
       "absent: the layer's own name"},
  };
  if (!transposed) {
    attrs.push_back({"model_taps", AttrType::kInt, std::nullopt,
                     "set by the builder where it pads the kernel with zeros (space_to_depth_stems, channel "
                     "padding for tensor cores): the products per output element of the model's own layer, "
                     "which the cost model counts (kiln inspect, the roofline) instead of the weight's"});
    std::vector<AttrSpec> quantized = {
        {"quantized", AttrType::kInt, AttrValue{int64_t{0}},
         "0/1, set by the builder (quantize_int8_layers): x and weight int8, input 2 float32 [2, K] "
         "(per-channel scale = input scale x weight scale, then bias), y = act(scale * int32 sum + bias + "
         "residual) of out_dtype"},
        {"out_dtype", AttrType::kString, std::nullopt, "quantized: float32, float16 or bfloat16"},
        {"input_scale", AttrType::kFloat, std::nullopt, "quantized, informational: x's scale (kiln inspect)"},
        {"output_inv_scale", AttrType::kFloat, std::nullopt,
         "quantized, set by quantize_int8_layers: y is int8, clamp(round(v * output_inv_scale)) of the "
         "epilogue's value v rounded to out_dtype (a quantize layer folded in)"},
        {"output_quant_min", AttrType::kInt, AttrValue{int64_t{-128}}, "with output_inv_scale: y's range"},
        {"output_quant_max", AttrType::kInt, AttrValue{int64_t{127}}, "with output_inv_scale: y's range"},
        {"int8_copy", AttrType::kInt, AttrValue{int64_t{0}},
         "0/1, with output_inv_scale, set by quantize_int8_layers: y stays out_dtype and a second "
         "output holds its int8 quantization (a quantize layer folded in where y has other readers too)"},
        {"residual_scale", AttrType::kFloat, std::nullopt,
         "quantized, set by quantize_int8_layers in calibrated builds: the residual is int8 and adds "
         "residual * residual_scale (the calibrated quantization of a tensor the layer adds)"},
    };
    rest.insert(rest.end(), quantized.begin(), quantized.end());
  }
  attrs.insert(attrs.end(), rest.begin(), rest.end());
  return attrs;
}

const std::vector<AttrSpec> kConvolutionAttributes = conv_attributes(/*transposed=*/false);
const std::vector<AttrSpec> kDeconvolutionAttributes = conv_attributes(/*transposed=*/true);

// A convolution: 2 * (C / groups * kernel volume) per output element, the weight's volume over
// its first dim (output channels) in either layout, or `model_taps` where the builder padded it. A
// deconvolution: as many per input element (its weight's first dim is the input channels).
double conv_flops(const Layer& l, const std::vector<TensorDesc>& in, const std::vector<TensorDesc>& out) {
  const Dims& w = in[1].dims;
  if (w.empty() || w[0] <= 0) return 0.0;
  const int64_t taps = l.attrs.get_int("model_taps", volume(w) / w[0]);  // the zero-padded taps left out
  return 2.0 * static_cast<double>(volume(out[0].dims)) * static_cast<double>(taps);
}

double deconv_flops(const Layer&, const std::vector<TensorDesc>& in, const std::vector<TensorDesc>&) {
  const Dims& w = in[1].dims;
  if (w.empty() || w[0] <= 0) return 0.0;
  return 2.0 * static_cast<double>(volume(in[0].dims)) * static_cast<double>(volume(w) / w[0]);
}

const SchemaRegistration kRegistered{
    {"convolution", 2, 4, infer_conv, kConvolutionAttributes, kTf32Capable, conv_flops},
    {"deconvolution", 2, 4, infer_conv, kDeconvolutionAttributes, kTf32Capable, deconv_flops},
};

}  // namespace

}  // namespace kiln
