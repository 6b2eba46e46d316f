// Depthwise convolution, memory bound: each output element reads kh * kw inputs of its own channel
// (neighbouring outputs share them through L1) and as many weights.
//
// Channels last: threadIdx.x walks the channels in vectors of V elements (up to 16 bytes: one
// load per tap covers V channels, and adjacent threads read adjacent vectors), threadIdx.y and the
// grid walk the output pixels. The block's weights sit in shared memory as float, [tap][j][x]
// (vector element j of thread x), so the reads are conflict-free. Square 3x3 and 5x5 filters with
// stride 1 or 2 and no dilation (mobilenet's) take a register-blocked variant: a thread computes
// 4 adjacent output pixels of a row; per filter row it loads the input segment they share once
// (converted to float once) and each weight vector once for all of them. (ConvNeXt's 7x7 in that
// variant measured slower at batch 1 on an H200, 0.566 against 0.462 ms for its 18 layers: a
// quarter of the threads for little work; it stays on the generic kernel.) That is variant 0;
// variants 1 (one pixel per thread, taps unrolled, no branches) and 2 (two pixels per thread)
// are further tactics for square 3x3/5x5/7x7 filters, and the builder's timing picks per layer.
// Channels first: one block per (sample, channel, tile of output pixels); threads walk the pixels,
// the channel's weights are in shared memory.
// Both finish with the epilogue in float: + bias[c], + residual, activation.
//
// The kernels are many template instances (dtype x vector width x filter x variant): a translation
// unit per dtype (depthwise_convolution_{float,half,bfloat16}.cu) instantiates launch_typed for
// it, so that no single file is a build's longest step; depthwise_convolution.cu dispatches.
#pragma once

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/depthwise_convolution.h"
#include "kernels/cuda/dtype_traits.cuh"

