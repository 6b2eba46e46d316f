// Normalizations. All take a floating x; statistics and math run in float32 (reference: double);
// the output has x's dtype and shape. Parameter inputs (scale/weight, bias, mean, var) share one
// dtype, x's or float32 (mixed precision keeps them in float32).
//
// softmax: exp(x - max) / sum(exp(x - max)) along `axis` (default -1); `log` (0/1) gives
//   log_softmax, (x - max) - log(sum(exp(x - max))).
// batch_norm (inference): x [N, C, ...], scale [C], bias [C], mean [C], var [C];
//   y = (x - mean[c]) / sqrt(var[c] + eps) * scale[c] + bias[c]; `eps` (default 1e-5).
// layer_norm: x [, weight [, bias]]; normalizes over the last `normalized_ndim` dims (default 1)
//   with the biased variance (torch); weight and bias have those dims' shape; `eps` (default 1e-5).
// group_norm: x [N, C, ...] [, weight [C] [, bias [C]]]; `num_groups` divides C; statistics per
//   (sample, group) over C/num_groups channels and all spatial positions; `eps` (default 1e-5).
// rms_norm: x [, weight]; y = x / sqrt(mean(x^2) + eps) * weight over the last `normalized_ndim`
//   dims (default 1); `eps` default 1e-6 (torch's default is finfo(dtype).eps: pass it explicitly).
// layer_norm and rms_norm may also write y's quantized copy (QuantizedCopy, normalization.h).
#include "ir/ops/normalization.h"

#include <cmath>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/reduce.h"

