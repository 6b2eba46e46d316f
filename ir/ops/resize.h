// Attributes of the resize layer as its kernels need them; ir/ops/resize.cpp validates them.
#pragma once

#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln {

enum class ResizeMode : int { kNearest = 0, kLinear = 1, kNearestExact = 2 };

struct ResizeAttrs {
  ResizeMode mode = ResizeMode::kNearest;
  bool align_corners = false;
  std::vector<int64_t> sizes;  // output spatial sizes, or empty when `scales` is given
  std::vector<double> scales;  // per spatial dim, or empty when `sizes` is given
};

// Reads and checks the attributes; `spatial` is the number of spatial dims of the input, or -1
// when unknown (kernel factories: the schema has checked the counts).
ResizeAttrs resize_attrs(const Layer& layer, int spatial = -1);

}  // namespace kiln
