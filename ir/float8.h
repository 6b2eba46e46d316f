// float8 e4m3fn (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinity, NaN is
// S.1111.111; largest finite 448, smallest subnormal 2^-9) on the host: the reference backend's
// arithmetic and the builder's weight quantization. float -> e4m3 rounds to nearest even and
// saturates to +-448 (what CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) does, and
// what torch's x.clamp(-448, 448).to(torch.float8_e4m3fn) gives); NaN stays NaN.
#pragma once

#include <cmath>
#include <cstdint>

namespace kiln {

constexpr float kFloat8E4M3Max = 448.f;

inline uint8_t float_to_e4m3(float f) {
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  if (std::isnan(f)) return static_cast<uint8_t>(sign | 0x7f);
  const float a = std::fabs(f);
  if (!(a < kFloat8E4M3Max)) return static_cast<uint8_t>(sign | 0x7e);  // saturate (inf too)
  if (a < 0.015625f) {  // below 2^-6: subnormal steps of 2^-9; 8 steps is the smallest normal
    return static_cast<uint8_t>(sign | static_cast<uint8_t>(std::nearbyint(a * 512.f)));
  }
  int e2 = 0;
  std::frexp(a, &e2);                                              // a = m * 2^e2, m in [0.5, 1)
  int e = e2 - 1;                                                  // a in [2^e, 2^(e+1))
  int q = static_cast<int>(std::nearbyint(std::ldexp(a, 3 - e)));  // in [8, 16]
  if (q == 16) {
    q = 8;
    ++e;
  }
  if (e > 8 || (e == 8 && q > 14)) return static_cast<uint8_t>(sign | 0x7e);
  return static_cast<uint8_t>(sign | (e + 7) << 3 | (q - 8));
}

inline float e4m3_to_float(uint8_t b) {
  const int exp = (b >> 3) & 0xf, mant = b & 7;
  float v;
  if (exp == 15 && mant == 7) {
    v = std::nanf("");
  } else if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -9);
  } else {
    v = std::ldexp(static_cast<float>(8 + mant), exp - 10);
  }
  return (b & 0x80) ? -v : v;
}

}  // namespace kiln
