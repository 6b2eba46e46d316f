// The wgmma kernel of Kiln's INT8 convolution as templates over the tile: int8_convolution_sm90a.cu
// chooses a tile at run time and calls launch_wgmma_tile, which
// int8_convolution_wgmma_tile{0..3}_sm90a.cu instantiate, one tile per translation unit so that the
// tiles compile in parallel.
//
// The tiles are the mma.sync kernel's (int8_convolution_tile.cuh): kBlockK = 64 int8 taps a step,
// A (BM output pixels' windows, gathered from x) and B (BN weight rows), rows of 64 bytes whose
// 16-byte chunks are swizzled as the tensor cores' 64-byte swizzle expects, copied with cp.async.
// Each warpgroup (4 warps, 128 threads) owns 64 rows of the tile and issues, per step, two
// wgmma m64nBNk32 (s8 x s8 -> s32) reading A and B straight from shared memory through matrix
// descriptors: no ldmatrix, no per-warp B fragments, and the MMAs run asynchronously while the
// next steps' copies are issued. kStages slots: kDepth = kStages - 2 steps are copied ahead, and
// one step's MMAs stay in flight (wait_group 1), so a slot is refilled only once every warpgroup
// has finished the MMAs that read it (the barrier of the step after).
//
// The epilogue is the shared one: the accumulators (wgmma's m64nN layout: thread t of warp w holds
// rows 16 w + t / 4 and + 8, channel pairs 8 j + 2 (t % 4)) are staged in shared memory and stored
// row by row with the requantizing epilogue (store_epilogue).
#pragma once

#include <cuda_runtime.h>

#include "ir/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/int8_convolution_tile.cuh"

// The wgmma instructions exist in the arch-specific sm_90a target only; the other targets this
// header is compiled for (never, in a build with KILN_HAS_SM90A) get empty kernels.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KILN_WGMMA_DEVICE 1
#endif

