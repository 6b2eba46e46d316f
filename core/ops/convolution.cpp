// convolution: y = conv(x, weight) + bias, torch's Conv1d/2d/3d. x [N, C, spatial...], weight
// [K, C/groups, kernel...], optional bias [K]; y [N, K, out...].
// deconvolution: transposed convolution, torch's ConvTranspose1d/2d/3d. x [N, C, spatial...],
// weight [C, K/groups, kernel...], optional bias [K]; y [N, K, out...].
// N and spatial dims may be dynamic; C and the weight's dims must be static.
#include "core/ops/convolution.h"

#include "core/error.h"
#include "core/op_schema.h"
#include "core/ops/ops.h"

namespace kiln {

std::vector<int64_t> spatial_ints(const Layer& layer, const char* name, int spatial, int64_t fallback) {
  if (!layer.attrs.has(name)) return std::vector<int64_t>(spatial, fallback);
  std::vector<int64_t> v = layer.attrs.get_ints(name, describe(layer));
  KILN_CHECK(static_cast<int>(v.size()) == spatial,
             describe(layer) << ": attribute '" << name << "' needs " << spatial
                             << " value(s), one per spatial dim, got " << to_string(v));
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
  KILN_CHECK(g.groups >= 1, who << ": groups must be >= 1, got " << g.groups);
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
  return (in - 1) * stride - 2 * pad + dilation * (k - 1) + output_padding + 1;
}

namespace {

std::vector<TensorDesc> infer_conv(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const bool transposed = layer.op == "deconvolution";
  const TensorDesc &x = in[0], &w = in[1];
  const int rank = static_cast<int>(x.dims.size());
  KILN_CHECK(rank >= 3 && rank <= 5,
             who << ": input must be [N, C, spatial...] with 1 to 3 spatial dims, got " << to_string(x.dims));
  KILN_CHECK(is_floating(x.dtype), who << ": input must be floating point, got " << dtype_name(x.dtype));
  KILN_CHECK(w.dtype == x.dtype, who << ": weight dtype " << dtype_name(w.dtype)
                                     << " differs from input dtype " << dtype_name(x.dtype)
                                     << "; insert a cast");
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
    k = w.dims[1] * g.groups;
  } else {
    k = w.dims[0];
    KILN_CHECK(k % g.groups == 0, who << ": groups " << g.groups << " must divide the output channels " << k
                                      << " (weight " << to_string(w.dims) << ")");
    KILN_CHECK(w.dims[1] * g.groups == c,
               who << ": weight " << to_string(w.dims) << " must be [K, C/groups, kernel...] with C/groups = "
                   << c / g.groups << " (input channels " << c << ", groups " << g.groups << ")");
  }
  KILN_CHECK(k >= 1, who << ": weight " << to_string(w.dims) << " gives no output channels");
  if (in.size() > 2) {
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
    KILN_CHECK(kernel >= 1, who << ": kernel dims must be >= 1, weight is " << to_string(w.dims));
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
  return {{x.dtype, out}};
}

}  // namespace

void register_convolution_schema() {
  register_schema({"convolution", 2, 3, infer_conv});
  register_schema({"deconvolution", 2, 3, infer_conv});
}

}  // namespace kiln
