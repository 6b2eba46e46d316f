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

// y = act(x @ w^T + bias) + residual in one kernel, one warp per output element (x [rows, k], w
// [n, k], FP32 accumulation): fully_connected's own tactic for a few rows (batch-1 heads and
// squeeze-excitation layers), where cuBLASLt's kernel, plus the epilogue kernel for activations it
// lacks, costs more than the product. Correct for any shape; the builder's timing picks it.
struct FcGemv {
  FcEpilogue e;  // dtype, y, bias, residual, rows, n and the activation
  const void* x = nullptr;
  const void* w = nullptr;
  int64_t k = 0;
};

void launch_fc_gemv(const FcGemv& g, cudaStream_t stream);

}  // namespace kiln
