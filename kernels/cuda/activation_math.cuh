// Device-side activation functions, shared by the activation kernel and the fully_connected
// epilogue (matmul_epilogue.cu). Codes follow activation_types() in ir/ops/activation.cpp; the
// math is float with the accurate (non-intrinsic) functions.
//
// NaN propagates through every activation, as in torch (F.relu(nan) = clamp(nan) = nan): the
// piecewise ones select with comparisons that are false for NaN, so NaN falls through to the
// identity branch. fminf/fmaxf would return the other operand (IEEE minNum/maxNum) and turn NaN
// into the bound.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "ir/attributes.h"
#include "ir/ops/activation.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"

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
  kClip,
  kSelu
};

struct ActivationParams {
  int type;
  float alpha, beta, threshold;
};

// The parameters of activation `type` from a layer's attributes (alpha, beta, threshold), with the
// defaults the activation op documents.
inline ActivationParams activation_params(const std::string& type, const Attributes& attrs) {
  ActivationParams p;
  p.type = variant_code(activation_types(), type);
  const ActivationAttrs a = activation_attrs(type, attrs);
  p.alpha = static_cast<float>(a.alpha);
  p.beta = static_cast<float>(a.beta);
  p.threshold = static_cast<float>(a.threshold);
  return p;
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + expf(-x)); }
// clamp(x, lo, hi) with NaN passing through (torch.clamp); lo <= hi (the schema checks clip's).
__device__ __forceinline__ float clampf_nan(float x, float lo, float hi) {
  return x < lo ? lo : x > hi ? hi : x;
}
__device__ __forceinline__ float relu6f(float x) { return clampf_nan(x, 0.f, 6.f); }
__device__ __forceinline__ float softplusf(float x, float beta, float threshold) {
  return beta * x > threshold ? x : log1pf(expf(beta * x)) / beta;
}

__device__ __forceinline__ float activate(const ActivationParams& p, float x) {
  switch (p.type) {
    case kRelu:
      return x < 0.f ? 0.f : x;  // NaN and -0 pass through, as torch's relu
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
    case kSelu:
      return static_cast<float>(kSeluScale) * (x > 0.f ? x : static_cast<float>(kSeluAlpha) * expm1f(x));
    default:
      return clampf_nan(x, p.alpha, p.beta);
  }
}

// Sixteen bytes of T: the unit of the vectorized pointwise loops.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// kVec elements of T loaded or stored as one aligned access.
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace kiln
