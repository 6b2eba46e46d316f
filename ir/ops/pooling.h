// Geometry of pooling and adaptive_pooling layers, shared by the schema and the kernels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln {

// The pooling types, in the order of their kernel codes.
const std::vector<std::string>& pooling_types();  // max, avg
enum PoolType : int { kPoolMax = 0, kPoolAvg = 1 };

struct PoolGeometry {
  int type = kPoolMax;
  int spatial = 0;
  std::vector<int64_t> kernel, strides, pads, dilations;
  bool ceil_mode = false;
  bool count_include_pad = true;
  int64_t divisor_override = 0;  // 0: none
};

// Reads and validates a pooling layer's attributes for an input with `spatial` spatial dims.
PoolGeometry pool_geometry(const Layer& layer, int spatial);

// torch's pooling output size along one dim, with ceil_mode's rule that the last window must
// start inside the input or the left padding. kDynamic stays kDynamic.
int64_t pool_output_dim(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation,
                        bool ceil_mode);

// The pooling type code of an adaptive_pooling layer (validated by its schema).
int adaptive_pool_type(const Layer& layer);

}  // namespace kiln
