// Which cuBLASLt algorithms' RELU epilogue turns NaN into 0 (torch's relu keeps NaN): the
// fully_connected and matmul kernels then run the GEMM without it and the relu in Kiln's epilogue
// kernel. Defined in matmul.cpp; tests/cpp/test_cublaslt_relu_nan.cpp runs every algorithm the
// heuristic offers on NaN inputs and checks that this says so for each that drops one.
#pragma once

#include <cublasLt.h>

namespace kiln {

bool relu_epilogue_drops_nan(const cublasLtMatmulAlgo_t& algo);

}  // namespace kiln
