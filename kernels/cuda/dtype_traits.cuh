// Device-side element types and float conversions shared by Kiln's own CUDA kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "ir/dtype.h"
#include "ir/error.h"

namespace kiln {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(int8_t x) { return static_cast<float>(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <>
__device__ __forceinline__ int8_t from_float<int8_t>(float x) {  // nearest, saturated (NaN: 0)
  return static_cast<int8_t>(rintf(fminf(fmaxf(x, -128.f), 127.f)));
}

// Calls f(T{}) with T the device type of a floating dtype.
template <typename F>
void dispatch_floating(DataType t, const char* who, F&& f) {
  switch (t) {
    case DataType::kFloat32:
      f(float{});
      return;
    case DataType::kFloat16:
      f(__half{});
      return;
    case DataType::kBFloat16:
      f(__nv_bfloat16{});
      return;
    default:
      KILN_FAIL(who << ": no CUDA kernel for dtype " << dtype_name(t));
  }
}

// Calls f(T{}) with T the device type of a floating, int32 or int64 dtype.
template <typename F>
void dispatch_numeric(DataType t, const char* who, F&& f) {
  if (t == DataType::kInt32) {
    f(int32_t{});
  } else if (t == DataType::kInt64) {
    f(int64_t{});
  } else {
    dispatch_floating(t, who, f);
  }
}

// Calls f(W{}) with W an unsigned word of `bytes` bytes: the raw element type of a dtype.
template <typename F>
void dispatch_word(size_t bytes, const char* who, F&& f) {
  switch (bytes) {
    case 1:
      f(uint8_t{});
      return;
    case 2:
      f(uint16_t{});
      return;
    case 4:
      f(uint32_t{});
      return;
    case 8:
      f(uint64_t{});
      return;
    default:
      KILN_FAIL(who << ": no CUDA kernel for " << bytes << "-byte elements");
  }
}

// Calls f(I{}) with I the index type of an int32/int64 tensor.
template <typename F>
void dispatch_index(DataType t, const char* who, F&& f) {
  if (t == DataType::kInt32) {
    f(int32_t{});
  } else if (t == DataType::kInt64) {
    f(int64_t{});
  } else {
    KILN_FAIL(who << ": indices must be int32 or int64, got " << dtype_name(t));
  }
}

inline unsigned grid_for(int64_t n, int block) {
  int64_t g = (n + block - 1) / block;
  return static_cast<unsigned>(g < 65535 * 16 ? g : 65535 * 16);  // grid-stride loops cover the rest
}

}  // namespace kiln
