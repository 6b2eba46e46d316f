// Geometry of convolution and deconvolution (transposed convolution) layers, shared by the schema
// and the kernels so that every backend reads the attributes the same way.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln {

struct ConvGeometry {
  int spatial = 0;  // number of spatial dims: 1, 2 or 3
  std::vector<int64_t> strides, pads, dilations;
  std::vector<int64_t> output_padding;  // deconvolution only (zeros for convolution)
  int64_t groups = 1;
};

// The optional epilogue fused into a convolution or deconvolution layer (by the builder's
// fuse_conv_epilogue pass, or set directly): y = act(conv(x) + bias + residual).
// Attributes: `activation` ("none", the default, or an activation op type), its parameters
// `activation_alpha`, `activation_beta`, `activation_threshold` (defaults as the activation op's
// alpha/beta/threshold), and `residual` (0/1): the last input is a tensor of y's shape added
// before the activation. Inputs are x, weight, [bias], [residual].
struct ConvEpilogue {
  std::string activation = "none";
  double alpha = 0.0, beta = 1.0, threshold = 20.0;
  bool residual = false;
  bool has_bias = false;
  int residual_input = -1;  // index of the residual input, -1 when none
};

// The `layout` attribute of a convolution: "nchw" (the default) or "nhwc", channels last: x is
// stored [N, spatial..., C], weight [K, kernel..., C/groups], y and the residual [N, spatial..., K]
// (bias stays [K]). The result is the same; only the order of the stored dims differs. The
// builder's assign_layouts pass sets it for tensor-core convolutions. pooling and
// adaptive_pooling accept it too (x and y channels last). Errors name the layer.
bool channels_last(const Layer& layer);
// [N, spatial..., C] -> [N, C, spatial...] and back.
Dims channels_first_dims(const Dims& d);
Dims channels_last_dims(const Dims& d);

// A quantized convolution (attribute `quantized` = 1, set by the builder's
// quantize_int8_layers): x and weight are int8, input 2 is float32 [2, K] (row 0: the
// per-channel scale, input scale x weight scale of channel k; row 1: the bias), and
// y = act(scale[k] * sum(x * w) + bias[k] + residual), with the sum exact in int32, of dtype
// `out_dtype` (the residual's too). With `output_inv_scale` (a quantize layer folded in), y is
// int8 instead: clamp(nearbyint(float(v) * output_inv_scale), output_quant_min, output_quant_max)
// where v is that value rounded to out_dtype, exactly what the quantize computed from it; with
// `int8_copy` = 1 as well, y keeps out_dtype and a second output holds that int8 tensor (a ResNet
// block's output: the next block's convolutions read it quantized, its residual add as it is).
// Errors name the layer.
bool conv_quantized(const Layer& layer);
DataType conv_out_dtype(const Layer& layer);

// Reads and validates the epilogue attributes of a layer with `num_inputs` inputs.
ConvEpilogue conv_epilogue(const Layer& layer, size_t num_inputs);

// Reads and validates the attributes of a convolution or deconvolution layer whose input has
// `spatial` spatial dims: `strides` (default 1), `pads` (symmetric, default 0), `dilations`
// (default 1), `groups` (default 1), and for deconvolution `output_padding` (default 0).
// Every list must have one entry per spatial dim. Errors name the layer.
ConvGeometry conv_geometry(const Layer& layer, int spatial);

// torch's output size of a convolution along one dim: (in + 2p - d(k-1) - 1) / s + 1.
// kDynamic stays kDynamic.
int64_t conv_output_dim(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dilation);
// Transposed convolution: (in - 1)s - 2p + d(k-1) + output_padding + 1.
int64_t deconv_output_dim(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dilation,
                          int64_t output_padding);

// Bound on window geometry (kernel, strides, pads, dilations, groups): below 2^31.
constexpr int64_t kMaxGeometry = int64_t{1} << 31;

// The list attribute `name` with one entry per spatial dim, or `spatial` copies of `fallback`
// when absent; a list of another length, or a value of magnitude 2^31 or more, is refused,
// naming the layer.
std::vector<int64_t> spatial_ints(const Layer& layer, const char* name, int spatial, int64_t fallback);

}  // namespace kiln
