// Source coordinates of the resize layer, shared by its reference and CUDA kernels so that both
// pick the same pixels. This is torch's index arithmetic (aten/src/ATen/native/UpSample.h) in
// float32, operation for operation: nearest-neighbour indices are floor()s of float products, so
// computing them in double, or letting the compiler fuse a multiply-add, would move pixels.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/exact_float.h"

namespace kiln {

// Output coordinate -> input coordinate ratio of one spatial dim (torch's
// area_pixel_compute_scale). `scale` is the user's scale factor, or 0 when sizes were given.
inline float resize_ratio(int64_t in, int64_t out, bool align_corners, double scale) {
  if (align_corners) return out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.f;
  if (scale > 0) return static_cast<float>(1.0 / scale);
  return static_cast<float>(in) / static_cast<float>(out);
}

// torch 'nearest': floor(dst * ratio), clamped to the last input index.
KILN_HD int64_t nearest_source(float ratio, int64_t dst, int64_t in) {
  int64_t s = static_cast<int64_t>(floorf(exact_mul(ratio, static_cast<float>(dst))));
  return s < in - 1 ? s : in - 1;
}

// torch 'nearest-exact': the pixel whose centre is nearest, floor((dst + 0.5) * ratio).
KILN_HD int64_t nearest_exact_source(float ratio, int64_t dst, int64_t in) {
  float r = exact_add(exact_mul(ratio, exact_add(static_cast<float>(dst), 0.5f)), -0.5f);
  if (r < 0.f) r = 0.f;
  int64_t s = static_cast<int64_t>(floorf(exact_add(r, 0.5f)));
  return s < in - 1 ? s : in - 1;
}

// The two input indices and weights of linear interpolation along one dim (torch's
// compute_source_index_and_lambda): half-pixel mapping with negative coordinates clamped to 0,
// or corner mapping with align_corners; an unchanged size copies.
struct LinearTap {
  int64_t i0, i1;
  float w0, w1;
};

KILN_HD LinearTap linear_source(float ratio, int64_t dst, int64_t in, int64_t out, bool align_corners) {
  if (in == out) return {dst, dst, 1.f, 0.f};
  float r = align_corners ? exact_mul(ratio, static_cast<float>(dst))
                          : exact_add(exact_mul(ratio, exact_add(static_cast<float>(dst), 0.5f)), -0.5f);
  if (!align_corners && r < 0.f) r = 0.f;
  int64_t i = static_cast<int64_t>(floorf(r));
  if (i > in - 1) i = in - 1;
  float w = exact_add(r, -static_cast<float>(i));
  w = w < 0.f ? 0.f : (w > 1.f ? 1.f : w);
  return {i, i + (i < in - 1 ? 1 : 0), exact_add(1.f, -w), w};
}

}  // namespace kiln
