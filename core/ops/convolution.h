// Geometry of convolution and deconvolution (transposed convolution) layers, shared by the schema
// and the kernels so that every backend reads the attributes the same way.
#pragma once

#include <cstdint>
#include <vector>

#include "core/network.h"

namespace kiln {

struct ConvGeometry {
  int spatial = 0;  // number of spatial dims: 1, 2 or 3
  std::vector<int64_t> strides, pads, dilations;
  std::vector<int64_t> output_padding;  // deconvolution only (zeros for convolution)
  int64_t groups = 1;
};

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

// The list attribute `name` with one entry per spatial dim, or `spatial` copies of `fallback`
// when absent; a list of another length is refused, naming the layer.
std::vector<int64_t> spatial_ints(const Layer& layer, const char* name, int spatial, int64_t fallback);

}  // namespace kiln
