// The fully_connected epilogue that cuBLASLt cannot do: y = act(y + bias) + residual in place,
// for activations without a matching cuBLASLt epilogue (exact GELU, SiLU, ...) and for a residual
// after an activation. Called from matmul.cpp (host code) after the GEMM, on the same stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ir/dtype.h"

namespace kiln {

struct FcEpilogue {
  DataType dtype = DataType::kFloat32;
  void* y = nullptr;               // [rows, n], row-major, read and written
  const void* bias = nullptr;      // [n] or null
  const void* residual = nullptr;  // [rows, n] or null
  int64_t rows = 0, n = 0;
  int act_type = -1;  // a code of activation_types(), or -1 for none
  float alpha = 0.f, beta = 0.f, threshold = 0.f;
};

void launch_fc_epilogue(const FcEpilogue& e, cudaStream_t stream);

}  // namespace kiln
