#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "erfinv.h"

namespace kiln_example {
namespace {

__device__ float load(const float* p, int64_t i) { return p[i]; }
__device__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ void store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

template <typename T>
__global__ void erfinv_kernel(const T* in, T* out, int64_t n, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    store(out, i, scale * erfinvf(load(in, i)));
}

template <typename T>
void launch(const void* in, void* out, int64_t n, float scale, cudaStream_t stream) {
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  erfinv_kernel<T><<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), threads, 0, stream>>>(
      static_cast<const T*>(in), static_cast<T*>(out), n, scale);
}

}  // namespace

void launch_erfinv(const void* in, void* out, int64_t n, int dtype, float scale, void* stream) {
  if (n == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == 0)
    launch<float>(in, out, n, scale, s);
  else if (dtype == 1)
    launch<__half>(in, out, n, scale, s);
  else
    launch<__nv_bfloat16>(in, out, n, scale, s);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("erfinv kernel launch: ") + cudaGetErrorString(e));
}

}  // namespace kiln_example
