// Source coordinates of the grid_sample layer, shared by its reference and CUDA kernels so that
// both read the same pixels. This is torch's coordinate arithmetic (grid_sampler_unnormalize,
// clip_coordinates, reflect_coordinates, safe_downgrade_to_int_range in
// aten/src/ATen/native/GridSampler.h) in float32, rounded where torch's compiled kernels round:
// each operation on its own except the multiply-add of grid_sample_unnormalize. Nearest rounds
// these coordinates and bilinear/bicubic floor them, so double math or another contraction would
// move pixels where torch's float32 result lands next to a boundary.
#pragma once

#include <cmath>
#include <cstdint>

#include "ir/ops/grid_sample.h"

#include "kernels/exact_float.h"

namespace kiln {

// A normalized grid coordinate in [-1, 1] -> a pixel coordinate of a dim of `size` pixels:
// align_corners maps -1 and 1 to the corner pixels' centres, otherwise to their outer edges.
// Without align_corners, (coord + 1) * size - 1 is one fused multiply-add: torch's kernels are
// compiled that way (nvcc contracts GridSampler.cuh's expression; the CPU kernel's
// (coord + 1) * (size / 2) - 0.5 becomes an FMA on AVX2), and the separately rounded product
// would move coordinates by an ulp.
KILN_HD float grid_sample_unnormalize(float coord, int64_t size, bool align_corners) {
  const float one_up = exact_add(coord, 1.f);
  if (align_corners) return exact_mul(one_up / 2.f, static_cast<float>(size - 1));
#ifdef __CUDA_ARCH__
  return __fmaf_rn(one_up, static_cast<float>(size), -1.f) / 2.f;
#else
  return std::fma(one_up, static_cast<float>(size), -1.f) / 2.f;
#endif
}

// Clamped to [0, size - 1]; NaN gives 0, as in torch's CPU and CUDA kernels.
KILN_HD float grid_sample_clip(float coord, int64_t size) {
  const float hi = static_cast<float>(size - 1);
  return coord > 0.f ? (coord < hi ? coord : hi) : 0.f;
}

// Reflected at twice_low / 2 and twice_high / 2 until it lies between them (torch passes the
// bounds doubled so that they are integers). Infinity and NaN give NaN (clipped to 0 next).
KILN_HD float grid_sample_reflect(float coord, int64_t twice_low, int64_t twice_high) {
  if (twice_low == twice_high) return 0.f;
  const float low = static_cast<float>(twice_low) / 2.f;
  const float span = static_cast<float>(twice_high - twice_low) / 2.f;
  const float dist = fabsf(exact_add(coord, -low));
  if (!(dist <= 3.4e38f)) return NAN;
  const float extra = fmodf(dist, span);
  const float flips = floorf(dist / span);
  // The parity in float: exact for every float (those at or past 2^24 are all even).
  if (fmodf(flips, 2.f) == 0.f) return exact_add(extra, low);
  return exact_add(exact_add(span, -extra), low);
}

// torch's safe_downgrade_to_int_range: a coordinate that is not finite or outside the int32 range
// becomes -100, an index outside every image, so converting it to an integer is defined.
KILN_HD float grid_sample_safe_index(float coord) {
  const float lo = static_cast<float>(INT32_MIN), hi = static_cast<float>(INT32_MAX - 1);
  return coord >= lo && coord <= hi ? coord : -100.f;
}

// The padding mode applied to a pixel coordinate (torch's compute_coordinates).
KILN_HD float grid_sample_pad(float coord, int64_t size, GridSamplePadding padding, bool align_corners) {
  if (padding == GridSamplePadding::kBorder) {
    coord = grid_sample_clip(coord, size);
  } else if (padding == GridSamplePadding::kReflection) {
    coord = align_corners ? grid_sample_reflect(coord, 0, 2 * (size - 1))
                          : grid_sample_reflect(coord, -1, 2 * size - 1);
    coord = grid_sample_clip(coord, size);
  }
  return grid_sample_safe_index(coord);
}

// The pixel coordinate bilinear and nearest sample at (torch's grid_sampler_compute_source_index).
// Bicubic unnormalizes only and pads each of its taps (grid_sample_tap).
KILN_HD float grid_sample_source(float coord, int64_t size, GridSamplePadding padding, bool align_corners) {
  return grid_sample_pad(grid_sample_unnormalize(coord, size, align_corners), size, padding, align_corners);
}

// Bicubic tap `k` (0..3) around floor(coord) = `base` as a pixel index after padding, or -1 when
// it lies outside the image (it then reads 0; torch's get_value_bounded).
KILN_HD int64_t grid_sample_tap(float base, int k, int64_t size, GridSamplePadding padding,
                                bool align_corners) {
  const float c = exact_add(exact_add(base, -1.f), static_cast<float>(k));
  const int64_t i = static_cast<int64_t>(grid_sample_pad(c, size, padding, align_corners));
  return i >= 0 && i < size ? i : -1;
}

// Cubic convolution kernel (A = -0.75, torch's cubic_convolution1/2) at distance x from a tap:
// the near branch for |x| <= 1, the far one for 1 < |x| < 2.
template <typename T>
KILN_HD T grid_sample_cubic_near(T x) {
  const T a = T(-0.75);
  return ((a + 2) * x - (a + 3)) * x * x + 1;
}
template <typename T>
KILN_HD T grid_sample_cubic_far(T x) {
  const T a = T(-0.75);
  return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
}

// The weights of the taps at -1, 0, 1, 2 for a point at fraction t past tap 0 (torch's
// get_cubic_upsample_coefficients).
template <typename T>
KILN_HD void grid_sample_cubic_weights(T t, T w[4]) {
  w[0] = grid_sample_cubic_far<T>(t + 1);
  w[1] = grid_sample_cubic_near<T>(t);
  w[2] = grid_sample_cubic_near<T>(1 - t);
  w[3] = grid_sample_cubic_far<T>(2 - t);
}

}  // namespace kiln
