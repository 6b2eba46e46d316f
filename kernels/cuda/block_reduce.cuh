// Warp-shuffle and block reductions for Kiln's row kernels (reductions, softmax, norms).
#pragma once

#include <cuda_runtime.h>

namespace kiln {

// Block sizes of row kernels are multiples of 32, at most 1024 (so at most 32 warps).
constexpr int kMaxWarps = 32;

// Row kernels use one block per row; this picks a block for rows of `len` elements: a warp for
// short rows (few idle threads), up to 256 threads for long ones.
inline int row_block_size(int64_t len) {
  int b = 32;
  while (b < 256 && b < len) b *= 2;
  return b;
}

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  return v;
}

// Combines every thread's v with op (identity: op's neutral element); every thread gets the
// result. `shared` holds kMaxWarps values; it may be reused right after the call returns.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T identity, Op op, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? shared[lane] : identity;
    v = warp_reduce(v, op);
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  T result = shared[0];
  __syncthreads();
  return result;
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

struct MaxOp {  // NaN-propagating for floating types, as torch
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return (a != a || a > b) ? a : b;
  }
};

}  // namespace kiln
