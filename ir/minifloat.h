// Narrow floating formats that fake_quantize can round to besides e4m3fn (which has an engine
// dtype, ir/float8.h): float8 e5m2, the "fnuz" float8 variants and float4 e2m1. Their values are
// held in float32 (or float16); round_minifloat gives the value of the nearest one, with the
// conversions of ml_dtypes (what ONNX's Cast and QuantizeLinear are defined by): round to
// nearest, ties to even, subnormals included; overflow saturates to the largest finite value
// when `saturate` (or when the format has neither infinity nor NaN), else gives infinity (e5m2)
// or NaN (formats without infinity); the fnuz formats have no -0 (its bits are their NaN), and
// e2m1, which has no NaN, turns NaN into -0 as ml_dtypes does. Host and device.
#pragma once

#include <cmath>
#include <string>

#ifdef __CUDACC__
#define KILN_MINIFLOAT_HD __host__ __device__ __forceinline__
#else
#define KILN_MINIFLOAT_HD inline
#endif

namespace kiln {

struct Minifloat {
  int exponent_bits = 0;
  int mantissa_bits = 0;       // stored fraction bits
  int min_exponent = 0;        // the smallest normal is 2^min_exponent (1 - bias)
  float max_finite = 0.f;      // the largest finite value
  bool has_inf = false;        // overflow without saturation gives infinity (e5m2)
  bool has_nan = true;         // e2m1 has no NaN
  bool unsigned_zero = false;  // fnuz: zero has no sign
};

// The formats by their attribute names; false for another name.
inline bool minifloat_format(const std::string& name, Minifloat* out) {
  if (name == "e5m2") {
    *out = {5, 2, -14, 57344.f, true, true, false};
  } else if (name == "e4m3fnuz") {
    *out = {4, 3, -7, 240.f, false, true, true};
  } else if (name == "e5m2fnuz") {
    *out = {5, 2, -15, 57344.f, false, true, true};
  } else if (name == "e2m1") {
    *out = {2, 1, 0, 6.f, false, false, false};
  } else {
    return false;
  }
  return true;
}

KILN_MINIFLOAT_HD float round_minifloat(float x, const Minifloat& f, bool saturate) {
  if (x != x) return f.has_nan ? x : -0.f;
  const float a = fabsf(x);
  float r = a;
  if (a != INFINITY) {
    int e = 0;
    frexpf(a, &e);                               // a = m * 2^e with m in [0.5, 1)
    e -= 1;                                      // a in [2^e, 2^(e + 1))
    if (e < f.min_exponent) e = f.min_exponent;  // subnormals: one fixed step
    const int shift = f.mantissa_bits - e;       // a * 2^shift: the steps of a's binade
    r = ldexpf(rintf(ldexpf(a, shift)), -shift);
  }
  if (r > f.max_finite) {
    if (saturate || (!f.has_inf && !f.has_nan)) {
      r = f.max_finite;
    } else if (f.has_inf) {
      r = INFINITY;
    } else {
      return NAN;
    }
  }
  if (r == 0.f && f.unsigned_zero) return 0.f;
  return copysignf(r, x);
}

// The value of a format's bit pattern (sign, exponent, mantissa from the high bit down): e5m2 has
// IEEE's infinities and NaNs at its largest exponent, the fnuz formats one NaN (the pattern of -0).
inline float minifloat_value(unsigned code, const Minifloat& f) {
  const int bits = 1 + f.exponent_bits + f.mantissa_bits;
  const unsigned sign = code >> (bits - 1) & 1u;
  const unsigned exp = code >> f.mantissa_bits & ((1u << f.exponent_bits) - 1);
  const unsigned mant = code & ((1u << f.mantissa_bits) - 1);
  if (f.unsigned_zero && sign && exp == 0 && mant == 0) return NAN;
  float v;
  if (f.has_inf && exp == (1u << f.exponent_bits) - 1) {
    v = mant ? NAN : INFINITY;
  } else if (exp == 0) {
    v = ldexpf(static_cast<float>(mant), f.min_exponent - f.mantissa_bits);
  } else {
    const int e = static_cast<int>(exp) - 1 + f.min_exponent;  // exp - bias
    v = ldexpf(static_cast<float>((1u << f.mantissa_bits) + mant), e - f.mantissa_bits);
  }
  return sign ? -v : v;
}

}  // namespace kiln
