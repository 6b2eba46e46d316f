// The 2d window of a convolution (strides, symmetric pads, dilations) as the CUDA kernels' int
// parameters, shared by Kiln's own convolution kernels (depthwise, INT8).
#pragma once

#include "ir/ops/convolution.h"

namespace kiln {

struct ConvWindow2d {
  int stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
};

// The window of a 2d layer's geometry (conv_geometry(layer, 2)).
inline ConvWindow2d conv_window_2d(const ConvGeometry& g) {
  ConvWindow2d w;
  w.stride_h = static_cast<int>(g.strides[0]);
  w.stride_w = static_cast<int>(g.strides[1]);
  w.pad_h = static_cast<int>(g.pads[0]);
  w.pad_w = static_cast<int>(g.pads[1]);
  w.dil_h = static_cast<int>(g.dilations[0]);
  w.dil_w = static_cast<int>(g.dilations[1]);
  return w;
}

}  // namespace kiln
