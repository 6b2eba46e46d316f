// The input side of Kiln's INT8 implicit-GEMM convolution (int8_convolution.h), shared by its
// mma.sync and wgmma kernels (int8_convolution_tile.cuh): the problem as the kernels see it
// (DeviceParams), the tiles' 64-byte rows and their swizzle, and the cp.async copies that gather a
// block's A (input patches) and B (weight rows) tiles step by step (TileLoader). Host-compilable:
// on the host cp_async_16 copies with memcpy, so the CPU tests check the loader's tiles against an
// im2col of the input (tests/cpp/test_int8_convolution.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/int8_convolution.h"
#include "kernels/cuda/mma_ptx.cuh"

namespace kiln {
namespace int8conv {

constexpr int kBlockK = 64;  // int8 taps per pipeline step: 4 chunks of 16 bytes per row

// Byte offset of 16-byte chunk `chunk` (0..3) of row `row` in a tile of 64-byte rows. The chunk is
// XOR-swizzled with bits 1-2 of the row: the 8 consecutive rows an ldmatrix phase reads at one
// logical chunk then fall into 8 distinct 16-byte slots of the 128-byte bank window. This is also
// the Hopper tensor cores' 64-byte swizzle (address bits 4-5 XOR bits 7-8), so wgmma reads the
// same tiles through a matrix descriptor.
__device__ __forceinline__ int swizzle(int row, int chunk) {
  return row * kBlockK + ((chunk ^ ((row >> 1) & 3)) << 4);
}

struct DeviceParams {
  Int8ConvParams g;
  int64_t m;   // N * P * Q
  int gemm_k;  // R * S * C
  // A 1x1 window without padding (fully connected layers, most of a ResNet's convolutions): every
  // tap of a row is in x, and column k of A is channel k of the row's pixel.
  bool pointwise;
  // Pointwise with stride 1 (y's pixels are x's): row m of A is x's pixel m.
  bool dense;
  // The epilogue stores eight channels at a time: K a multiple of 8, and y, the residual, the
  // int8 copy and the scale/bias aligned for it.
  bool vec8;
  const int8_t* x;
  const int8_t* w;
  const float* alpha;  // [K]
  const float* bias;   // [K]
  const void* residual;
  void* y;
  int8_t* y8;  // y's int8 copy, or null
  int r_size;  // the residual's element size: 1 (int8, dequantized with residual_scale) or sizeof(R)
  // Where the block's [BM][BN] residual tile is staged in shared memory (copied with cp.async
  // together with the first K step), or -1: the epilogue then loads it from global memory.
  int residual_smem = -1;
};

// The cp.async copies of one block's A and B tiles, step by step (BM output pixels x BN output
// channels, kThreads threads): each thread copies kAChunks chunks of A and kBChunks of B a step.
// A thread's chunks are one 16-byte column (tid % 4) of rows kRowStride apart, a multiple of 8, so
// they share one swizzle and one tap offset: what a step computes once per thread (the window
// position, the bounds of the step's tap, the K check) serves every chunk, and each chunk adds only
// its own row's 32-bit offset. (The loader was the kernels' busiest part: per K step it issued
// more instructions than the MMAs took cycles, ncu's "ALU-bound" on every INT8 convolution.)
template <int BM, int BN, int kThreads>
struct TileLoader {
  static constexpr int kAChunks = BM * 4 / kThreads;  // 16-byte chunks per thread and step
  static constexpr int kBChunks = BN * 4 / kThreads;
  static constexpr int kRowStride = kThreads / 4;          // rows between a thread's chunks
  static constexpr int kStageBytes = (BM + BN) * kBlockK;  // A's BM rows, then B's BN rows
  static_assert(BM * 4 % kThreads == 0 && BN * 4 % kThreads == 0, "whole copy rounds");
  static_assert(kRowStride % 8 == 0, "a thread's rows share their swizzle");
  // A row outside y: its window starts so far off that no tap is inside x.
  static constexpr int kNowhere = -(1 << 29);

  int off;      // the thread's first chunk in a stage (swizzled); chunk i of A is i * kRowStride rows on
  int chunk_k;  // (tid % 4) * 16: the chunk's first tap within a step
  // A row's element offset in x: its pixel's channel 0 (pointwise), or where its window starts (the
  // pixel at (oh * stride - pad, ow * stride - pad), outside x at the padding); and the window
  // start's row and column (kNowhere for a row past M).
  int a_pix[kAChunks], a_ih[kAChunks], a_iw[kAChunks];
  const int8_t* b_row;  // weight row n0 + tid / 4 at tap chunk_k; chunk i is i * kRowStride rows on
  unsigned b_ok = 0;    // bit i: B chunk i's row is a weight row (< K)
  // Where the thread's tap falls in the window at the next step to load (channel, filter row and
  // column), advanced one step per load (steps load in order), so the loop divides nothing.
  int next_ch = 0, next_r = 0, next_s = 0;

