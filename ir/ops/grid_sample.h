// Attributes of the grid_sample layer as its kernels and converter need them; ir/ops/grid_sample.cpp
// validates them.
#pragma once

#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln {

// The enum values are torch's interpolation_mode and padding_mode ints (GridSampler.h), so the
// converter maps an aten argument to a name through the lists below.
enum class GridSampleMode : int { kBilinear = 0, kNearest = 1, kBicubic = 2 };
enum class GridSamplePadding : int { kZeros = 0, kBorder = 1, kReflection = 2 };

// The attribute names in enum order: grid_sample_modes()[torch interpolation_mode] and
// grid_sample_padding_modes()[torch padding_mode].
const std::vector<std::string>& grid_sample_modes();
const std::vector<std::string>& grid_sample_padding_modes();

struct GridSampleAttrs {
  GridSampleMode mode = GridSampleMode::kBilinear;
  GridSamplePadding padding = GridSamplePadding::kZeros;
  bool align_corners = false;
};

// Reads and checks the attributes (defaults: bilinear, zeros, align_corners 0, as torch's).
GridSampleAttrs grid_sample_attrs(const Layer& layer);

}  // namespace kiln
