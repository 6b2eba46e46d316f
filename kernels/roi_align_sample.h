// The sampling geometry of the roi_align layer, shared by its reference and CUDA kernels so that
// both read the same pixels: torchvision's arithmetic (roi_align_kernel's box, bin and bilinear
// sample computations), in float32.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/exact_float.h"

namespace kiln {

// One box, in input pixel coordinates: where bin (0, 0) starts, a bin's size, the sample grid of
// a bin and the count the samples' sum is divided by.
struct RoiAlignBox {
  float start_y, start_x, bin_h, bin_w;
  int64_t grid_h, grid_w;
  float count;
};

// Box (x1, y1, x2, y2) in the coordinates before `scale`. aligned shifts it by half a pixel;
// otherwise it is made at least 1 x 1. sampling_ratio <= 0 takes ceil(side / bins) samples per bin
// side, from this box.
KILN_HD RoiAlignBox roi_align_box(float x1, float y1, float x2, float y2, float scale, int64_t pooled_h,
                                  int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  const float offset = aligned ? 0.5f : 0.f;
  RoiAlignBox b;
  b.start_x = x1 * scale - offset;
  b.start_y = y1 * scale - offset;
  float width = (x2 * scale - offset) - b.start_x;
  float height = (y2 * scale - offset) - b.start_y;
  if (!aligned) {
    width = width > 1.f ? width : 1.f;
    height = height > 1.f ? height : 1.f;
  }
  b.bin_h = height / static_cast<float>(pooled_h);
  b.bin_w = width / static_cast<float>(pooled_w);
  b.grid_h = sampling_ratio > 0 ? sampling_ratio
                                : static_cast<int64_t>(ceilf(height / static_cast<float>(pooled_h)));
  b.grid_w =
      sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceilf(width / static_cast<float>(pooled_w)));
  if (b.grid_h < 0) b.grid_h = 0;  // a box with x2 < x1 when aligned: no samples, as torchvision
  if (b.grid_w < 0) b.grid_w = 0;
  const int64_t samples = b.grid_h * b.grid_w;
  b.count = static_cast<float>(samples > 1 ? samples : 1);
  return b;
}

// The sample's coordinate along one side: bin `bin`, sample `i` of `grid` in it.
KILN_HD float roi_align_coordinate(float start, float bin_size, int64_t bin, int64_t i, int64_t grid) {
  return start + static_cast<float>(bin) * bin_size +
         (static_cast<float>(i) + 0.5f) * bin_size / static_cast<float>(grid);
}

// The four pixels a bilinear sample at (y, x) reads in an h x w plane (offsets in the plane) and
// their weights; false for a sample outside [-1, h] x [-1, w], which adds 0.
struct RoiAlignTaps {
  int64_t offset[4];
  float weight[4];
};

KILN_HD bool roi_align_taps(float y, float x, int64_t h, int64_t w, RoiAlignTaps* t) {
  if (y < -1.f || y > static_cast<float>(h) || x < -1.f || x > static_cast<float>(w)) return false;
  if (y <= 0.f) y = 0.f;
  if (x <= 0.f) x = 0.f;
  int64_t y_low = static_cast<int64_t>(y), x_low = static_cast<int64_t>(x), y_high, x_high;
  if (y_low >= h - 1) {
    y_high = y_low = h - 1;
    y = static_cast<float>(y_low);
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= w - 1) {
    x_high = x_low = w - 1;
    x = static_cast<float>(x_low);
  } else {
    x_high = x_low + 1;
  }
  const float ly = y - static_cast<float>(y_low), lx = x - static_cast<float>(x_low);
  const float hy = 1.f - ly, hx = 1.f - lx;
  t->offset[0] = y_low * w + x_low;
  t->offset[1] = y_low * w + x_high;
  t->offset[2] = y_high * w + x_low;
  t->offset[3] = y_high * w + x_high;
  t->weight[0] = hy * hx;
  t->weight[1] = hy * lx;
  t->weight[2] = ly * hx;
  t->weight[3] = ly * lx;
  return true;
}

}  // namespace kiln
