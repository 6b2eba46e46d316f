// See matmul_epilogue.h. One grid-stride pass over y; rows whose length is a multiple of the
// 16-byte vector width, with 16-byte aligned tensors, take 16-byte loads and stores (a vector
// never straddles two rows, so its bias is one aligned vector too).
#include "kernels/cuda/activation_math.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/matmul_epilogue.h"

namespace kiln {
namespace {

template <typename T>
__device__ __forceinline__ float epilogue_value(float v, const ActivationParams& p, bool act, const T* bias,
                                                int64_t col, const T* residual, int64_t i) {
  if (bias) v += to_float(bias[col]);
  if (act) v = activate(p, v);
  if (residual) v += to_float(residual[i]);
  return v;
}

template <typename T>
__global__ void fc_epilogue_kernel(ActivationParams p, bool act, T* __restrict__ y,
                                   const T* __restrict__ bias, const T* __restrict__ residual, int64_t total,
                                   int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = from_float<T>(epilogue_value(to_float(y[i]), p, act, bias, i % n, residual, i));
  }
}

template <typename T>
__global__ void fc_epilogue_vec_kernel(ActivationParams p, bool act, Vec16<T>* __restrict__ y,
                                       const Vec16<T>* __restrict__ bias,
                                       const Vec16<T>* __restrict__ residual, int64_t total_vec,
                                       int64_t n_vec) {
  constexpr int V = Vec16<T>::kSize;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total_vec;
       i += int64_t{gridDim.x} * blockDim.x) {
    Vec16<T> v = y[i];
    Vec16<T> b, r;
    if (bias) b = bias[i % n_vec];
    if (residual) r = residual[i];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      float f = to_float(v.v[j]);
      if (bias) f += to_float(b.v[j]);
      if (act) f = activate(p, f);
      if (residual) f += to_float(r.v[j]);
      v.v[j] = from_float<T>(f);
    }
    y[i] = v;
  }
}

}  // namespace

void launch_fc_epilogue(const FcEpilogue& e, cudaStream_t stream) {
  const int64_t total = e.rows * e.n;
  if (total == 0) return;
  ActivationParams p{e.act_type, e.alpha, e.beta, e.threshold};
  const bool act = e.act_type >= 0;
  constexpr int kBlock = 256;
  dispatch_floating(e.dtype, "fully_connected epilogue", [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = Vec16<T>::kSize;
    auto* y = static_cast<T*>(e.y);
    auto* bias = static_cast<const T*>(e.bias);
    auto* residual = static_cast<const T*>(e.residual);
    const bool vec =
        e.n % V == 0 && aligned16(y) && (!bias || aligned16(bias)) && (!residual || aligned16(residual));
    if (vec) {
      const int64_t total_vec = total / V;
      fc_epilogue_vec_kernel<T><<<grid_for(total_vec, kBlock), kBlock, 0, stream>>>(
          p, act, reinterpret_cast<Vec16<T>*>(y), reinterpret_cast<const Vec16<T>*>(bias),
          reinterpret_cast<const Vec16<T>*>(residual), total_vec, e.n / V);
    } else {
      fc_epilogue_kernel<T>
          <<<grid_for(total, kBlock), kBlock, 0, stream>>>(p, act, y, bias, residual, total, e.n);
    }
  });
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln
