// Attributes of the roi_align layer as its kernels and converter need them; ir/ops/roi_align.cpp
// validates them.
#pragma once

#include <cstdint>

#include "ir/network.h"

namespace kiln {

struct RoiAlignAttrs {
  double spatial_scale = 1.0;  // box coordinates times this are input pixel coordinates
  int64_t pooled_height = 1;
  int64_t pooled_width = 1;
  int64_t sampling_ratio = -1;  // samples per bin side; <= 0: ceil(box side / pooled side) per box
  bool aligned = false;         // shift the box by half a pixel (pixel centres at +0.5)
};

// Reads and checks the attributes.
RoiAlignAttrs roi_align_attrs(const Layer& layer);

}  // namespace kiln
