// Activation math on the device, shared by the activation kernel and the fused epilogue of the
// convolution kernels. Codes follow activation_types() in core/ops/activation.cpp; math in float
// with the accurate (non-intrinsic) functions.
#pragma once

#include <cuda_runtime.h>

namespace kiln {

enum ActivationType : int {
  kRelu,
  kSigmoid,
  kTanh,
  kLeakyRelu,
  kGelu,
  kGeluTanh,
  kSilu,
  kHardswish,
  kHardsigmoid,
  kElu,
  kSoftplus,
  kMish,
  kClip
};

struct ActivationParams {
  int type;
  float alpha, beta, threshold;
};

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ float relu6f(float x) { return fminf(fmaxf(x, 0.f), 6.f); }
__device__ __forceinline__ float softplusf(float x, float beta, float threshold) {
  return beta * x > threshold ? x : log1pf(expf(beta * x)) / beta;
}

__device__ __forceinline__ float activate(const ActivationParams& p, float x) {
  switch (p.type) {
    case kRelu:
      return x > 0.f ? x : 0.f;
    case kSigmoid:
      return sigmoidf(x);
    case kTanh:
      return tanhf(x);
    case kLeakyRelu:
      return x >= 0.f ? x : p.alpha * x;
    case kGelu:
      return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case kGeluTanh:
      return 0.5f * x * (1.f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    case kSilu:
      return x * sigmoidf(x);
    case kHardswish:
      return x * relu6f(x + 3.f) / 6.f;
    case kHardsigmoid:
      return relu6f(x + 3.f) / 6.f;
    case kElu:
      return x > 0.f ? x : p.alpha * expm1f(x);
    case kSoftplus:
      return softplusf(x, p.beta, p.threshold);
    case kMish:
      return x * tanhf(softplusf(x, 1.f, 20.f));
    default:
      return fminf(fmaxf(x, p.alpha), p.beta);
  }
}

}  // namespace kiln