namespace kiln {
namespace {

void check_floating_input(const std::string& who, const TensorDesc& x) {
  KILN_CHECK(is_floating(x.dtype), who << ": x must be floating point, got " << dtype_name(x.dtype));
}

bool dims_match(int64_t a, int64_t b) { return a == b || a == kDynamic || b == kDynamic; }

void check_eps(const Layer& layer, double fallback) {
  double eps = layer.attrs.get_float("eps", fallback);
  KILN_CHECK(eps >= 0, describe(layer) << ": eps must be >= 0, got " << eps);
}

// Parameter inputs in[first..]: one dtype (x's or float32), each of shape `want`.
void check_params(const std::string& who, const std::vector<TensorDesc>& in, size_t first,
                  const std::vector<const char*>& names, const Dims& want) {
  for (size_t i = first; i < in.size(); ++i) {
    const char* name = names[i - first];
    DataType t = in[i].dtype;
    KILN_CHECK(
        t == in[0].dtype || t == DataType::kFloat32,
        who << ": " << name << " must be "
            << (in[0].dtype == DataType::kFloat32 ? "float32"
                                                  : std::string(dtype_name(in[0].dtype)) + " or float32")
            << ", got " << dtype_name(t));
    KILN_CHECK(t == in[first].dtype, who << ": " << name << " is " << dtype_name(t) << " but " << names[0]
                                         << " is " << dtype_name(in[first].dtype)
                                         << "; parameters share one dtype");
    bool ok = in[i].dims.size() == want.size();
    for (size_t d = 0; ok && d < want.size(); ++d) ok = dims_match(in[i].dims[d], want[d]);
    KILN_CHECK(ok, who << ": " << name << " has shape " << to_string(in[i].dims) << ", expected "
                       << to_string(want));
  }
}

int normalized_ndim(const Layer& layer, const TensorDesc& x) {
  int64_t k = layer.attrs.get_int("normalized_ndim", int64_t{1});
  int64_t rank = static_cast<int64_t>(x.dims.size());
  KILN_CHECK(k >= 1 && k <= rank, describe(layer) << ": normalized_ndim " << k << " must be in 1.." << rank
                                                  << " for x of shape " << to_string(x.dims));
  return static_cast<int>(k);
}

std::vector<TensorDesc> infer_softmax(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  check_floating_input(who, in[0]);
  resolve_axis(layer, static_cast<int>(in[0].dims.size()), -1);
  int64_t log = layer.attrs.get_int("log", int64_t{0});
  KILN_CHECK(log == 0 || log == 1, who << ": log must be 0 or 1, got " << log);
  return {{in[0].dtype, in[0].dims}};
}

std::vector<TensorDesc> infer_batch_norm(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& x = in[0];
  check_floating_input(who, x);
  KILN_CHECK(x.dims.size() >= 2, who << ": x must be [N, C, ...], got " << to_string(x.dims));
  check_params(who, in, 1, {"scale", "bias", "mean", "var"}, {x.dims[1]});
  check_eps(layer, kDefaultNormEps);
  return {{x.dtype, x.dims}};
}

// y, and its quantized copy when the layer has one.
std::vector<TensorDesc> with_copy(const Layer& layer, const TensorDesc& x) {
  const QuantizedCopy c = quantized_copy(layer);
  if (!c.on) return {{x.dtype, x.dims}};
  return {{x.dtype, x.dims}, {c.e4m3 ? DataType::kFloat8E4M3 : DataType::kInt8, x.dims}};
}

std::vector<TensorDesc> infer_layer_norm(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& x = in[0];
  check_floating_input(who, x);
  int k = normalized_ndim(layer, x);
  check_params(who, in, 1, {"weight", "bias"}, Dims(x.dims.end() - k, x.dims.end()));
  check_eps(layer, kDefaultNormEps);
  return with_copy(layer, x);
}

std::vector<TensorDesc> infer_group_norm(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& x = in[0];
  check_floating_input(who, x);
  KILN_CHECK(x.dims.size() >= 2, who << ": x must be [N, C, ...], got " << to_string(x.dims));
  int64_t groups = layer.attrs.get_int("num_groups", who);
  KILN_CHECK(groups >= 1, who << ": num_groups must be >= 1, got " << groups);
  int64_t c = x.dims[1];
  // (0 channels would take any num_groups, and N x num_groups rows overflow.)
  KILN_CHECK(c == kDynamic || (c >= 1 && c % groups == 0), who << ": num_groups " << groups
                                                               << " does not divide the " << c
                                                               << " channels of x " << to_string(x.dims));
  check_params(who, in, 1, {"weight", "bias"}, {c});
  check_eps(layer, kDefaultNormEps);
  return {{x.dtype, x.dims}};
}

std::vector<TensorDesc> infer_rms_norm(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& x = in[0];
  check_floating_input(who, x);
  int k = normalized_ndim(layer, x);
  check_params(who, in, 1, {"weight"}, Dims(x.dims.end() - k, x.dims.end()));
  check_eps(layer, kDefaultRmsNormEps);
  return with_copy(layer, x);
}

}  // namespace

QuantizedCopy quantized_copy(const Layer& layer) {
  QuantizedCopy c;
  if (!layer.attrs.has("quantized_copy")) return c;
  const std::string who = describe(layer);
  const std::string format = layer.attrs.get_string("quantized_copy", who);
  KILN_CHECK(format == "int8" || format == "e4m3",
             who << ": quantized_copy must be int8 or e4m3, got '" << format << "'");
  c.on = true;
  c.e4m3 = format == "e4m3";
  c.inv_scale = static_cast<float>(layer.attrs.get_float("copy_inv_scale", who));
  KILN_CHECK(c.inv_scale > 0.f && std::isfinite(c.inv_scale),
             who << ": copy_inv_scale must be positive and finite, got " << c.inv_scale);
  c.lo = layer.attrs.get_int("copy_quant_min", int64_t{-128});
  c.hi = layer.attrs.get_int("copy_quant_max", int64_t{127});
  KILN_CHECK(-128 <= c.lo && c.lo <= c.hi && c.hi <= 127, who << ": copy_quant_min/max [" << c.lo << ", "
                                                              << c.hi
                                                              << "] must be ordered inside [-128, 127]");
  return c;
}

namespace {

const std::vector<AttrSpec> kSoftmaxAttributes = {
    {"axis", AttrType::kInt, AttrValue{int64_t{-1}}, "the softmax axis, negative counts from the end"},
    {"log", AttrType::kInt, AttrValue{int64_t{0}}, "0/1: 1 gives log_softmax"},
};

const std::vector<AttrSpec> kBatchNormAttributes = {
    {"eps", AttrType::kFloat, AttrValue{kDefaultNormEps}, "added to var, >= 0"},
};

// The quantized copy's attributes (QuantizedCopy), set by the builder.
const std::vector<AttrSpec> kCopyAttributes = {
    {"quantized_copy", AttrType::kString, std::nullopt,
     "set by the builder (fold_quantize_copies): int8 or e4m3, a second output holding y quantized per "
     "tensor (a quantize layer folded in)"},
    {"copy_inv_scale", AttrType::kFloat, std::nullopt, "with quantized_copy: 1 / the quantize's scale"},
    {"copy_quant_min", AttrType::kInt, AttrValue{int64_t{-128}}, "with quantized_copy int8: its range"},
    {"copy_quant_max", AttrType::kInt, AttrValue{int64_t{127}}, "with quantized_copy int8: its range"},
};

std::vector<AttrSpec> with_copy_attributes(std::vector<AttrSpec> attrs) {
  attrs.insert(attrs.end(), kCopyAttributes.begin(), kCopyAttributes.end());
  return attrs;
}

const std::vector<AttrSpec> kLayerNormAttributes = with_copy_attributes({
    {"normalized_ndim", AttrType::kInt, AttrValue{int64_t{1}}, "normalize over the last k dims"},
    {"eps", AttrType::kFloat, AttrValue{kDefaultNormEps}, "added to the variance, >= 0"},
});

const std::vector<AttrSpec> kGroupNormAttributes = {
    {"num_groups", AttrType::kInt, std::nullopt, "required: divides C"},
    {"eps", AttrType::kFloat, AttrValue{kDefaultNormEps}, "added to the variance, >= 0"},
};

const std::vector<AttrSpec> kRmsNormAttributes = with_copy_attributes({
    {"normalized_ndim", AttrType::kInt, AttrValue{int64_t{1}}, "normalize over the last k dims"},
    {"eps", AttrType::kFloat, AttrValue{kDefaultRmsNormEps},
     "added to mean(x^2), >= 0 (not torch's finfo(dtype).eps: converters pass that explicitly)"},
});

const SchemaRegistration kRegistered{
    {"softmax", 1, 1, infer_softmax, kSoftmaxAttributes},
    {"batch_norm", 5, 5, infer_batch_norm, kBatchNormAttributes},
    {"layer_norm", 1, 3, infer_layer_norm, kLayerNormAttributes},
    {"group_norm", 1, 3, infer_group_norm, kGroupNormAttributes},
    {"rms_norm", 1, 2, infer_rms_norm, kRmsNormAttributes},
};

}  // namespace

}  // namespace kiln
