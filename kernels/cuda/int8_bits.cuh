// Integer <-> float steps of the INT8 epilogues done with FP32 adds and integer ops instead of the
// conversion instructions (FRND, F2I, I2F), which run at an eighth of the FMA rate on sm_80/sm_90:
// an INT8 convolution writing int8 spends several of them on every output value, and over a
// ResNet-50 that is milliseconds. Adding 1.5 * 2^23 to a float of magnitude <= 2^22 leaves the
// float's integer, rounded to nearest even, in the low mantissa bits (the add rounds as rint
// does); subtracting it back turns such an integer into its float exactly.
//
// __host__ __device__ so that the CPU tests check them against the reference's rint and clamp
// (tests/cpp/test_int8_convolution.cpp). The adds must not be contracted into an FMA with a
// neighbouring multiply: the device code uses the _rn intrinsics, which never are.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace kiln {

constexpr float kRoundMagic = 12582912.f;  // 1.5 * 2^23, bits 0x4B400000
constexpr int32_t kRoundMagicBits = 0x4B400000;

__host__ __device__ __forceinline__ float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

__host__ __device__ __forceinline__ int32_t float_bits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_int(x);
#else
  int32_t i;
  std::memcpy(&i, &x, sizeof(i));
  return i;
#endif
}

__host__ __device__ __forceinline__ float bits_float(int32_t i) {
#ifdef __CUDA_ARCH__
  return __int_as_float(i);
#else
  float x;
  std::memcpy(&x, &i, sizeof(x));
  return x;
#endif
}

// clamp(rint(x), lo, hi) as int8, NaN to lo: what the quantize layer computes from x = v * inv_scale
// (lo, hi integers in [-128, 127]). Clamping first is the same (the bounds are integers), and
// leaves a value the magic add rounds exactly. On the device fmaxf returns the other operand for
// any NaN (PTX max.f32), so NaN becomes lo with no test; a host's fmaxf returns NaN for a
// signaling NaN (IEEE 754-2008 maxNum), so the host tests for it.
__host__ __device__ __forceinline__ int8_t round_clamp_int8(float x, float lo, float hi) {
#ifdef __CUDA_ARCH__
  const float c = fminf(fmaxf(x, lo), hi);
#else
  const float c = x != x ? lo : fminf(fmaxf(x, lo), hi);
#endif
  // The low byte of the sum's bits is the integer, two's complement.
  return static_cast<int8_t>(float_bits(add_rn(c, kRoundMagic)) & 0xFF);
}

// The float of an int8 value, exactly.
__host__ __device__ __forceinline__ float int8_to_float(int8_t q) {
  return add_rn(bits_float(kRoundMagicBits + static_cast<int32_t>(q)), -kRoundMagic);
}

}  // namespace kiln
