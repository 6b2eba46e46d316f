// The parts of Kiln's INT8 implicit-GEMM convolution (int8_convolution.h) that its two kernels
// share: the mma.sync kernel of int8_convolution_mma.cuh (sm_80 and newer) and the wgmma kernel of
// int8_convolution_sm90a.cu (Hopper). Both stream the same tiles through shared memory: kBlockK
// int8 taps a step, A (output pixels' windows, gathered from x) and B (weight rows) as rows of 64
// bytes in 16-byte chunks, copied with cp.async (TileLoader); both end with the same two-pass
// epilogue (the int32 tile staged in shared memory, then stored row by row: store_epilogue).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "ir/dtype.h"
#include "ir/error.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/cuda/int8_bits.cuh"
#include "kernels/cuda/int8_convolution.h"
#include "kernels/cuda/int8_convolution_loader.cuh"
#include "kernels/cuda/mma_ptx.cuh"

namespace kiln {
namespace int8conv {

// The epilogue's stage: the int2 index of pair `pair` (channels 2 pair and 2 pair + 1) of row `row`
// in a [BM][BN] int32 tile. Bits 2-3 of the pair are XORed with the row's low two bits, so the 8
// rows x 4 pairs of one accumulator store by a warp fall into distinct 8-byte slots of two
// 128-byte bank windows; a row's pairs stay a permutation of the row.
template <int BN>
__device__ __forceinline__ int stage_pair(int row, int pair) {
  return row * (BN / 2) + (pair ^ ((row & 3) << 2));
}

// Two floats rounded to R (float16 / bfloat16 with one paired conversion instruction, which
// rounds each to nearest even as the single one does) and back to float.
template <typename R>
__device__ __forceinline__ void round_pair(float& a, float& b) {
  if constexpr (std::is_same_v<R, __half>) {
    const float2 f = __half22float2(__floats2half2_rn(a, b));
    a = f.x;
    b = f.y;
  } else if constexpr (std::is_same_v<R, __nv_bfloat16>) {
    const float2 f = __bfloat1622float2(__floats2bfloat162_rn(a, b));
    a = f.x;
    b = f.y;
  }
}

// kN floats (kN even) as kN values of T, converted in pairs where T is float16 / bfloat16.
template <int kN, typename T>
__device__ __forceinline__ Pack<T, kN> to_pack(const float (&v)[kN]) {
  Pack<T, kN> o;
#pragma unroll
  for (int e = 0; e < kN; e += 2) {
    if constexpr (std::is_same_v<T, __half>) {
      const __half2 h = __floats2half2_rn(v[e], v[e + 1]);
      o.v[e] = __low2half(h);
      o.v[e + 1] = __high2half(h);
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(v[e], v[e + 1]);
      o.v[e] = __low2bfloat16(h);
      o.v[e + 1] = __high2bfloat16(h);
    } else {
      o.v[e] = from_float<T>(v[e]);
      o.v[e + 1] = from_float<T>(v[e + 1]);
    }
  }
  return o;
}

// Where block blockIdx.x's tile starts (output pixel m0, channel n0). The N tiles of one BM-row block
// run one after another, so the blocks after the first read its A rows (the input pixels, gathered
// again for every N tile) from L2 rather than from memory: in M-tile order a 1x1 convolution whose
// output has more than BN channels read its input from DRAM once per N tile (ResNet-50 INT8 at
// batch 256 on an H100: about 0.13 ms of its layers' 8.5, from two profiles of one plan).
template <int BM, int BN>
__device__ __forceinline__ void block_tile(const DeviceParams& d, int64_t& m0, int& n0) {
  const unsigned n_tiles = static_cast<unsigned>((d.g.k + BN - 1) / BN);
  m0 = static_cast<int64_t>(blockIdx.x / n_tiles) * BM;
  n0 = static_cast<int>(blockIdx.x % n_tiles) * BN;
}

// The one-dimensional grid of block_tile: a block per BM x BN tile of the [M, K] output.
template <int BM, int BN>
inline dim3 tile_grid(const DeviceParams& d) {
  const int64_t blocks = (d.m + BM - 1) / BM * ((d.g.k + BN - 1) / BN);
  KILN_CHECK(blocks < (int64_t{1} << 31),
             "INT8 convolution: " << blocks << " tiles are too many (2^31 at most)");
  return dim3(static_cast<unsigned>(blocks));
}

// The most dynamic shared memory a block may have on sm_90 (227 KB).
constexpr int kMaxSmemBytes = 232448;
// Layers of at most this many K steps stage their residual in shared memory (when it fits): with
// few steps the epilogue is most of a block's time, and a residual loaded there is a second
// memory latency after the first; copied with the first step's tiles, it arrives with them.
constexpr int kResidualPrefetchSteps = 4;

// The dynamic shared memory a launch needs, deciding d.residual_smem: the pipeline's slots that
// its K steps fill (slot step % kSlots, so min(steps, kSlots) of them) and the epilogue's int32
// [BM][BN] stage, which reuses them; after those, the staged residual tile. A 1x1 convolution of
// 64 input channels (one step) takes a fraction of the pipeline's size, so more of its
// short-lived blocks fit on an SM at once. The kernel's shared-memory attribute must allow
// max_smem_bytes<kSlots * kSlotBytes, BM, BN>().
template <int kSlots, int kSlotBytes, int BM, int BN>
inline int plan_smem_bytes(DeviceParams& d) {
  const int steps = (d.gemm_k + kBlockK - 1) / kBlockK;
  const int slots = steps < kSlots ? steps : kSlots;
  const int pipeline = slots * kSlotBytes, epilogue = BM * BN * 4;
  const int used = pipeline > epilogue ? pipeline : epilogue;  // a multiple of 128 bytes
  const int residual = BM * BN * d.r_size;
  d.residual_smem = -1;
  if (d.residual && steps <= kResidualPrefetchSteps && d.g.k * d.r_size % 16 == 0 &&
      reinterpret_cast<uintptr_t>(d.residual) % 16 == 0 && used + residual <= kMaxSmemBytes) {
    d.residual_smem = used;
    return used + residual;
  }
  return used;
}

// The shared-memory limit to set on a kernel whose pipeline takes kPipelineBytes: room for a
// float32 residual tile after it, within the hardware's limit.
template <int kPipelineBytes, int BM, int BN>
constexpr int max_smem_bytes() {
  return kPipelineBytes + BM * BN * 4 < kMaxSmemBytes ? kPipelineBytes + BM * BN * 4 : kMaxSmemBytes;
}

// Copies the block's residual tile (rows m0.., channels n0..n0 + BN of the residual, BN * r_size
// bytes a row) into shared memory at `dst` with cp.async, 16 bytes a copy; rows past M and
// channels past K are zero-filled (K * r_size is a multiple of 16: no copy straddles K).
template <int BM, int BN, int kThreads>
__device__ __forceinline__ void prefetch_residual(const DeviceParams& d, uint8_t* dst, int64_t m0, int n0,
                                                  int tid) {
  const int row_chunks = BN * d.r_size / 16;
  const int64_t row_bytes = static_cast<int64_t>(d.g.k) * d.r_size;
  const int n_byte0 = n0 * d.r_size;
  const uint8_t* src = static_cast<const uint8_t*>(d.residual);
#pragma unroll 1
  for (int c = tid; c < BM * row_chunks; c += kThreads) {
    const int row = c / row_chunks, chunk = c - row * row_chunks;
    const int64_t m = m0 + row;
    const int n_byte = n_byte0 + chunk * 16;
    const bool ok = m < d.m && n_byte < row_bytes;
    cp_async_16(dst + c * 16, ok ? src + m * row_bytes + n_byte : src, ok);
  }
}

// The epilogue's activation: kAct is an ActivationType known at compile time (the switch folds),
// kNoActivation, or kAnyActivation (p's type, at run time).
constexpr int kNoActivation = -1, kAnyActivation = -2;
template <int kAct>
__device__ __forceinline__ float activate_as(const ActivationParams& p, float x) {
  if constexpr (kAct == kNoActivation) {
    return x;
  } else if constexpr (kAct == kAnyActivation) {
    return activate(p, x);
  } else {
    ActivationParams q = p;
    q.type = kAct;
    return activate(q, x);
  }
}

// The residual of kN adjacent channels as loaded from global memory, ahead of its use: int8 (a
// calibrated build's, dequantized with residual_scale) or of the float type R.
template <int kN, typename R>
struct ResidualPack {
  Pack<int8_t, kN> q;
  Pack<R, kN> f;
  __device__ __forceinline__ void load(const void* p, bool int8) {
    if (int8) {
      q = *reinterpret_cast<const Pack<int8_t, kN>*>(p);
    } else {
      f = *reinterpret_cast<const Pack<R, kN>*>(p);
    }
  }
  // All kN values as floats: one branch on the residual's type for the kN of them (tested per
  // value, it cost a branch and a compare on every output value).
  __device__ __forceinline__ void values(float (&r)[kN], bool int8, float scale) const {
    if (int8) {
#pragma unroll
      for (int e = 0; e < kN; ++e) r[e] = __fmul_rn(int8_to_float(q.v[e]), scale);
    } else {
#pragma unroll
      for (int e = 0; e < kN; ++e) r[e] = to_float(f.v[e]);
    }
  }
};

// The epilogue's last step for kN adjacent channels (v = alpha * acc + bias): the residual (where
// the layer has one) and the activation in the layer's order, then one aligned store of the
// kN values; an int8 y rounds to the float type R first and requantizes, and a float y with an
// int8 copy (y8) writes both.
template <int kN, int kAct, typename T, typename R>
__device__ __forceinline__ void finish(const Int8ConvParams& g, float (&v)[kN], bool has_residual,
                                       const ResidualPack<kN, R>& residual, T* y, int8_t* y8) {
  // Each step over all kN values under one condition: the conditions are the layer's, the same for
  // every value, and a branch per step costs less than one per value.
  float r[kN];
  if (has_residual) residual.values(r, g.residual_scale > 0.f, g.residual_scale);
  const bool residual_first = has_residual && !g.residual_after_activation;
  if (residual_first) {
#pragma unroll
    for (int e = 0; e < kN; ++e) v[e] = __fadd_rn(v[e], r[e]);
  }
  if (kAct == kAnyActivation ? g.activate : kAct != kNoActivation) {
#pragma unroll
    for (int e = 0; e < kN; ++e) v[e] = activate_as<kAct>(g.act, v[e]);
  }
  if (has_residual && !residual_first) {
#pragma unroll
    for (int e = 0; e < kN; ++e) v[e] = __fadd_rn(v[e], r[e]);
  }
  Pack<int8_t, kN> q;
  if (std::is_same_v<T, int8_t> || y8) {
    // The value rounded to R, scaled, rounded and clamped to int8, as the folded quantize layer
    // computed it (NaN to out_min), two values at a time (round_pair).
    const float lo = static_cast<float>(g.out_min), hi = static_cast<float>(g.out_max);
#pragma unroll
    for (int e = 0; e < kN; e += 2) {
      float a = v[e], b = v[e + 1];
      round_pair<R>(a, b);
      q.v[e] = round_clamp_int8(__fmul_rn(a, g.out_inv_scale), lo, hi);
      q.v[e + 1] = round_clamp_int8(__fmul_rn(b, g.out_inv_scale), lo, hi);
    }
  }
  if constexpr (std::is_same_v<T, int8_t>) {
    *reinterpret_cast<Pack<int8_t, kN>*>(y) = q;
  } else {
    *reinterpret_cast<Pack<T, kN>*>(y) = to_pack<kN, T>(v);
    if (y8) *reinterpret_cast<Pack<int8_t, kN>*>(y8) = q;
  }
}

// The epilogue's second pass over the staged [BM][BN] tile (see the kernels): each thread takes
// the same kN adjacent channels (its scales and bias loaded once) of every kRowStep-th row, rows in
// order (coalesced loads and stores). The residual of kBatch rows is loaded before any of them is
// finished, so its memory latency is paid once a batch, not once a row: with one or two K steps
// (a ResNet's 1x1 convolutions) this pass is most of a block's time.
template <int kN, int kAct, int BM, int BN, int kThreads, typename T, typename R>
__device__ __forceinline__ void store_tile(const DeviceParams& d, const uint8_t* smem, int64_t m0, int n0,
                                           int tid) {
  const int2* stage = reinterpret_cast<const int2*>(smem);
  const Int8ConvParams& g = d.g;
  constexpr int kPerRow = BN / kN;
  static_assert(kThreads % kPerRow == 0, "a thread keeps its channels from row to row");
  constexpr int kRowStep = kThreads / kPerRow;
  static_assert(BM % kRowStep == 0, "every thread passes over the same number of rows");
  constexpr int kPasses = BM / kRowStep;
  constexpr int kBatch = kN == 8 ? (kPasses < 4 ? kPasses : 4) : 1;
  static_assert(kPasses % kBatch == 0, "whole batches");
  const int col = tid % kPerRow, row0 = tid / kPerRow;
  const int n = n0 + kN * col;
  if (n >= g.k) return;  // K is a multiple of kN: the kN channels are all in y, or none is
  const bool int8_residual = g.residual_scale > 0.f;
  const int64_t r_size = d.r_size;
  // The residual tile staged in shared memory (prefetch_residual), or null.
  const uint8_t* staged = d.residual_smem >= 0 ? smem + d.residual_smem : nullptr;
  const Pack<float, kN> alpha = *reinterpret_cast<const Pack<float, kN>*>(d.alpha + n);
  const Pack<float, kN> bias = *reinterpret_cast<const Pack<float, kN>*>(d.bias + n);
  T* y = static_cast<T*>(d.y);
#pragma unroll 1
  for (int p0 = 0; p0 < kPasses; p0 += kBatch) {
    ResidualPack<kN, R> residual[kBatch];
    if (d.residual) {
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int row = row0 + (p0 + b) * kRowStep;
        const int64_t m = m0 + row;
        if (m >= d.m) continue;
        residual[b].load(staged ? staged + (row * BN + kN * col) * r_size
                                : static_cast<const uint8_t*>(d.residual) + (m * g.k + n) * r_size,
                         int8_residual);
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int row = row0 + (p0 + b) * kRowStep;
      const int64_t m = m0 + row;
      if (m >= d.m) continue;
      // kN / 2 pairs, contiguous in the stage (the swizzle moves aligned groups of 4 pairs).
      const Pack<int2, kN / 2> a =
          *reinterpret_cast<const Pack<int2, kN / 2>*>(stage + stage_pair<BN>(row, kN / 2 * col));
      float v[kN];
#pragma unroll
      for (int e = 0; e < kN / 2; ++e) {
        v[2 * e] = static_cast<float>(a.v[e].x) * alpha.v[2 * e] + bias.v[2 * e];
        v[2 * e + 1] = static_cast<float>(a.v[e].y) * alpha.v[2 * e + 1] + bias.v[2 * e + 1];
      }
      const int64_t at = m * g.k + n;
      finish<kN, kAct, T, R>(g, v, d.residual != nullptr, residual[b], y + at, d.y8 ? d.y8 + at : nullptr);
    }
  }
}

// The epilogue's second pass over the staged tile: eight channels at a time where y, the residual
// and K allow it (the common case), with the usual activations compiled in; else pairs.
template <int BM, int BN, int kThreads, typename T, typename R>
__device__ __forceinline__ void store_epilogue(const DeviceParams& d, const uint8_t* stage, int64_t m0,
                                               int n0, int tid) {
  const Int8ConvParams& g = d.g;
  if (d.vec8) {
    switch (g.activate ? g.act.type : kNoActivation) {
      case kNoActivation:
        return store_tile<8, kNoActivation, BM, BN, kThreads, T, R>(d, stage, m0, n0, tid);
      case kRelu:
        return store_tile<8, kRelu, BM, BN, kThreads, T, R>(d, stage, m0, n0, tid);
      case kGelu:
        return store_tile<8, kGelu, BM, BN, kThreads, T, R>(d, stage, m0, n0, tid);
      case kGeluTanh:
        return store_tile<8, kGeluTanh, BM, BN, kThreads, T, R>(d, stage, m0, n0, tid);
      case kSilu:
        return store_tile<8, kSilu, BM, BN, kThreads, T, R>(d, stage, m0, n0, tid);
      default:
        return store_tile<8, kAnyActivation, BM, BN, kThreads, T, R>(d, stage, m0, n0, tid);
    }
  }
  store_tile<2, kAnyActivation, BM, BN, kThreads, T, R>(d, stage, m0, n0, tid);
}

// Calls launch(T{}, R{}) with R the device type of `rounding` (float32, float16 or bfloat16: the
// residual's type and what an int8 y is rounded to first) and T = y's type: int8 (int8_out) or R.
template <typename Launch>
void dispatch_output(DataType rounding, bool int8_out, Launch&& launch) {
  KILN_CHECK(
      rounding == DataType::kFloat32 || rounding == DataType::kFloat16 || rounding == DataType::kBFloat16,
      "INT8 convolution writes float32, float16, bfloat16 or int8 (rounded to one of those first), not "
          << (int8_out ? "int8 rounded to " : "") << dtype_name(rounding));
  dispatch_floating(rounding, "INT8 convolution", [&](auto r) {
    if (int8_out) {
      launch(int8_t{}, r);
    } else {
      launch(r, r);
    }
  });
}

// Launches the mma.sync kernel (int8_convolution_mma.cuh) with tile BM x BN of warps WM x WN for y
// of type int8 (int8_out) or `rounding`. Instantiated for tiles 0-4 only, each in a translation unit
// of its own (int8_convolution_mma_tile{0..4}.cu).
template <int BM, int BN, int WM, int WN>
void launch_mma_tile(const DeviceParams& d, DataType rounding, bool int8_out, cudaStream_t stream);

// Launches the wgmma kernel (int8_convolution_wgmma.cuh) with tile BM x BN, likewise; instantiated
// for wgmma tiles 0-3 (int8_convolution_wgmma_tile{0..3}_sm90a.cu).
template <int BM, int BN, int kMinBlocks>
void launch_wgmma_tile(const DeviceParams& d, DataType rounding, bool int8_out, cudaStream_t stream);

// Whether this build holds the wgmma kernels (int8_convolution_sm90a.cu compiled for sm_90a).
bool int8_wgmma_compiled();

// Launches wgmma tile `tile` (0..kInt8ConvWgmmaTiles-1) for y of type int8 (int8_out) or
// `rounding` (float32, float16 or bfloat16; an int8 y is rounded to it first). The caller checked
// int8_tile_refusal.
void launch_int8_wgmma(const DeviceParams& d, int tile, DataType rounding, bool int8_out,
                       cudaStream_t stream);

}  // namespace int8conv
}  // namespace kiln
