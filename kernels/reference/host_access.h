// Element access for the reference backend: every dtype read as double and written back with the
// rounding the real dtype implies (round-to-nearest-even for float16/bfloat16).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>

#include "ir/dtype.h"
#include "ir/error.h"
#include "ir/float8.h"
#include "kernels/kernel.h"

namespace kiln {

inline float half_bits_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (absx < 0x38800000u) {  // result is subnormal or zero: let the FPU round
    float a;
    std::memcpy(&a, &absx, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t mant = absx & 0x7fffffu;
  uint32_t exp = (absx >> 23) - 127 + 15;
  uint32_t h = exp << 10 | mant >> 13;
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // round to nearest even
  return static_cast<uint16_t>(sign | h);
}

inline float bf16_bits_to_float(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

// Float -> integer as the reference backend defines it. C++ leaves the conversion undefined when
// the truncated value does not fit the type (NaN, infinities, |x| >= 2^31 for int32); the x86
// instruction torch's CPU kernels compile to (cvttss2si/cvttsd2si) gives the type's minimum
// then, and so does this. Types narrower than 32 bits go through int32 and wrap, as compiled
// code does.
template <typename D, typename F>
D truncate_to_int(F x) {
  using Wide = std::conditional_t<(sizeof(D) > 4), int64_t, int32_t>;
  constexpr F kLo = static_cast<F>(std::numeric_limits<Wide>::min());  // -2^31 or -2^63, exact
  const Wide w = x >= kLo && x < -kLo ? static_cast<Wide>(x) : std::numeric_limits<Wide>::min();
  return static_cast<D>(w);
}

inline double load_element(const TensorView& t, int64_t i) {
  switch (t.dtype) {
    case DataType::kFloat32:
      return static_cast<const float*>(t.data)[i];
    case DataType::kFloat16:
      return half_bits_to_float(static_cast<const uint16_t*>(t.data)[i]);
    case DataType::kBFloat16:
      return bf16_bits_to_float(static_cast<const uint16_t*>(t.data)[i]);
    case DataType::kInt32:
      return static_cast<const int32_t*>(t.data)[i];
    case DataType::kInt64:
      return static_cast<double>(static_cast<const int64_t*>(t.data)[i]);
    case DataType::kBool:
      return static_cast<const uint8_t*>(t.data)[i] != 0;
    case DataType::kInt8:
      return static_cast<const int8_t*>(t.data)[i];
    case DataType::kFloat8E4M3:
      return e4m3_to_float(static_cast<const uint8_t*>(t.data)[i]);
  }
  KILN_FAIL("load_element: unknown dtype");
}

// `v` rounded to floating dtype `t` (through float32), as storing and reloading it would.
inline float round_to_dtype(DataType t, double v) {
  const float f = static_cast<float>(v);
  if (t == DataType::kFloat16) return half_bits_to_float(float_to_half_bits(f));
  if (t == DataType::kBFloat16) return bf16_bits_to_float(float_to_bf16_bits(f));
  return f;
}

// torch's integer quantization of one value: round(x * inv) + zp (float32, half to even),
// saturated into [lo, hi]. NaN goes to lo (what torch's float -> int64 conversion gives on x86
// before its clamp).
inline double quantize_value(float x, float inv, int64_t zp, int64_t lo, int64_t hi) {
  const float r = std::nearbyint(x * inv);
  if (std::isnan(r)) return static_cast<double>(lo);
  return std::clamp(static_cast<double>(r) + static_cast<double>(zp), static_cast<double>(lo),
                    static_cast<double>(hi));
}

// Floating results pass through float32 first: the reference backend computes in float32.
inline void store_element(const TensorView& t, int64_t i, double v) {
  switch (t.dtype) {
    case DataType::kFloat32:
      static_cast<float*>(t.data)[i] = static_cast<float>(v);
      return;
    case DataType::kFloat16:
      static_cast<uint16_t*>(t.data)[i] = float_to_half_bits(static_cast<float>(v));
      return;
    case DataType::kBFloat16:
      static_cast<uint16_t*>(t.data)[i] = float_to_bf16_bits(static_cast<float>(v));
      return;
    case DataType::kInt32:
      static_cast<int32_t*>(t.data)[i] = truncate_to_int<int32_t>(v);
      return;
    case DataType::kInt64:
      static_cast<int64_t*>(t.data)[i] = truncate_to_int<int64_t>(v);
      return;
    case DataType::kBool:
      static_cast<uint8_t*>(t.data)[i] = v != 0;
      return;
    case DataType::kInt8:
      static_cast<int8_t*>(t.data)[i] = truncate_to_int<int8_t>(v);
      return;
    case DataType::kFloat8E4M3:
      static_cast<uint8_t*>(t.data)[i] = float_to_e4m3(static_cast<float>(v));
      return;
  }
  KILN_FAIL("store_element: unknown dtype");
}

// A reference kernel applying f to every element of its one input (activations, unary math).
class RefPointwise final : public Kernel {
 public:
  RefPointwise(std::string name, std::function<double(double)> f)
      : name_(std::move(name)), f_(std::move(f)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    int64_t n = volume(in[0].dims);
    for (int64_t i = 0; i < n; ++i) store_element(out[0], i, f_(load_element(in[0], i)));
  }
  std::string name() const override { return name_; }

 private:
  std::string name_;
  std::function<double(double)> f_;
};

}  // namespace kiln
