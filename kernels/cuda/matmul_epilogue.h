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

// The split of a float32 matrix for a product in three TF32 passes ("3xTF32"): columns
// [col0, col0 + cols) of `rows` rows of src (row stride ld) become rows of 2 * cols floats in dst,
// each value x as hi = x rounded to TF32 (10 mantissa bits, nearest, ties away) and lo = x - hi
// (exact in float32): [hi | lo] when hi_first, else [lo | hi]. hi * hi' + hi * lo' + lo * hi'
// then carries x * x' to about 2^-21 relative, near float32's own rounding (tensor cores read hi
// exactly and lo to TF32). Inf and NaN stay in hi (lo 0); a finite value that would round to
// infinity keeps its truncation as hi.
struct SplitTf32 {
  const float* src = nullptr;
  int64_t ld = 0, rows = 0, col0 = 0, cols = 0;
  float* dst = nullptr;
  bool hi_first = true;
};

void launch_split_tf32(const SplitTf32& s, cudaStream_t stream);

// How fully_connected's 3xTF32 tactics (matmul.cpp) share a workspace of `workspace_bytes`: K in
// chunks of `columns` (0: no chunk worth splitting fits; at least min(K, kSplitTf32MinColumns)),
// the split x chunk [m, 2 * columns] at offset 0, the split weight chunk [n, 2 * columns] at
// w_offset, cuBLASLt's share (kSplitTf32LtBytes or more) from lt_offset on.
constexpr size_t kSplitTf32LtBytes = size_t{4} << 20;
// The cap holds BERT-base's FFN-up layer at batch 32 x 128 (8 * (4096 + 3072) * 768 bytes) in one
// chunk; its FFN-down layer (K = 3072) takes three. More cost BERT FP32 b32 its peak memory below
// eager PyTorch's (an H100: a 64 MB cap made it 590 MiB against eager's 581).
constexpr size_t kSplitTf32MaxScratch = size_t{85} << 19;  // 42.5 MiB
constexpr int64_t kSplitTf32MinColumns = 256;

struct SplitTf32Chunks {
  int64_t columns = 0;
  size_t w_offset = 0, lt_offset = 0;
};

SplitTf32Chunks split_tf32_chunks(int64_t m, int64_t n, int64_t k, size_t workspace_bytes);

// The workspace those tactics want for an [m, k] x [n, k]^T product: all of K in one chunk, the
// split operands capped at kSplitTf32MaxScratch, plus cuBLASLt's share.
size_t split_tf32_workspace(int64_t m, int64_t n, int64_t k);

}  // namespace kiln
