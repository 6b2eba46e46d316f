// See matmul_epilogue.h. One grid-stride pass over y; rows whose length is a multiple of the
// 16-byte vector width, with 16-byte aligned tensors, take 16-byte loads and stores (a vector
// never straddles two rows, so its bias is one aligned vector too).
#include <algorithm>

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

// One warp per output element (row, col), consecutive warps along a row's columns (they share
// the x row in L1); lanes stride over k, 16 bytes at a time when kVec.
template <typename T, bool kVec>
__global__ void fc_gemv_kernel(ActivationParams p, bool act, const T* __restrict__ x, const T* __restrict__ w,
                               T* __restrict__ y, const T* __restrict__ bias, const T* __restrict__ residual,
                               int64_t total, int64_t n, int64_t k) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  for (int64_t o = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32; o < total; o += warps) {
    const int64_t row = o / n, col = o % n;
    float s = 0.f;
    if constexpr (kVec) {
      constexpr int V = Vec16<T>::kSize;
      const auto* xv = reinterpret_cast<const Vec16<T>*>(x + row * k);
      const auto* wv = reinterpret_cast<const Vec16<T>*>(w + col * k);
      for (int64_t j = lane; j < k / V; j += 32) {
        const Vec16<T> a = xv[j], b = wv[j];
#pragma unroll
        for (int t = 0; t < V; ++t) s = fmaf(to_float(a.v[t]), to_float(b.v[t]), s);
      }
    } else {
      for (int64_t j = lane; j < k; j += 32) s = fmaf(to_float(x[row * k + j]), to_float(w[col * k + j]), s);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (lane == 0) y[o] = from_float<T>(epilogue_value(s, p, act, bias, col, residual, o));
  }
}

__device__ __forceinline__ void split_value(float x, float& hi, float& lo) {
  if (!isfinite(x)) {
    hi = x, lo = 0.f;
    return;
  }
  uint32_t bits = __float_as_uint(x);
  float h = __uint_as_float((bits + 0x1000u) & 0xffffe000u);  // nearest, ties away from zero
  if (!isfinite(h)) h = __uint_as_float(bits & 0xffffe000u);  // rounding up overflowed
  hi = h, lo = x - h;
}

// One thread per four (vec) or one source values; rows of dst are 2 * cols long.
template <bool kVec>
__global__ void split_tf32_kernel(const float* __restrict__ src, int64_t ld, int64_t rows, int64_t col0,
                                  int64_t cols, float* __restrict__ dst, bool hi_first) {
  constexpr int V = kVec ? 4 : 1;
  const int64_t per_row = cols / V, total = rows * per_row;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / per_row, c = (i % per_row) * V;
    float x[V], hi[V], lo[V];
    if constexpr (kVec) {
      const float4 v = *reinterpret_cast<const float4*>(src + r * ld + col0 + c);
      x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
    } else {
      x[0] = src[r * ld + col0 + c];
    }
#pragma unroll
    for (int j = 0; j < V; ++j) split_value(x[j], hi[j], lo[j]);
    float* row = dst + r * 2 * cols;
    float* first = row + c;
    float* second = row + cols + c;
    const float* a = hi_first ? hi : lo;
    const float* b = hi_first ? lo : hi;
    if constexpr (kVec) {
      *reinterpret_cast<float4*>(first) = make_float4(a[0], a[1], a[2], a[3]);
      *reinterpret_cast<float4*>(second) = make_float4(b[0], b[1], b[2], b[3]);
    } else {
      first[0] = a[0], second[0] = b[0];
    }
  }
}

}  // namespace

void launch_split_tf32(const SplitTf32& s, cudaStream_t stream) {
  const int64_t total = s.rows * s.cols;
  if (total == 0) return;
  constexpr int kBlock = 256;
  const bool vec =
      s.cols % 4 == 0 && s.ld % 4 == 0 && s.col0 % 4 == 0 && aligned16(s.src) && aligned16(s.dst);
  if (vec) {
    split_tf32_kernel<true><<<grid_for(total / 4, kBlock), kBlock, 0, stream>>>(s.src, s.ld, s.rows, s.col0,
                                                                                s.cols, s.dst, s.hi_first);
  } else {
    split_tf32_kernel<false><<<grid_for(total, kBlock), kBlock, 0, stream>>>(s.src, s.ld, s.rows, s.col0,
                                                                             s.cols, s.dst, s.hi_first);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

namespace {
size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }
}  // namespace

SplitTf32Chunks split_tf32_chunks(int64_t m, int64_t n, int64_t k, size_t workspace_bytes) {
  if (m <= 0 || n <= 0 || k <= 0 || workspace_bytes < kSplitTf32LtBytes + 512) return {};
  // kc columns take align256(8 m kc) + align256(8 n kc) <= 8 (m + n) kc + 510 bytes.
  const size_t room = workspace_bytes - kSplitTf32LtBytes - 512;
  int64_t fit = static_cast<int64_t>(room / (8 * static_cast<size_t>(m + n)));
  SplitTf32Chunks c;
  if (fit >= k) {
    c.columns = k;
  } else {
    fit -= fit % 4;  // chunks of a multiple of 4 columns keep rows 16-byte aligned
    if (fit < kSplitTf32MinColumns) return {};
    const int64_t chunks = (k + fit - 1) / fit;
    c.columns = ((k + chunks - 1) / chunks + 3) / 4 * 4;  // balanced, <= fit
  }
  c.w_offset = align256(8 * static_cast<size_t>(m) * static_cast<size_t>(c.columns));
  c.lt_offset = c.w_offset + align256(8 * static_cast<size_t>(n) * static_cast<size_t>(c.columns));
  return c;
}

size_t split_tf32_workspace(int64_t m, int64_t n, int64_t k) {
  if (m <= 0 || n <= 0 || k <= 0) return 0;
  const size_t scratch = 8 * static_cast<size_t>(m + n) * static_cast<size_t>(k) + 512;
  return kSplitTf32LtBytes + std::min(scratch, kSplitTf32MaxScratch);
}

void launch_fc_gemv(const FcGemv& g, cudaStream_t stream) {
  const FcEpilogue& e = g.e;
  const int64_t total = e.rows * e.n;
  if (total == 0) return;
  ActivationParams p{e.act_type, e.alpha, e.beta, e.threshold};
  constexpr int kBlock = 256, kWarps = kBlock / 32;
  dispatch_floating(e.dtype, "fully_connected", [&](auto tag) {
    using T = decltype(tag);
    auto* x = static_cast<const T*>(g.x);
    auto* w = static_cast<const T*>(g.w);
    auto* y = static_cast<T*>(e.y);
    auto* bias = static_cast<const T*>(e.bias);
    auto* residual = static_cast<const T*>(e.residual);
    const unsigned grid = grid_for(total, kWarps);
    if (g.k % Vec16<T>::kSize == 0 && aligned16(x) && aligned16(w)) {
      fc_gemv_kernel<T, true>
          <<<grid, kBlock, 0, stream>>>(p, e.act_type >= 0, x, w, y, bias, residual, total, e.n, g.k);
    } else {
      fc_gemv_kernel<T, false>
          <<<grid, kBlock, 0, stream>>>(p, e.act_type >= 0, x, w, y, bias, residual, total, e.n, g.k);
    }
  });
  KILN_CUDA_CHECK_LAUNCH();
}

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
