// Depthwise convolution, memory bound: each output element reads kh * kw inputs of its own channel
// (neighbouring outputs share them through L1) and as many weights.
//
// Channels last: threadIdx.x walks the channels in vectors of V elements (up to 16 bytes: one
// load per tap covers V channels, and adjacent threads read adjacent vectors), threadIdx.y and the
// grid walk the output pixels. The block's weights sit in shared memory as float, [tap][j][x]
// (vector element j of thread x), so the reads are conflict-free. Square 3x3 and 5x5 filters with
// stride 1 or 2 and no dilation (mobilenet's) take a register-blocked variant: a thread computes
// kPixels adjacent output pixels of a row; per filter row it loads the input segment they share
// once (converted to float once) and each weight vector once for all of them. (ConvNeXt's 7x7 in
// that variant measured slower at batch 1 on an H200, 0.566 against 0.462 ms for its 18 layers:
// a quarter of the threads for little work; it stays on the generic kernel.)
// Channels first: one block per (sample, channel, tile of output pixels); threads walk the pixels,
// the channel's weights are in shared memory.
// Both finish with the epilogue in float: + bias[c], + residual, activation.
#include "kernels/cuda/depthwise_convolution.h"

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"

namespace kiln {
namespace {

constexpr int kThreads = 256;
constexpr size_t kMaxSmem = 48 * 1024;

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

constexpr int kPixels = 4;  // output pixels per thread in the register-blocked kernel

template <typename T, int V>
__device__ __forceinline__ void load_weights_nhwc(const DepthwiseParams& p, const T* __restrict__ w,
                                                  float* w_smem, int64_t v0) {
  // The block's channels' weights are one contiguous run of the weight tensor: read it in order
  // (coalesced) and scatter into the [tap][j][x] layout.
  const int taps = p.kh * p.kw, bx = blockDim.x;
  const int tid = threadIdx.y * bx + threadIdx.x;
  const int64_t c0 = v0 * V;
  for (int i = tid; i < taps * V * bx; i += bx * blockDim.y) {
    const int local = i / taps, tap = i - local * taps;  // channel c0 + local
    const int tx = local / V, j = local - tx * V;
    w_smem[(tap * V + j) * bx + tx] = c0 + local < p.c ? to_float(w[c0 * taps + i]) : 0.f;
  }
  __syncthreads();
}

// K x K filter, stride S, dilation 1; thread (x, y) computes channel vector x of kPixels adjacent
// output pixels [ox0, ox0 + kPixels) of one output row.
template <typename T, int V, int K, int S>
__global__ void __launch_bounds__(kThreads)
    depthwise_nhwc_blocked_kernel(DepthwiseParams p, const T* __restrict__ x, const T* __restrict__ w,
                                  const T* __restrict__ bias, const T* __restrict__ residual,
                                  T* __restrict__ y) {
  constexpr int kSegment = (kPixels - 1) * S + K;  // input columns the thread's pixels read per row
  extern __shared__ float w_smem[];                // [tap][j][threadIdx.x]
  const int bx = blockDim.x;
  const int64_t v0 = int64_t{blockIdx.y} * bx;
  load_weights_nhwc<T, V>(p, w, w_smem, v0);
  const int64_t vec = v0 + threadIdx.x;
  if (vec >= p.c / V) return;
  const int64_t groups_per_row = (p.ow + kPixels - 1) / kPixels;
  const int64_t groups = p.n * p.oh * groups_per_row;
  for (int64_t gi = int64_t{blockIdx.x} * blockDim.y + threadIdx.y; gi < groups;
       gi += int64_t{gridDim.x} * blockDim.y) {
    const int64_t ox0 = gi % groups_per_row * kPixels, rest = gi / groups_per_row;
    const int64_t oy = rest % p.oh, n = rest / p.oh;
    float acc[kPixels][V];
#pragma unroll
    for (int q = 0; q < kPixels; ++q) {
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
        for (int q = 0; q < kPixels; ++q) {
#pragma unroll
          for (int j = 0; j < V; ++j) acc[q][j] = fmaf(seg[q * S + s][j], wv[j], acc[q][j]);
        }
      }
    }
#pragma unroll
    for (int q = 0; q < kPixels; ++q) {
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

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    depthwise_nhwc_kernel(DepthwiseParams p, const T* __restrict__ x, const T* __restrict__ w,
                          const T* __restrict__ bias, const T* __restrict__ residual, T* __restrict__ y) {
  extern __shared__ float w_smem[];  // [tap][j][threadIdx.x]
  const int bx = blockDim.x;
  const int64_t vecs = p.c / V;
  const int64_t v0 = int64_t{blockIdx.y} * bx;  // the block's first channel vector
  load_weights_nhwc<T, V>(p, w, w_smem, v0);
  const int64_t vec = v0 + threadIdx.x;
  if (vec >= vecs) return;
  const int64_t pixels = p.n * p.oh * p.ow;
  for (int64_t pix = int64_t{blockIdx.x} * blockDim.y + threadIdx.y; pix < pixels;
       pix += int64_t{gridDim.x} * blockDim.y) {
    const int64_t ox = pix % p.ow, rest = pix / p.ow;
    const int64_t oy = rest % p.oh, n = rest / p.oh;
    float acc[V];
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = 0.f;
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

bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

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
  const bool plain = p.kh == p.kw && p.dil_h == 1 && p.dil_w == 1 && p.stride_h == p.stride_w;
  const int64_t row_groups = p.n * p.oh * ((p.ow + kPixels - 1) / kPixels);
  auto blocked = [&](auto kernel) {
    kernel<<<grid_for_items(row_groups), dim3(bx, by), smem, stream>>>(p, x, w, bias, residual, y);
  };
  if (plain && p.kh == 3 && p.stride_h == 1) return blocked(depthwise_nhwc_blocked_kernel<T, V, 3, 1>);
  if (plain && p.kh == 3 && p.stride_h == 2) return blocked(depthwise_nhwc_blocked_kernel<T, V, 3, 2>);
  if (plain && p.kh == 5 && p.stride_h == 1) return blocked(depthwise_nhwc_blocked_kernel<T, V, 5, 1>);
  if (plain && p.kh == 5 && p.stride_h == 2) return blocked(depthwise_nhwc_blocked_kernel<T, V, 5, 2>);
  depthwise_nhwc_kernel<T, V>
      <<<grid_for_items(p.n * p.oh * p.ow), dim3(bx, by), smem, stream>>>(p, x, w, bias, residual, y);
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

}  // namespace

void launch_depthwise_convolution(const DepthwiseParams& p, DataType dtype, const void* x, const void* w,
                                  const void* bias, const void* residual, void* y, cudaStream_t stream) {
  if (p.n == 0 || p.c == 0 || p.oh == 0 || p.ow == 0) return;
  KILN_CHECK(sizeof(float) * p.kh * p.kw <= kMaxSmem,
             "depthwise convolution: a " << p.kh << "x" << p.kw << " kernel is too large");
  dispatch_floating(dtype, "depthwise convolution",
                    [&](auto tag) { launch_typed<decltype(tag)>(p, x, w, bias, residual, y, stream); });
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln
