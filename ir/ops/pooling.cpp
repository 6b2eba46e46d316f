// pooling: torch's max_pool{1,2,3}d / avg_pool{1,2,3}d. x [N, C, spatial...] -> [N, C, out...].
// Attributes: `type` (max, avg), `kernel` (required), `strides` (default = kernel), `pads`
// (symmetric, at most half the kernel), `dilations` (max only), `ceil_mode`, `count_include_pad`
// (avg, default 1), `divisor_override` (avg, > 0).
// adaptive_pooling: torch's adaptive_{max,avg}_pool{1,2,3}d. Attributes `type`, `output_size`;
// output i of a dim of size `in` covers [floor(i*in/out), ceil((i+1)*in/out)).
// Both accept `layout` (nchw, or nhwc: x and y stored channels last, see channels_last()).
#include "ir/ops/pooling.h"

#include <algorithm>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/convolution.h"

namespace kiln {

const std::vector<std::string>& pooling_types() {
  static const std::vector<std::string> types = {"max", "avg"};
  return types;
}

namespace {

int pool_type(const Layer& layer) {
  const std::string who = describe(layer);
  std::string type = layer.attrs.get_string("type", who);
  const auto& types = pooling_types();
  auto it = std::find(types.begin(), types.end(), type);
  KILN_CHECK(it != types.end(), who << ": unknown pooling type '" << type << "' (use max or avg)");
  return static_cast<int>(it - types.begin());
}

bool flag(const Layer& layer, const char* name, int64_t fallback) {
  int64_t v = layer.attrs.get_int(name, fallback);
  KILN_CHECK(v == 0 || v == 1, describe(layer) << ": " << name << " must be 0 or 1, got " << v);
  return v != 0;
}

}  // namespace

int adaptive_pool_type(const Layer& layer) { return pool_type(layer); }

PoolGeometry pool_geometry(const Layer& layer, int spatial) {
  const std::string who = describe(layer);
  PoolGeometry g;
  g.type = pool_type(layer);
  g.spatial = spatial;
  KILN_CHECK(layer.attrs.has("kernel"), who << ": missing attribute 'kernel' (window size per spatial dim)");
  g.kernel = spatial_ints(layer, "kernel", spatial, 1);
  g.strides = layer.attrs.has("strides") ? spatial_ints(layer, "strides", spatial, 1) : g.kernel;
  g.pads = spatial_ints(layer, "pads", spatial, 0);
  g.dilations = spatial_ints(layer, "dilations", spatial, 1);
  g.ceil_mode = flag(layer, "ceil_mode", 0);
  g.count_include_pad = flag(layer, "count_include_pad", 1);
  g.divisor_override = layer.attrs.get_int("divisor_override", int64_t{0});
  if (layer.attrs.has("divisor_override")) {
    KILN_CHECK(g.divisor_override > 0, who << ": divisor_override must be > 0, got " << g.divisor_override);
    KILN_CHECK(g.type == kPoolAvg, who << ": divisor_override applies to avg pooling only");
  }
  for (int i = 0; i < spatial; ++i) {
    KILN_CHECK(g.kernel[i] >= 1, who << ": kernel must be >= 1, got " << to_string(g.kernel));
    KILN_CHECK(g.strides[i] >= 1, who << ": strides must be >= 1, got " << to_string(g.strides));
    KILN_CHECK(g.dilations[i] >= 1, who << ": dilations must be >= 1, got " << to_string(g.dilations));
    KILN_CHECK(g.pads[i] >= 0 && 2 * g.pads[i] <= g.kernel[i],
               who << ": pads must be >= 0 and at most half the kernel, got pads " << to_string(g.pads)
                   << " with kernel " << to_string(g.kernel));
    KILN_CHECK(g.type == kPoolMax || g.dilations[i] == 1,
               who << ": dilations apply to max pooling only, got " << to_string(g.dilations));
  }
  return g;
}

int64_t pool_output_dim(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation,
                        bool ceil_mode) {
  if (in == kDynamic) return kDynamic;
  int64_t num = in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out =
      (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;  // floor division, like torch
  if (out < 0) return 0;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

namespace {

std::vector<TensorDesc> infer_pooling_channels_first(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& x = in[0];
  const int rank = static_cast<int>(x.dims.size());
  KILN_CHECK(rank >= 3 && rank <= 5,
             who << ": input must be [N, C, spatial...] with 1 to 3 spatial dims, got " << to_string(x.dims));
  PoolGeometry g = pool_geometry(layer, rank - 2);
  // int8 max pooling: quantize_int8_layers pools a quantized tensor (max commutes with it).
  KILN_CHECK(is_floating(x.dtype) || (x.dtype == DataType::kInt8 && g.type == kPoolMax),
             who << ": input must be floating point (int8 for max pooling), got " << dtype_name(x.dtype));
  Dims out = {x.dims[0], x.dims[1]};
  for (int i = 0; i < g.spatial; ++i) {
    const int64_t size = x.dims[2 + i];
    int64_t o = pool_output_dim(size, g.kernel[i], g.strides[i], g.pads[i], g.dilations[i], g.ceil_mode);
    KILN_CHECK(o == kDynamic || o >= 1, who << ": kernel extent " << g.dilations[i] * (g.kernel[i] - 1) + 1
                                            << " (kernel " << g.kernel[i] << ", dilation " << g.dilations[i]
                                            << ") is larger than the padded input (" << size << " + 2*"
                                            << g.pads[i] << ") along spatial dim " << i << " of input "
                                            << to_string(x.dims));
    out.push_back(o);
  }
  return {{x.dtype, out}};
}

std::vector<TensorDesc> infer_adaptive_pooling_channels_first(const Layer& layer,
                                                              const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& x = in[0];
  const int rank = static_cast<int>(x.dims.size());
  KILN_CHECK(rank >= 3 && rank <= 5,
             who << ": input must be [N, C, spatial...] with 1 to 3 spatial dims, got " << to_string(x.dims));
  KILN_CHECK(is_floating(x.dtype), who << ": input must be floating point, got " << dtype_name(x.dtype));
  pool_type(layer);
  KILN_CHECK(layer.attrs.has("output_size"),
             who << ": missing attribute 'output_size' (one size per spatial dim)");
  std::vector<int64_t> sizes = spatial_ints(layer, "output_size", rank - 2, 1);
  Dims out = {x.dims[0], x.dims[1]};
  for (int i = 0; i < rank - 2; ++i) {
    KILN_CHECK(sizes[i] >= 1, who << ": output_size must be >= 1, got " << to_string(sizes));
    KILN_CHECK(x.dims[2 + i] == kDynamic || x.dims[2 + i] >= 1,
               who << ": input " << to_string(x.dims) << " has an empty spatial dim");
    out.push_back(sizes[i]);
  }
  return {{x.dtype, out}};
}

// Channels-last layers are inferred in the canonical order.
template <std::vector<TensorDesc> (*Infer)(const Layer&, const std::vector<TensorDesc>&)>
std::vector<TensorDesc> with_layout(const Layer& layer, const std::vector<TensorDesc>& in) {
  if (!channels_last(layer)) return Infer(layer, in);
  std::vector<TensorDesc> canonical = in;
  canonical[0].dims = channels_first_dims(in[0].dims);
  std::vector<TensorDesc> out = Infer(layer, canonical);
  out[0].dims = channels_last_dims(out[0].dims);
  return out;
}

}  // namespace

namespace {

const std::vector<AttrSpec> kPoolingAttributes = {
    {"type", AttrType::kString, std::nullopt, "required: max or avg (pooling_types())"},
    {"kernel", AttrType::kInts, std::nullopt, "required: the window size, one per spatial dim"},
    {"strides", AttrType::kInts, std::nullopt, "one per spatial dim; absent: the kernel"},
    {"pads", AttrType::kInts, std::nullopt,
     "symmetric, one per spatial dim, <= kernel / 2; absent: 0 for every dim"},
    {"dilations", AttrType::kInts, std::nullopt, "max only, one per spatial dim; absent: 1 for every dim"},
    {"ceil_mode", AttrType::kInt, AttrValue{int64_t{0}}, "0/1: torch's ceil_mode"},
    {"count_include_pad", AttrType::kInt, AttrValue{int64_t{1}}, "avg, 0/1: the divisor counts padding"},
    {"divisor_override", AttrType::kInt, std::nullopt, "avg, > 0: the divisor; absent: the window's count"},
    {"layout", AttrType::kString, AttrValue{std::string("nchw")},
     "set by the builder (assign_layouts): nchw, or nhwc (x and y channels last)"},
};

const std::vector<AttrSpec> kAdaptivePoolingAttributes = {
    {"type", AttrType::kString, std::nullopt, "required: max or avg (pooling_types())"},
    {"output_size", AttrType::kInts, std::nullopt, "required: the output size, one per spatial dim"},
    {"layout", AttrType::kString, AttrValue{std::string("nchw")},
     "set by the builder (assign_layouts): nchw, or nhwc (x and y channels last)"},
};

const SchemaRegistration kRegistered{
    {"pooling", 1, 1, with_layout<infer_pooling_channels_first>, kPoolingAttributes},
    {"adaptive_pooling", 1, 1, with_layout<infer_adaptive_pooling_channels_first>,
     kAdaptivePoolingAttributes},
};

}  // namespace

}  // namespace kiln