namespace kiln {
namespace depthwise_detail {

constexpr int kThreads = 256;

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T>
__device__ __forceinline__ float finish(const DepthwiseParams& p, float acc, const T* bias, const T* residual,
                                        int64_t c, int64_t at) {
  if (bias) acc += to_float(bias[c]);
  if (residual) acc += to_float(residual[at]);
  return p.activate ? activate(p.act, acc) : acc;
}

// Stages the weights of the block's channel vectors (blockIdx.y * blockDim.x + x) in w_smem and
// returns the thread's channel vector, which may lie past C / V (the thread then returns, having
// taken part in the staging). The block's channels' weights are one contiguous run of the weight
// tensor: read in order (coalesced, 16-byte vectors where the run is aligned) and scattered into
// the [tap][j][x] layout; the channels past C get zeros.
template <typename T, int V>
__device__ __forceinline__ int64_t stage_weights_nhwc(const DepthwiseParams& p, const T* __restrict__ w,
                                                      float* w_smem) {
  const int64_t v0 = int64_t{blockIdx.y} * blockDim.x;
  const int taps = p.kh * p.kw, bx = blockDim.x, threads = bx * blockDim.y;
  const int tid = threadIdx.y * bx + threadIdx.x;
  const int64_t c0 = v0 * V;
  const int count = static_cast<int>(min(int64_t{bx} * V, p.c - c0)) * taps;  // elements of the run
  const T* run = w + c0 * taps;
  auto put = [&](int i, float value) {
    const int local = i / taps, tap = i - local * taps;  // channel c0 + local
    const int tx = local / V, j = local - tx * V;
    w_smem[(tap * V + j) * bx + tx] = value;
  };
  constexpr int W = 16 / sizeof(T);
  if (reinterpret_cast<uintptr_t>(run) % 16 == 0 && count % W == 0) {
    for (int i = tid * W; i < count; i += threads * W) {
      const Pack<T, W> v = *reinterpret_cast<const Pack<T, W>*>(run + i);
#pragma unroll
      for (int k = 0; k < W; ++k) put(i + k, to_float(v.v[k]));
    }
  } else {
    for (int i = tid; i < count; i += threads) put(i, to_float(run[i]));
  }
  for (int i = count + tid; i < taps * V * bx; i += threads) put(i, 0.f);
  __syncthreads();
  return v0 + threadIdx.x;
}

// K x K filter, stride S, dilation 1; thread (x, y) computes channel vector x of P adjacent output
// pixels [ox0, ox0 + P) of one output row.
template <typename T, int V, int K, int S, int P>
__global__ void __launch_bounds__(kThreads)
    depthwise_nhwc_blocked_kernel(DepthwiseParams p, const T* __restrict__ x, const T* __restrict__ w,
                                  const T* __restrict__ bias, const T* __restrict__ residual,
                                  T* __restrict__ y) {
  constexpr int kSegment = (P - 1) * S + K;  // input columns the thread's pixels read per row
  extern __shared__ float w_smem[];          // [tap][j][threadIdx.x]
  const int bx = blockDim.x;
  const int64_t vec = stage_weights_nhwc<T, V>(p, w, w_smem);
  if (vec >= p.c / V) return;
  const int64_t groups_per_row = (p.ow + P - 1) / P;
  const int64_t groups = p.n * p.oh * groups_per_row;
  for (int64_t gi = int64_t{blockIdx.x} * blockDim.y + threadIdx.y; gi < groups;
       gi += int64_t{gridDim.x} * blockDim.y) {
    const int64_t ox0 = gi % groups_per_row * P, rest = gi / groups_per_row;
    const int64_t oy = rest % p.oh, n = rest / p.oh;
    float acc[P][V];
#pragma unroll
    for (int q = 0; q < P; ++q) {
#pragma unroll
      for (int j = 0; j < V; ++j) acc[q][j] = 0.f;
    }
    const int64_t ix0 = ox0 * S - p.pad_w;
#pragma unroll 1
    for (int r = 0; r < K; ++r) {
      const int64_t iy = oy * S - p.pad_h + r;
      if (iy < 0 || iy >= p.h) continue;
      const T* row = x + ((n * p.h + iy) * p.w) * p.c + vec * V;
      float seg[kSegment][V];
#pragma unroll
      for (int l = 0; l < kSegment; ++l) {
        const int64_t ix = ix0 + l;
        if (ix >= 0 && ix < p.w) {
          const Pack<T, V> in = *reinterpret_cast<const Pack<T, V>*>(row + ix * p.c);
#pragma unroll
          for (int j = 0; j < V; ++j) seg[l][j] = to_float(in.v[j]);
        } else {
#pragma unroll
          for (int j = 0; j < V; ++j) seg[l][j] = 0.f;
        }
      }
#pragma unroll
      for (int s = 0; s < K; ++s) {
        const float* wt = w_smem + (r * K + s) * V * bx + threadIdx.x;
        float wv[V];
#pragma unroll
        for (int j = 0; j < V; ++j) wv[j] = wt[j * bx];
#pragma unroll
        for (int q = 0; q < P; ++q) {
#pragma unroll
          for (int j = 0; j < V; ++j) acc[q][j] = fmaf(seg[q * S + s][j], wv[j], acc[q][j]);
        }
      }
    }
#pragma unroll
    for (int q = 0; q < P; ++q) {
      if (ox0 + q >= p.ow) break;
      const int64_t at = (((n * p.oh + oy) * p.ow) + ox0 + q) * p.c + vec * V;
      Pack<T, V> out;
#pragma unroll
      for (int j = 0; j < V; ++j)
        out.v[j] = from_float<T>(finish(p, acc[q][j], bias, residual, vec * V + j, at + j));
      *reinterpret_cast<Pack<T, V>*>(y + at) = out;
    }
  }
}

// One output pixel's taps, any filter size, stride and dilation: taps outside the input are
// skipped.
template <typename T, int V>
__device__ __forceinline__ void accumulate_taps(const DepthwiseParams& p, const T* __restrict__ x,
                                                const float* w_smem, int64_t vec, int64_t n, int64_t oy,
                                                int64_t ox, float (&acc)[V]) {
  const int bx = blockDim.x;
  for (int r = 0; r < p.kh; ++r) {
    const int64_t iy = oy * p.stride_h - p.pad_h + int64_t{r} * p.dil_h;
    if (iy < 0 || iy >= p.h) continue;
    for (int s = 0; s < p.kw; ++s) {
      const int64_t ix = ox * p.stride_w - p.pad_w + int64_t{s} * p.dil_w;
      if (ix < 0 || ix >= p.w) continue;
      const Pack<T, V> in =
          *reinterpret_cast<const Pack<T, V>*>(x + ((n * p.h + iy) * p.w + ix) * p.c + vec * V);
      const float* wt = w_smem + (r * p.kw + s) * V * bx + threadIdx.x;
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] = fmaf(to_float(in.v[j]), wt[j * bx], acc[j]);
    }
  }
}

// One output pixel's taps of a K x K filter without dilation, unrolled along each filter row.
// Taps outside the input read a clamped in-bounds address and take 0 in its place, so a row's K
// loads carry no branches and are in flight at once (the generic loop waits on each; on
// ConvNeXt's 7x7 layers at batch 1 that latency was the cost). All K * K unrolled needed 255
// registers and spilled (float16, 16-byte vectors).
template <typename T, int V, int K>
__device__ __forceinline__ void accumulate_taps_unrolled(const DepthwiseParams& p, const T* __restrict__ x,
                                                         const float* w_smem, int64_t vec, int64_t n,
                                                         int64_t oy, int64_t ox, float (&acc)[V]) {
  const int bx = blockDim.x;
  const T* image = x + n * p.h * p.w * p.c + vec * V;
#pragma unroll 1
  for (int r = 0; r < K; ++r) {
    const int64_t iy = oy * p.stride_h - p.pad_h + r;
    const bool row_in = iy >= 0 && iy < p.h;
    const int64_t row = min(max(iy, int64_t{0}), p.h - 1) * p.w;
#pragma unroll
    for (int s = 0; s < K; ++s) {
      const int64_t ix = ox * p.stride_w - p.pad_w + s;
      const bool in_bounds = row_in && ix >= 0 && ix < p.w;
      const int64_t col = min(max(ix, int64_t{0}), p.w - 1);
      const Pack<T, V> in = *reinterpret_cast<const Pack<T, V>*>(image + (row + col) * p.c);
      const float* wt = w_smem + (r * K + s) * V * bx + threadIdx.x;
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] = fmaf(in_bounds ? to_float(in.v[j]) : 0.f, wt[j * bx], acc[j]);
    }
  }
}