  __device__ __forceinline__ TileLoader(const DeviceParams& d, int tid, int64_t m0, int n0) {
    const Int8ConvParams& g = d.g;
    const int row0 = tid >> 2;
    chunk_k = (tid & 3) * 16;
    off = swizzle(row0, tid & 3);
    const int pq = g.p * g.q;
#pragma unroll
    for (int i = 0; i < kAChunks; ++i) {
      const int64_t m = m0 + row0 + i * kRowStride;
      const int mm = static_cast<int>(m);  // launch_int8_convolution: M < 2^31
      if (m >= d.m) {
        a_pix[i] = 0;
        a_ih[i] = a_iw[i] = kNowhere;
      } else if (d.dense) {  // a 1x1 window, stride 1, no padding: pixel m of y is pixel m of x
        a_pix[i] = mm * g.c;
        a_ih[i] = a_iw[i] = 0;
      } else {
        const int b = mm / pq, rem = mm - b * pq;
        const int oh = rem / g.q, ow = rem - oh * g.q;
        a_ih[i] = oh * g.stride_h - g.pad_h;
        a_iw[i] = ow * g.stride_w - g.pad_w;
        // int8_convolution_refusal: x has fewer than 2^31 elements, so every pixel's offset fits.
        a_pix[i] = ((b * g.h + a_ih[i]) * g.w + a_iw[i]) * g.c;
      }
    }
#pragma unroll
    for (int i = 0; i < kBChunks; ++i)
      if (n0 + row0 + i * kRowStride < g.k) b_ok |= 1u << i;
    b_row = d.w + static_cast<int64_t>(n0 + row0 < g.k ? n0 + row0 : 0) * d.gemm_k + chunk_k;
    if (!d.pointwise) {
      const int tap = chunk_k / g.c;
      next_ch = chunk_k - tap * g.c;
      next_r = tap / g.s;
      next_s = tap - next_r * g.s;
    }
  }

  // Issues the copies of step `step` into `tile` (kStageBytes); steps must come in order.
  __device__ __forceinline__ void load(const DeviceParams& d, uint8_t* tile, int step) {
    const Int8ConvParams& g = d.g;
    const int k = step * kBlockK + chunk_k;
    const bool k_ok = k < d.gemm_k;
    if (d.pointwise) {  // column k of A is channel k of the row's pixel: only the row is checked
#pragma unroll
      for (int i = 0; i < kAChunks; ++i) {
        const bool ok = k_ok && a_ih[i] != kNowhere;
        cp_async_16(tile + off + i * kRowStride * kBlockK, d.x + (ok ? a_pix[i] + k : 0), ok);
      }
    } else {
      const int dh = next_r * g.dil_h, dw = next_s * g.dil_w;
      const int delta = (dh * g.w + dw) * g.c + next_ch;  // the tap's offset from the window start
#pragma unroll
      for (int i = 0; i < kAChunks; ++i) {
        const bool ok = k_ok && static_cast<unsigned>(a_ih[i] + dh) < static_cast<unsigned>(g.h) &&
                        static_cast<unsigned>(a_iw[i] + dw) < static_cast<unsigned>(g.w);
        // Added as unsigned: a tap past x's end may pass 2^31 (its copy is not made). The offset is
        // chosen, not the address computed under the condition: delta stays computed once.
        const unsigned at = static_cast<unsigned>(a_pix[i]) + static_cast<unsigned>(delta);
        cp_async_16(tile + off + i * kRowStride * kBlockK, d.x + (ok ? static_cast<int>(at) : 0), ok);
      }
      next_ch += kBlockK;  // C is a multiple of 16, so a chunk never straddles two taps
      while (next_ch >= g.c) {
        next_ch -= g.c;
        if (++next_s == g.s) {
          next_s = 0;
          ++next_r;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kBChunks; ++i) {
      const bool ok = k_ok && (b_ok >> i & 1u);
      const int8_t* src = b_row + static_cast<int64_t>(i * kRowStride) * d.gemm_k + step * kBlockK;
      cp_async_16(tile + BM * kBlockK + off + i * kRowStride * kBlockK, ok ? src : d.w, ok);
    }
  }
};

}  // namespace int8conv
}  // namespace kiln
