// Kiln's own depthwise convolution (depthwise_convolution.cu): 2d, one filter per channel (groups =
// C in = C out), any kernel size, stride, padding and dilation, channels first or last, with the
// convolution epilogue y = act(conv + bias + residual) fused. The convolution kernel
// (convolution.cu) offers it as one more tactic next to cuDNN's algorithms: on mobilenet_v3's
// depthwise layers cuDNN's grouped kernels were the slowest part of the model in float16 NHWC.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "ir/dtype.h"
#include "kernels/cuda/activation_math.cuh"
#include "kernels/cuda/conv_window.h"

namespace kiln {

struct DepthwiseParams : ConvWindow2d {
  int64_t n = 0, c = 0, h = 0, w = 0, oh = 0, ow = 0;  // channels-first sizes of x and y
  int kh = 0, kw = 0;
  bool channels_last = false;  // x, y and the residual stored [N, H, W, C]; else [N, C, H, W]
  ActivationParams act{};
  bool activate = false;
  // Which kernel (the convolution's depthwise tactics, timed by the builder): 0 picks by shape
  // (register-blocked for 3x3/5x5 with stride 1 or 2, else one pixel per thread); 1 is one pixel
  // per thread with the taps unrolled (square 3x3, 5x5 or 7x7, no dilation, channels last); 2 is
  // two adjacent pixels per thread sharing their input row (the same filters, stride 1 or 2).
  int variant = 0;
};

constexpr int kDepthwiseVariants = 3;

// Why variant p.variant cannot run p (a sentence naming what it needs), or empty when it can.
std::string depthwise_refusal(const DepthwiseParams& p);

// x [C, 1, kh, kw] weights (channels last: [C, kh, kw, 1], the same bytes); bias [C] or null;
// residual shaped like y or null. float32, float16 or bfloat16; accumulation in float. Throws
// depthwise_refusal(p) when the variant cannot run p.
void launch_depthwise_convolution(const DepthwiseParams& p, DataType dtype, const void* x, const void* w,
                                  const void* bias, const void* residual, void* y, cudaStream_t stream);

namespace depthwise_detail {

constexpr size_t kMaxSmem = 48 * 1024;  // a block's shared memory for its weights

inline bool square_undilated(const DepthwiseParams& p) {
  return p.kh == p.kw && p.dil_h == 1 && p.dil_w == 1;
}

// One dtype's launcher (depthwise_convolution_kernels.cuh), instantiated by a translation unit of
// its own per dtype (float, __half, __nv_bfloat16).
template <typename T>
void launch_typed(const DepthwiseParams& p, const void* x, const void* w, const void* bias,
                  const void* residual, void* y, cudaStream_t stream);

}  // namespace depthwise_detail

}  // namespace kiln