// One output pixel per thread: K = 0 takes any filter (accumulate_taps), K > 0 a K x K one
// without dilation (accumulate_taps_unrolled; variant 1).
template <typename T, int V, int K>
__global__ void __launch_bounds__(kThreads)
    depthwise_nhwc_kernel(DepthwiseParams p, const T* __restrict__ x, const T* __restrict__ w,
                          const T* __restrict__ bias, const T* __restrict__ residual, T* __restrict__ y) {
  extern __shared__ float w_smem[];  // [tap][j][threadIdx.x]
  const int64_t vec = stage_weights_nhwc<T, V>(p, w, w_smem);
  if (vec >= p.c / V) return;
  const int64_t pixels = p.n * p.oh * p.ow;
  for (int64_t pix = int64_t{blockIdx.x} * blockDim.y + threadIdx.y; pix < pixels;
       pix += int64_t{gridDim.x} * blockDim.y) {
    const int64_t ox = pix % p.ow, rest = pix / p.ow;
    const int64_t oy = rest % p.oh, n = rest / p.oh;
    float acc[V];
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = 0.f;
    if constexpr (K == 0) {
      accumulate_taps<T, V>(p, x, w_smem, vec, n, oy, ox, acc);
    } else {
      accumulate_taps_unrolled<T, V, K>(p, x, w_smem, vec, n, oy, ox, acc);
    }
    const int64_t at = pix * p.c + vec * V;
    Pack<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j)
      out.v[j] = from_float<T>(finish(p, acc[j], bias, residual, vec * V + j, at + j));
    *reinterpret_cast<Pack<T, V>*>(y + at) = out;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    depthwise_nchw_kernel(DepthwiseParams p, int64_t tiles, const T* __restrict__ x, const T* __restrict__ w,
                          const T* __restrict__ bias, const T* __restrict__ residual, T* __restrict__ y) {
  extern __shared__ float w_smem[];  // the channel's taps
  const int taps = p.kh * p.kw;
  const int64_t plane = blockIdx.x / tiles;  // n * C + c
  const int64_t c = plane % p.c;
  for (int i = threadIdx.x; i < taps; i += blockDim.x) w_smem[i] = to_float(w[c * taps + i]);
  __syncthreads();
  const int64_t pix = (blockIdx.x % tiles) * blockDim.x + threadIdx.x;
  if (pix >= p.oh * p.ow) return;
  const int64_t ox = pix % p.ow, oy = pix / p.ow;
  const T* xp = x + plane * p.h * p.w;
  float acc = 0.f;
  for (int r = 0; r < p.kh; ++r) {
    const int64_t iy = oy * p.stride_h - p.pad_h + int64_t{r} * p.dil_h;
    if (iy < 0 || iy >= p.h) continue;
    for (int s = 0; s < p.kw; ++s) {
      const int64_t ix = ox * p.stride_w - p.pad_w + int64_t{s} * p.dil_w;
      if (ix >= 0 && ix < p.w) acc = fmaf(to_float(xp[iy * p.w + ix]), w_smem[r * p.kw + s], acc);
    }
  }
  const int64_t at = plane * p.oh * p.ow + pix;
  y[at] = from_float<T>(finish(p, acc, bias, residual, c, at));
}

inline bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

template <typename T, int V>
void launch_nhwc(const DepthwiseParams& p, const T* x, const T* w, const T* bias, const T* residual, T* y,
                 cudaStream_t stream) {
  const int64_t vecs = p.c / V;
  const int taps = p.kh * p.kw;
  int bx = static_cast<int>(std::min<int64_t>(vecs, 32));
  while (bx > 1 && sizeof(float) * taps * V * bx > kMaxSmem) bx /= 2;
  const int by = kThreads / bx;
  const size_t smem = sizeof(float) * taps * V * bx;
  const unsigned channel_blocks = static_cast<unsigned>((vecs + bx - 1) / bx);
  // Up to kItemsPerThread work items per thread (the block's weight staging is paid once for
  // them), unless that leaves fewer than kMinBlocks blocks.
  constexpr int64_t kItemsPerThread = 4, kMinBlocks = 512;
  auto grid_for_items = [&](int64_t items) {
    const int64_t one_each = (items + by - 1) / by;
    const int64_t spread = std::max<int64_t>((one_each + kItemsPerThread - 1) / kItemsPerThread,
                                             (kMinBlocks + channel_blocks - 1) / channel_blocks);
    return dim3(static_cast<unsigned>(std::min<int64_t>({one_each, spread, 65535})), channel_blocks);
  };
  const int64_t pixels = p.n * p.oh * p.ow;
  auto per_pixel = [&](auto kernel) {
    kernel<<<grid_for_items(pixels), dim3(bx, by), smem, stream>>>(p, x, w, bias, residual, y);
  };
  auto blocked = [&](auto kernel, int pixels_per_thread) {
    const int64_t row_groups = p.n * p.oh * ((p.ow + pixels_per_thread - 1) / pixels_per_thread);
    kernel<<<grid_for_items(row_groups), dim3(bx, by), smem, stream>>>(p, x, w, bias, residual, y);
  };
  const int k = p.kh, s = p.stride_h;
  switch (p.variant) {
    case 1:  // depthwise_refusal checked: square 3, 5 or 7, no dilation
      if (k == 3) return per_pixel(depthwise_nhwc_kernel<T, V, 3>);
      if (k == 5) return per_pixel(depthwise_nhwc_kernel<T, V, 5>);
      return per_pixel(depthwise_nhwc_kernel<T, V, 7>);
    case 2:  // and stride 1 or 2
      if (k == 3)
        return s == 1 ? blocked(depthwise_nhwc_blocked_kernel<T, V, 3, 1, 2>, 2)
                      : blocked(depthwise_nhwc_blocked_kernel<T, V, 3, 2, 2>, 2);
      if (k == 5)
        return s == 1 ? blocked(depthwise_nhwc_blocked_kernel<T, V, 5, 1, 2>, 2)
                      : blocked(depthwise_nhwc_blocked_kernel<T, V, 5, 2, 2>, 2);
      return s == 1 ? blocked(depthwise_nhwc_blocked_kernel<T, V, 7, 1, 2>, 2)
                    : blocked(depthwise_nhwc_blocked_kernel<T, V, 7, 2, 2>, 2);
    default:
      break;
  }
  const bool plain = square_undilated(p) && p.stride_h == p.stride_w;
  if (plain && k == 3 && s == 1) return blocked(depthwise_nhwc_blocked_kernel<T, V, 3, 1, 4>, 4);
  if (plain && k == 3 && s == 2) return blocked(depthwise_nhwc_blocked_kernel<T, V, 3, 2, 4>, 4);
  if (plain && k == 5 && s == 1) return blocked(depthwise_nhwc_blocked_kernel<T, V, 5, 1, 4>, 4);
  if (plain && k == 5 && s == 2) return blocked(depthwise_nhwc_blocked_kernel<T, V, 5, 2, 4>, 4);
  per_pixel(depthwise_nhwc_kernel<T, V, 0>);
}

template <typename T>
void launch_typed(const DepthwiseParams& p, const void* xv, const void* wv, const void* bv, const void* rv,
                  void* yv, cudaStream_t stream) {
  const T *x = static_cast<const T*>(xv), *w = static_cast<const T*>(wv), *bias = static_cast<const T*>(bv),
          *residual = static_cast<const T*>(rv);
  T* y = static_cast<T*>(yv);
  if (p.channels_last) {
    // The widest vector of at most 16 bytes that divides C and every tensor's alignment.
    constexpr int kWide = 16 / sizeof(T);
    auto fits = [&](int v) {
      const size_t bytes = sizeof(T) * v;
      return p.c % v == 0 && aligned(x, bytes) && aligned(y, bytes) &&
             (!residual || aligned(residual, bytes));
    };
    if (fits(kWide)) return launch_nhwc<T, kWide>(p, x, w, bias, residual, y, stream);
    if (fits(2)) return launch_nhwc<T, 2>(p, x, w, bias, residual, y, stream);
    return launch_nhwc<T, 1>(p, x, w, bias, residual, y, stream);
  }
  const int64_t tiles = (p.oh * p.ow + kThreads - 1) / kThreads;
  const int64_t blocks = p.n * p.c * tiles;
  KILN_CHECK(blocks <= INT32_MAX, "depthwise convolution: " << blocks << " blocks exceed the grid limit");
  depthwise_nchw_kernel<T><<<static_cast<unsigned>(blocks), kThreads, sizeof(float) * p.kh * p.kw, stream>>>(
      p, tiles, x, w, bias, residual, y);
}

}  // namespace depthwise_detail
}  // namespace kiln
