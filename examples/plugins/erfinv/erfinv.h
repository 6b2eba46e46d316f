// The example plugin's CUDA launcher (erfinv.cu), called by its CUDA implementation (erfinv.cpp).
#pragma once

#include <cstdint>

namespace kiln_example {

// out[i] = scale * erfinv(in[i]) for n elements of `dtype` (0 float32, 1 float16, 2 bfloat16:
// kiln::DataType's values), on `stream`.
void launch_erfinv(const void* in, void* out, int64_t n, int dtype, float scale, void* stream);

}  // namespace kiln_example
