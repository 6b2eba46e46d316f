// The scatter_elements op (ir/ops/scatter.cpp), shared with its kernels.
#pragma once

#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln {

// The layer's `reduction` attribute ("none" when absent).
std::string scatter_reduction(const Layer& layer);

// The reductions scatter_elements accepts, in the order of their kernel codes.
const std::vector<std::string>& scatter_reductions();

}  // namespace kiln
