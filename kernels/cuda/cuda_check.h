// Error checks for CUDA runtime, cuBLASLt and cuDNN calls: every failure becomes a kiln::Error that
// names the call and the CUDA error string.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "ir/error.h"

#define KILN_CUDA_CHECK(expr)                                                                              \
  do {                                                                                                     \
    cudaError_t kiln_cuda_err_ = (expr);                                                                   \
    KILN_CHECK(kiln_cuda_err_ == cudaSuccess, #expr << " failed: " << cudaGetErrorName(kiln_cuda_err_)     \
                                                    << " (" << cudaGetErrorString(kiln_cuda_err_) << ")"); \
  } while (0)

#define KILN_CUBLAS_CHECK(expr)                                                          \
  do {                                                                                   \
    cublasStatus_t kiln_cublas_st_ = (expr);                                             \
    KILN_CHECK(kiln_cublas_st_ == CUBLAS_STATUS_SUCCESS,                                 \
               #expr << " failed: cuBLAS status " << static_cast<int>(kiln_cublas_st_)); \
  } while (0)

#define KILN_CUDNN_CHECK(expr)                                               \
  do {                                                                       \
    cudnnStatus_t kiln_cudnn_st_ = (expr);                                   \
    KILN_CHECK(kiln_cudnn_st_ == CUDNN_STATUS_SUCCESS,                       \
               #expr << " failed: " << cudnnGetErrorString(kiln_cudnn_st_)); \
  } while (0)

// After a kernel launch: reports a bad launch configuration at once (does not synchronize).
#define KILN_CUDA_CHECK_LAUNCH() KILN_CUDA_CHECK(cudaGetLastError())