namespace kiln {
namespace int8conv {
namespace wgmma {  // apart from the mma.sync kernel's names (int8_convolution_mma.cuh)

constexpr int kStages = 6;
constexpr int kDepth = kStages - 2;  // steps copied ahead of the one the MMAs read

// A shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format") for a K-major operand
// of 64-byte rows in the 64-byte swizzle: the start address, a stride of 512 bytes between groups
// of 8 rows, the leading offset unused (one MMA's 32 bytes of K lie inside a row's swizzle span),
// swizzle mode 2 (64 bytes). The start must keep the swizzle's 512-byte phase (base offset 0), or
// be a K offset inside the row (the second k32 of a step starts 32 bytes in).
__device__ __forceinline__ uint64_t smem_descriptor(uint32_t address) {
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{512 >> 4} << 32) |
         (uint64_t{2} << 62);
}

__device__ __forceinline__ void wgmma_fence() {
#ifdef KILN_WGMMA_DEVICE
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#ifdef KILN_WGMMA_DEVICE
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
#ifdef KILN_WGMMA_DEVICE
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

// cp.async writes shared memory through the generic proxy, wgmma reads it through the async
// proxy: each thread fences its arrived copies before the barrier that hands them to the MMAs.
__device__ __forceinline__ void fence_proxy_async() {
#ifdef KILN_WGMMA_DEVICE
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Pins the accumulators around the asynchronous MMAs: the compiler may neither move nor read
// them between an MMA's issue and the wait that completes it.
template <int kN>
__device__ __forceinline__ void fence_accumulators(int (&d)[kN]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

// d (64 x N of the warpgroup, int32) += A (64 x 32, s8, descriptor a) * B (32 x N, descriptor b).
template <int N>
__device__ __forceinline__ void wgmma_s8(int (&d)[N / 2], uint64_t a, uint64_t b);

#ifdef KILN_WGMMA_DEVICE
template <>
__device__ __forceinline__ void wgmma_s8<64>(int (&d)[32], uint64_t a, uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,\n"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 1;\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
        "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
        "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]),
        "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]),
        "+r"(d[30]), "+r"(d[31])
      : "l"(a), "l"(b)
      : "memory");
}

template <>
__device__ __forceinline__ void wgmma_s8<128>(int (&d)[64], uint64_t a, uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,\n"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,\n"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,\n"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, 1;\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
        "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
        "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]),
        "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]),
        "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]),
        "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]),
        "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]),
        "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]),
        "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "l"(a), "l"(b)
      : "memory");
}

template <>
__device__ __forceinline__ void wgmma_s8<256>(int (&d)[128], uint64_t a, uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,\n"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,\n"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,\n"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,\n"
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,\n"
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,\n"
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,\n"
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
      "%128, %129, 1;\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
        "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
        "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]),
        "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]),
        "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]),
        "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]),
        "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]),
        "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]),
        "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]), "+r"(d[64]),
        "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]),
        "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]),
        "+r"(d[79]), "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]),
        "+r"(d[86]), "+r"(d[87]), "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]),
        "+r"(d[93]), "+r"(d[94]), "+r"(d[95]), "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]),
        "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]), "+r"(d[104]), "+r"(d[105]), "+r"(d[106]),
        "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]), "+r"(d[112]), "+r"(d[113]),
        "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]), "+r"(d[120]),
        "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])
      : "l"(a), "l"(b)
      : "memory");
}
#else
template <int N>
__device__ __forceinline__ void wgmma_s8(int (&)[N / 2], uint64_t, uint64_t) {}
#endif

template <int BM, int BN>
struct WgmmaTile {
  static constexpr int kWarpgroups = BM / 64;
  static constexpr int kThreads = 128 * kWarpgroups;
  using Loader = TileLoader<BM, BN, kThreads>;
  static constexpr int kStageBytes = Loader::kStageBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;
  static_assert(BM % 64 == 0, "a warpgroup's MMAs cover 64 rows");
  static_assert(BM * BN * 4 <= kSmemBytes, "the epilogue's int32 stage fits in the pipeline's buffers");
  static_assert(BN / 2 >= 16, "the stage's swizzle stays inside a row");
  static_assert(kStageBytes % 512 == 0, "every slot keeps the 64-byte swizzle's 512-byte phase");
};

template <int BM, int BN, int kMinBlocks, typename T, typename R>
__global__ void __launch_bounds__(WgmmaTile<BM, BN>::kThreads, kMinBlocks) int8_wgmma_kernel(DeviceParams d) {
#ifdef KILN_WGMMA_DEVICE
  using Cfg = WgmmaTile<BM, BN>;
  extern __shared__ __align__(1024) uint8_t smem[];
  const int tid = threadIdx.x, warp = tid >> 5, warpgroup = tid >> 7;
  int64_t m0;
  int n0;
  block_tile<BM, BN>(d, m0, n0);
  typename Cfg::Loader loader(d, tid, m0, n0);

  int acc[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0;

  const int steps = (d.gemm_k + kBlockK - 1) / kBlockK;
#pragma unroll 1
  for (int s = 0; s < kDepth; ++s) {
    if (s < steps) loader.load(d, smem + s * Cfg::kStageBytes, s);
    if (s == 0 && d.residual_smem >= 0)
      prefetch_residual<BM, BN, Cfg::kThreads>(d, smem + d.residual_smem, m0, n0, tid);
    cp_async_commit();
  }
  // The descriptors of slot 0's A (this warpgroup's rows) and B; a slot's are these plus its
  // offset in 16-byte units (the address field holds address / 16 and shared memory ends below
  // 2^18 bytes, so the add never carries out of it). The slots are counted, not taken modulo
  // kStages: a step's descriptor and copy addresses cost an add each.
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint64_t a0 = smem_descriptor(base + warpgroup * 64 * kBlockK);
  const uint64_t b0 = smem_descriptor(base + BM * kBlockK);
  int slot = 0, next_slot = kDepth % kStages;
#pragma unroll 1
  for (int step = 0; step < steps; ++step) {
    cp_async_wait<kDepth - 1>();
    fence_proxy_async();
    __syncthreads();  // step's tiles arrived for every thread; step - 2's MMAs are done everywhere
    const int next = step + kDepth;
    if (next < steps) loader.load(d, smem + next_slot * Cfg::kStageBytes, next);
    cp_async_commit();
    const uint64_t at = static_cast<uint64_t>(slot * (Cfg::kStageBytes >> 4));
    fence_accumulators(acc);
    wgmma_fence();
    wgmma_s8<BN>(acc, a0 + at, b0 + at);
    wgmma_s8<BN>(acc, a0 + at + 2, b0 + at + 2);  // the second k32: 32 bytes on
    wgmma_commit();
    wgmma_wait<1>();
    fence_accumulators(acc);
    slot = slot + 1 == kStages ? 0 : slot + 1;
    next_slot = next_slot + 1 == kStages ? 0 : next_slot + 1;
  }
  wgmma_wait<0>();
  fence_accumulators(acc);
  cp_async_wait<0>();
  __syncthreads();  // every warpgroup is done with the pipeline's tiles: the stage below reuses them

  int2* stage = reinterpret_cast<int2*>(smem);
  const int lane = tid & 31, group = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int j = 0; j < BN / 8; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = warp * 16 + group + half * 8;
      stage[stage_pair<BN>(row, j * 4 + tig)] = make_int2(acc[4 * j + 2 * half], acc[4 * j + 2 * half + 1]);
    }
  __syncthreads();
  store_epilogue<BM, BN, Cfg::kThreads, T, R>(d, smem, m0, n0, tid);
#endif
}

template <int BM, int BN, int kMinBlocks, typename T, typename R>
void launch_tile(const DeviceParams& d, cudaStream_t stream) {
  using Cfg = WgmmaTile<BM, BN>;
  auto kernel = int8_wgmma_kernel<BM, BN, kMinBlocks, T, R>;
  KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       max_smem_bytes<Cfg::kSmemBytes, BM, BN>()));
  const dim3 grid = tile_grid<BM, BN>(d);
  DeviceParams staged = d;
  const int smem = plan_smem_bytes<kStages, Cfg::kStageBytes, BM, BN>(staged);
  kernel<<<grid, Cfg::kThreads, smem, stream>>>(staged);
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace wgmma

template <int BM, int BN, int kMinBlocks>
void launch_wgmma_tile(const DeviceParams& d, DataType rounding, bool int8_out, cudaStream_t stream) {
  dispatch_output(rounding, int8_out, [&](auto t, auto r) {
    wgmma::launch_tile<BM, BN, kMinBlocks, decltype(t), decltype(r)>(d, stream);
  });
}

}  // namespace int8conv
}  // namespace kiln
