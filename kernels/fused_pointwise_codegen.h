// What the CUDA fused_pointwise kernel exposes beyond the kernel registry: its generated source
// (for inspection and tests) and how often this process ran NVRTC (a plan loaded on the GPU arch
// it was built for must not add to it).
#pragma once

#include <cstdint>
#include <string>

#include "ir/network.h"

namespace kiln {

std::string fused_pointwise_cuda_source(const Layer& layer);
int64_t nvrtc_compile_count();

}  // namespace kiln
