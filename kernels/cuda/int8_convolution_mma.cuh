// The mma.sync kernel of Kiln's INT8 implicit-GEMM convolution (sm_80 and newer) as templates
// over the tile: int8_convolution.cu chooses a tile at run time and calls launch_mma_tile, which
// int8_convolution_mma_tile{0..4}.cu instantiate, one tile per translation unit so that the
// tiles (six output types and seven epilogues each) compile in parallel.
//
// One block computes a BM x BN tile of y (BM output pixels x BN output channels); each warp a
// WM x WN part of it with mma.sync m16n8k32 (s8 x s8 -> s32). The K loop walks the taps in steps
// of 64 bytes (kBlockK int8 values): a step's A tile is BM rows of 4 16-byte chunks, each chunk 16
// channels of one tap (r, s) of the row's pixel, copied with cp.async from x or zero-filled where
// the tap falls into the padding; its B tile is BN weight rows of the same 64 taps. kStages steps
// are in flight. Fragment layouts (PTX ISA, mma.m16n8k32 with .s8): a lane of group g = lane / 4
// and t = lane % 4 holds
//   A: a0 = (row g, k 4t..4t+3), a1 = (g + 8, 4t..), a2 = (g, 16 + 4t..), a3 = (g + 8, 16 + 4t..)
//   B: b0 = (k 4t..4t+3, n g), b1 = (k 16 + 4t.., n g)          C: c0, c1 = (g, 2t, 2t + 1), c2, c3 = (g + 8,
//   ...)
// which are exactly what ldmatrix (b16, 8x8 matrices of 16-byte rows) gives from rows of bytes:
// A's four matrices are rows 0-7 / 8-15 of bytes 0-15 and 16-31, B's two per n8 tile bytes 0-15
// and 16-31 of its 8 rows.
#pragma once

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/int8_convolution_tile.cuh"

namespace kiln {
namespace int8conv {
namespace mma {  // apart from the wgmma kernel's names (int8_convolution_sm90a.cu)

constexpr int kStages = 4;

// c += a (16x32, s8) * b (32x8, s8), int32 accumulators.
__device__ __forceinline__ void mma_s8(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

template <int BM, int BN, int WM, int WN>
struct Tile {
  static constexpr int kWarpsM = BM / WM, kWarpsN = BN / WN;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kMTiles = WM / 16, kNTiles = WN / 8;
  using Loader = TileLoader<BM, BN, kThreads>;
  static constexpr int kStageBytes = Loader::kStageBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "ldmatrix.x4 covers 16 rows of A and two n8 tiles of B");
  static_assert(BM * BN * 4 <= kSmemBytes, "the epilogue's int32 stage fits in the pipeline's buffers");
  static_assert(BN / 2 >= 16, "the stage's swizzle stays inside a row");
};

template <int BM, int BN, int WM, int WN, typename T, typename R>
__global__ void __launch_bounds__(Tile<BM, BN, WM, WN>::kThreads) int8_conv_kernel(DeviceParams d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Cfg = Tile<BM, BN, WM, WN>;
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp / Cfg::kWarpsN, warp_n = warp % Cfg::kWarpsN;
  int64_t m0;
  int n0;
  block_tile<BM, BN>(d, m0, n0);
  typename Cfg::Loader loader(d, tid, m0, n0);
  auto load_step = [&](int stage, int step) { loader.load(d, smem + stage * Cfg::kStageBytes, step); };

  int acc[Cfg::kMTiles][Cfg::kNTiles][4];
#pragma unroll
  for (int i = 0; i < Cfg::kMTiles; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::kNTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;

  const int steps = (d.gemm_k + kBlockK - 1) / kBlockK;
#pragma unroll 1
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < steps) load_step(s, s);
    if (s == 0 && d.residual_smem >= 0)
      prefetch_residual<BM, BN, Cfg::kThreads>(d, smem + d.residual_smem, m0, n0, tid);
    cp_async_commit();
  }
  for (int step = 0; step < steps; ++step) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // step's tile arrived for every thread; step - 1's slot is free
    const int next = step + kStages - 1;
    if (next < steps) load_step(next % kStages, next);
    cp_async_commit();
    const uint8_t* a_tile = smem + (step % kStages) * Cfg::kStageBytes;
    const uint8_t* b_tile = a_tile + BM * kBlockK;
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {  // two k32 steps per 64 taps
      uint32_t a[Cfg::kMTiles][4];
      uint32_t b[Cfg::kNTiles][2];
#pragma unroll
      for (int i = 0; i < Cfg::kMTiles; ++i) {
        const int row = warp_m * WM + i * 16 + (lane & 15);
        ldmatrix_x4(a[i], a_tile + swizzle(row, kk * 2 + (lane >> 4)));
      }
#pragma unroll
      for (int j = 0; j < Cfg::kNTiles / 2; ++j) {
        const int row = warp_n * WN + j * 16 + (lane & 7) + ((lane >> 4) << 3);
        uint32_t r[4];
        ldmatrix_x4(r, b_tile + swizzle(row, kk * 2 + ((lane >> 3) & 1)));
        b[2 * j][0] = r[0];
        b[2 * j][1] = r[1];
        b[2 * j + 1][0] = r[2];
        b[2 * j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < Cfg::kMTiles; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::kNTiles; ++j) mma_s8(acc[i][j], a[i], b[j][0], b[j][1]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the pipeline's tiles: the stage below reuses them

  // Epilogue in two passes. First the int32 accumulators go to shared memory ([BM][BN], pairs
  // swizzled by row, stage_pair), then the block's threads walk the tile in row order, eight (or
  // two) adjacent channels each (store_tile): y = act(alpha * acc + bias + residual), the residual
  // loads and the stores coalesced, and a rolled loop (unrolled over the accumulators the
  // epilogue was tens of kilobytes of instructions, which missed the instruction cache).
  int2* stage = reinterpret_cast<int2*>(smem);
  const int group = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int i = 0; i < Cfg::kMTiles; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::kNTiles; ++j)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = warp_m * WM + i * 16 + group + half * 8;
        const int pair = (warp_n * WN + j * 8) / 2 + tig;
        stage[stage_pair<BN>(row, pair)] = make_int2(acc[i][j][2 * half], acc[i][j][2 * half + 1]);
      }
  __syncthreads();
  store_epilogue<BM, BN, Cfg::kThreads, T, R>(d, smem, m0, n0, tid);
#endif
}

template <int BM, int BN, int WM, int WN, typename T, typename R>
void launch_tile(const DeviceParams& d, cudaStream_t stream) {
  using Cfg = Tile<BM, BN, WM, WN>;
  auto kernel = int8_conv_kernel<BM, BN, WM, WN, T, R>;
  constexpr int kMaxSmem = max_smem_bytes<Cfg::kSmemBytes, BM, BN>();
  if (kMaxSmem > 48 * 1024) {  // above the default limit a kernel must opt in
    KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem));
  }
  const dim3 grid = tile_grid<BM, BN>(d);
  DeviceParams staged = d;
  const int smem = plan_smem_bytes<kStages, Cfg::kStageBytes, BM, BN>(staged);
  kernel<<<grid, Cfg::kThreads, smem, stream>>>(staged);
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace mma

template <int BM, int BN, int WM, int WN>
void launch_mma_tile(const DeviceParams& d, DataType rounding, bool int8_out, cudaStream_t stream) {
  dispatch_output(rounding, int8_out, [&](auto t, auto r) {
    mma::launch_tile<BM, BN, WM, WN, decltype(t), decltype(r)>(d, stream);
  });
}

}  // namespace int8conv
}  // namespace kiln
