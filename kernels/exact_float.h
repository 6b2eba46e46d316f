// Host/device float32 arithmetic that rounds each operation, never contracted into a fused
// multiply-add, so the reference and CUDA kernels that share an index computation (resize,
// grid_sample) pick the same source pixels.
#pragma once

#ifdef __CUDACC__
#define KILN_HD __host__ __device__ __forceinline__
#else
#define KILN_HD inline
#endif

namespace kiln {

KILN_HD float exact_mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

KILN_HD float exact_add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

}  // namespace kiln
