// Flash attention (FlashAttention-2 style) on tensor cores, sm_80+, FP32 accumulation and softmax:
//   float16/bfloat16, head size D = Dv in {32, 64, 80, 96, 128}: mma.sync m16n8k16;
//   float32, D = Dv in {32, 64}: mma.sync m16n8k8 on TF32 operands, each product as three of them
//     ("3xTF32", see below), so the result keeps FP32 accuracy while running on tensor cores (what
//     PyTorch's memory-efficient attention does for float32 too).
//
// One block per (batch, query head, tile of kBlockM = 16 * kWarps query rows); warp w owns rows
// [16 w, 16 w + 16) of the tile. Its Q fragments are loaded once (ldmatrix) and stay in registers.
// Key/value tiles of kBlockN keys stream through shared memory with cp.async, double buffered:
// tile t + 1 is in flight while tile t is computed. Per tile, a warp
//   1. computes S = Q K^T [16 x kBlockN] into registers (K rows are the "col" B operand: plain
//      ldmatrix);
//   2. scales S by scale * log2(e), applies bounds, causal and the mask (-inf), and runs the online
//      softmax in FP32: the running row max and the (per-lane partial) row sum are rescaled by
//      exp2(m_old - m_new), row maxima are reduced over the 4 lanes of a quad (__shfl_xor 1, 2);
//   3. converts P = exp2(S - m) to the input dtype in registers: the accumulators of two adjacent
//      n8 tiles are exactly one k16 A fragment;
//   4. accumulates O += P V in registers (V rows are the row-major B operand: ldmatrix.trans).
// At the end the row sums are reduced over the quad, O / l goes through shared memory to 16-byte
// global stores. A row whose keys are all masked (or Sk == 0) has l == 0 and gets zeros.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with 16-bit A/B): with g = lane / 4, c = lane % 4,
//   A (16x16, row): a0 = (g, 2c..2c+1), a1 = (g+8, 2c..), a2 = (g, 2c+8..), a3 = (g+8, 2c+8..);
//   B (16x8, col):  b0 = (k 2c..2c+1, n g), b1 = (k 2c+8..2c+9, n g);
//   C (16x8, f32):  c0, c1 = (g, 2c), (g, 2c+1); c2, c3 = (g+8, 2c), (g+8, 2c+1).
// ldmatrix.x4: lanes 8i..8i+7 give the row addresses of matrix i; register i of a lane holds row
// g, elements 2c, 2c+1 of matrix i (.trans: elements (2c, g), (2c+1, g)).
//
// Shared memory rows are padded by 16 bytes (D + 8 elements): the 8 rows an ldmatrix phase reads then
// start 16 bytes apart modulo 128, on distinct banks. Tails: rows past Sq / keys past Sk are zero-filled
// by cp.async (src-size 0) and never read from global memory; keys past Sk get -inf scores.
//
// float32 (3xTF32). A float x splits into big = tf32(x) and small = tf32(x - big); a * b is taken
// as a.small * b.big + a.big * b.small + a.big * b.big (the small * small term is below FP32's
// rounding). Fragments of mma.m16n8k8 with TF32 A/B (PTX ISA; g = lane / 4, c = lane % 4):
//   A (16x8, row): a0 = (g, c), a1 = (g+8, c), a2 = (g, c+4), a3 = (g+8, c+4);
//   B (8x8, col):  b0 = (k c, n g), b1 = (k c+4, n g);   C as above.
// The operands are read from shared memory one float per lane (no ldmatrix for 32-bit elements);
// rows are padded to D + 4 floats, so the reads below hit 32 distinct banks. P @ V reads P straight
// from the S accumulators: in the k8 step over keys 8kk..8kk+7, logical k = c is key 2c and
// k = c + 4 is key 2c + 1 (a sum over keys may take them in any order), so a = (s0, s2, s1, s3)
// of n8 tile kk and V's B fragment is rows 2c and 2c + 1.
#include "kernels/cuda/attention_mma.h"

#include <climits>
#include <initializer_list>
#include <type_traits>

#include <cuda_fp8.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/cuda/mma_ptx.cuh"

namespace kiln {
namespace {

constexpr int kWarps = 4;
constexpr int kBlockM = 16 * kWarps;  // query rows per block
constexpr int kBlockN = 64;           // keys per K/V tile
constexpr int kThreads = 32 * kWarps;
constexpr float kLog2e = 1.4426950408889634f;
// The Q tile is staged in a K tile buffer and the output tile in another one.
static_assert(kBlockM == kBlockN, "Q and O staging reuse the K/V tile buffers");

enum MaskKind : int { kNoMask = 0, kBoolMask = 1, kAddMask = 2 };

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

template <typename T, int D>
struct Tile {
  static constexpr int kVecElems = 16 / sizeof(T);  // elements per 16-byte vector
  static constexpr int kLd = D + kVecElems;         // padded row, in elements
  static constexpr int kElems = kBlockN * kLd;      // one K or V tile
  static constexpr int kVecs = D / kVecElems;       // 16-byte vectors per row
  static constexpr int kSmemElems = 4 * kElems;     // K and V, two stages
  static_assert(D % 16 == 0, "whole k16 steps over the head dim");
  static_assert(kBlockN * kVecs % kThreads == 0 && 16 * kVecs % 32 == 0, "whole copy rounds");
};

// c += a (16x16) * b (16x8), FP32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

// Two floats as one 32-bit register of T: `lo` in the low half (the lower column of a fragment).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

// ---- 3xTF32 (float32) ----

__device__ __forceinline__ uint32_t tf32_round(float x) {
  uint32_t r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
#endif
  return r;
}

__device__ __forceinline__ void split_tf32(float x, uint32_t& big, uint32_t& small) {
  big = tf32_round(x);
  small = tf32_round(x - __uint_as_float(big));
}

// c += a (16x8) * b (8x8) on TF32 operands, FP32 accumulators.
__device__ __forceinline__ void mma_1688_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                              uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// c += a * b in FP32 accuracy: a given split (big, small), b0 and b1 split here.
__device__ __forceinline__ void mma_1688_3xtf32(float (&c)[4], const uint32_t (&a_big)[4],
                                                const uint32_t (&a_small)[4], float b0, float b1) {
  uint32_t b0_big, b0_small, b1_big, b1_small;
  split_tf32(b0, b0_big, b0_small);
  split_tf32(b1, b1_big, b1_small);
  mma_1688_tf32(c, a_small, b0_big, b1_big);
  mma_1688_tf32(c, a_big, b0_small, b1_small);
  mma_1688_tf32(c, a_big, b0_big, b1_big);
}

// The warp's Q rows as A fragments, loaded once: 16-bit types as k16 fragments (ldmatrix), float32
// as k8 fragments split into TF32 big and small parts.
template <typename T, int D>
struct QFragments {
  uint32_t f[D / 16][4];
};
template <int D>
struct QFragments<float, D> {
  uint32_t big[D / 8][4], small[D / 8][4];
};

// Stages a tile of kBlockN rows of D elements (row stride `stride` elements in global memory) into
// shared memory with row stride D + 8; rows [rows, kBlockN) are zero-filled without a global read.
// The tile's kBlockN * kVecs 16-byte vectors in row-major order: thread i copies vectors
// i + j * kThreads, j = 0, 1, ... (kVecs need not be a power of two: D = 80 has 10 per row).
template <int D, typename T>
__device__ __forceinline__ void load_tile_async(T* dst, const T* src, int64_t stride, int rows) {
  using L = Tile<T, D>;
#pragma unroll
  for (int j = 0; j < kBlockN * L::kVecs / kThreads; ++j) {
    const int i = static_cast<int>(threadIdx.x) + j * kThreads;
    const int r = i / L::kVecs, c = i % L::kVecs;
    const bool fill = r < rows;
    cp_async_16(dst + r * L::kLd + c * L::kVecElems, fill ? src + r * stride + c * L::kVecElems : src, fill);
  }
}

// Applies a mask to one tile of scores (log2 units) of the lane's two rows: bool (false -> -inf) or
// additive (+ value * log2 e). mask_rows[r] points at the row's mask element of key 0; along the
// keys the mask has stride 1 (kAlongKeys) or 0 (one value per row). Keys at or past limit[r] are
// not read (past Sk).
template <int kMask, bool kAlongKeys, typename M>
__device__ __forceinline__ void apply_mask(float (&s)[kBlockN / 8][4], const M* const (&mask_rows)[2],
                                           const int (&limit)[2], int64_t n0, int quad) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const M* m = mask_rows[r] + (kAlongKeys ? n0 + 2 * quad : 0);
    float row_add = 0.f;
    bool row_keep = true;
    if (!kAlongKeys && limit[r] > 0) {
      if constexpr (kMask == kBoolMask) row_keep = m[0] != 0;
      if constexpr (kMask == kAddMask) row_add = to_float(m[0]) * kLog2e;
    }
#pragma unroll
    for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        const int off = nt * 8 + (e & 1);  // key n0 + 2 quad + off
        float add = row_add;
        bool keep = row_keep;
        if (kAlongKeys && off + 2 * quad < limit[r]) {
          if constexpr (kMask == kBoolMask) keep = m[off] != 0;
          if constexpr (kMask == kAddMask) add = to_float(m[off]) * kLog2e;
        }
        s[nt][e] = keep ? s[nt][e] + add : -INFINITY;
      }
    }
  }
}

// Lane offsets of the ldmatrix row addresses (16-bit types). Q and V (x4 over a 16x16 block,
// matrices ordered rows 0-7 / rows 8-15 / rows 0-7 + 8 cols / rows 8-15 + 8 cols): for Q that is
// a0..a3, for V (trans) b0, b1 of n8 tile nt and b0, b1 of tile nt + 1. K (x4 over 8 rows x 32
// cols): b0, b1 of k16 step kk and b0, b1 of step kk + 1 (x2, lanes 0-15: step kk alone, the last
// step of an odd D / 16).
template <int kLd>
__device__ __forceinline__ int qv_offset(int lane) {
  return ((lane & 7) + ((lane >> 3) & 1) * 8) * kLd + (lane >> 4) * 8;
}
template <int kLd>
__device__ __forceinline__ int k_offset(int lane) {
  return (lane & 7) * kLd + (lane >> 3) * 8;
}

// The warp's 16 Q rows (q_warp: row 0 of them in shared memory) into A fragments.
template <typename T, int D>
__device__ __forceinline__ void load_q(QFragments<T, D>& qf, const T* q_warp, int lane) {
  constexpr int kLd = Tile<T, D>::kLd;
  if constexpr (std::is_same_v<T, float>) {
    const float* q = q_warp + (lane / 4) * kLd + lane % 4;
#pragma unroll
    for (int kk = 0; kk < D / 8; ++kk) {
      split_tf32(q[kk * 8], qf.big[kk][0], qf.small[kk][0]);
      split_tf32(q[8 * kLd + kk * 8], qf.big[kk][1], qf.small[kk][1]);
      split_tf32(q[kk * 8 + 4], qf.big[kk][2], qf.small[kk][2]);
      split_tf32(q[8 * kLd + kk * 8 + 4], qf.big[kk][3], qf.small[kk][3]);
    }
  } else {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qf.f[kk], q_warp + qv_offset<kLd>(lane) + kk * 16);
  }
}

// s = Q K^T over one K tile (keys in the n dimension).
template <typename T, int D>
__device__ __forceinline__ void tile_scores(float (&s)[kBlockN / 8][4], const QFragments<T, D>& qf,
                                            const T* k_tile, int lane) {
  constexpr int kLd = Tile<T, D>::kLd;
#pragma unroll
  for (int nt = 0; nt < kBlockN / 8; ++nt) {
    s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    if constexpr (std::is_same_v<T, float>) {
      const float* k = k_tile + (nt * 8 + lane / 4) * kLd + lane % 4;  // key g, column c
#pragma unroll
      for (int kk = 0; kk < D / 8; ++kk)
        mma_1688_3xtf32(s[nt], qf.big[kk], qf.small[kk], k[kk * 8], k[kk * 8 + 4]);
    } else {
#pragma unroll
      for (int kk = 0; kk + 1 < D / 16; kk += 2) {
        uint32_t kf[4];
        ldmatrix_x4(kf, k_tile + nt * 8 * kLd + k_offset<kLd>(lane) + kk * 16);
        mma_16816<T>(s[nt], qf.f[kk], kf[0], kf[1]);
        mma_16816<T>(s[nt], qf.f[kk + 1], kf[2], kf[3]);
      }
      if constexpr (D / 16 % 2 == 1) {  // D = 80: columns 64-79
        constexpr int kk = D / 16 - 1;
        uint32_t kf[2];
        ldmatrix_x2(kf, k_tile + nt * 8 * kLd + k_offset<kLd>(lane % 16) + kk * 16);
        mma_16816<T>(s[nt], qf.f[kk], kf[0], kf[1]);
      }
    }
  }
}

// o += P V over one V tile, P = the probabilities in the S accumulators.
template <typename T, int D>
__device__ __forceinline__ void tile_pv(float (&o)[D / 8][4], const float (&s)[kBlockN / 8][4],
                                        const T* v_tile, int lane) {
  constexpr int kLd = Tile<T, D>::kLd;
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 8; ++kk) {
      uint32_t p_big[4], p_small[4];  // logical k = c: key 2c, k = c + 4: key 2c + 1
      split_tf32(s[kk][0], p_big[0], p_small[0]);
      split_tf32(s[kk][2], p_big[1], p_small[1]);
      split_tf32(s[kk][1], p_big[2], p_small[2]);
      split_tf32(s[kk][3], p_big[3], p_small[3]);
      const float* v = v_tile + (kk * 8 + 2 * (lane % 4)) * kLd + lane / 4;  // key 2c, column g
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt) mma_1688_3xtf32(o[nt], p_big, p_small, v[nt * 8], v[kLd + nt * 8]);
    }
  } else {
    // P from the S accumulators of n8 tiles 2 kk and 2 kk + 1 (keys 16 kk..): one k16 A fragment.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      const uint32_t pf[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int nt = 0; nt < D / 8; nt += 2) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, v_tile + kk * 16 * kLd + qv_offset<kLd>(lane) + nt * 8);
        mma_16816<T>(o[nt], pf, vf[0], vf[1]);
        mma_16816<T>(o[nt + 1], pf, vf[2], vf[3]);
      }
    }
  }
}

// Two adjacent output elements (lo at `at`) into the staging tile.
template <typename T>
__device__ __forceinline__ void stage2(T* at, float lo, float hi) {
  if constexpr (std::is_same_v<T, float>) {
    *reinterpret_cast<float2*>(at) = make_float2(lo, hi);
  } else {
    *reinterpret_cast<uint32_t*>(at) = pack2<T>(lo, hi);
  }
}

template <typename T, int D, int kMask>
__global__ void __launch_bounds__(kThreads)
    mma_attention_kernel(MmaAttentionParams p, int64_t m_tiles, float scale_log2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using L = Tile<T, D>;
  constexpr int kLd = L::kLd;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);  // stage s: K at 2 s kElems, V at (2 s + 1) kElems
  T* q_stage = smem + 2 * L::kElems;         // stage 1's K buffer, free until tile 1 is loaded
  T* o_stage = smem;                         // stage 0's K buffer, free after the last tile
  const float neg_inf = -INFINITY;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int quad = lane % 4;  // c in the fragment layouts; g = lane / 4

  // Which tile: blocks of one head are adjacent (K/V stay in L2); causal runs the longest first.
  const int64_t bh = blockIdx.x / m_tiles;
  int64_t mt = blockIdx.x - bh * m_tiles;
  if (p.causal) mt = m_tiles - 1 - mt;
  const int64_t b = bh / p.hq, h = bh - b * p.hq;
  const int64_t hk = h / (p.hq / p.hkv);
  const int64_t m0 = mt * kBlockM;
  const T* qg = static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1] + m0 * p.q_strides[2];
  const T* kg = static_cast<const T*>(p.k) + b * p.k_strides[0] + hk * p.k_strides[1];
  const T* vg = static_cast<const T*>(p.v) + b * p.v_strides[0] + hk * p.v_strides[1];
  const int64_t o_at = b * p.o_strides[0] + h * p.o_strides[1] + m0 * p.o_strides[2];  // output elements
  T* og = static_cast<T*>(p.o) + o_at;

  const int64_t ks = p.k_strides[2], vs = p.v_strides[2];
  const int64_t n_end = p.causal ? min64(p.sk, m0 + kBlockM) : p.sk;  // later keys: masked for all rows
  const int n_tiles = static_cast<int>((n_end + kBlockN - 1) / kBlockN);

  // Prologue: Q (group 0) and K/V tile 0 (group 1) in flight; Q into registers.
  load_tile_async<D>(q_stage, qg, p.q_strides[2], static_cast<int>(min64(kBlockM, p.sq - m0)));
  cp_async_commit();
  if (n_tiles > 0) {
    const int keys = static_cast<int>(min64(kBlockN, p.sk));
    load_tile_async<D>(smem, kg, ks, keys);
    load_tile_async<D>(smem + L::kElems, vg, vs, keys);
  }
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();

  QFragments<T, D> qf;
  load_q<T, D>(qf, q_stage + warp * 16 * kLd, lane);
  __syncthreads();  // every warp has its Q before tile 1 overwrites the staging buffer

  float o_acc[D / 8][4];
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) o_acc[nt][0] = o_acc[nt][1] = o_acc[nt][2] = o_acc[nt][3] = 0.f;
  float m_run[2] = {neg_inf, neg_inf}, l_run[2] = {0.f, 0.f};  // rows g and g + 8; l: this lane's part

  const int64_t w0 = m0 + warp * 16;  // the warp's first row
  const int64_t rows[2] = {w0 + lane / 4, w0 + lane / 4 + 8};
  // Mask pointers of the lane's rows at key 0 (rows clamped: rows past Sq are computed, never stored).
  using M = std::conditional_t<kMask == kBoolMask, uint8_t, T>;
  const M* mask_rows[2] = {nullptr, nullptr};
  if constexpr (kMask != kNoMask) {
    int64_t base = 0, rem = bh;
    for (int i = p.mask_lead_rank - 1; i >= 0; --i) {
      base += (rem % p.mask_lead_dims[i]) * p.mask_lead_strides[i];
      rem /= p.mask_lead_dims[i];
    }
    for (int r = 0; r < 2; ++r) {
      mask_rows[r] = static_cast<const M*>(p.mask) + base + min64(rows[r], p.sq - 1) * p.mask_sq_stride;
    }
  }

  for (int it = 0; it < n_tiles; ++it) {
    if (it + 1 < n_tiles) {  // into the other stage, consumed in iteration it - 1
      const int64_t n1 = int64_t{it + 1} * kBlockN;
      const int keys = static_cast<int>(min64(kBlockN, p.sk - n1));
      T* stage = smem + ((it + 1) & 1) * 2 * L::kElems;
      load_tile_async<D>(stage, kg + n1 * ks, ks, keys);
      load_tile_async<D>(stage + L::kElems, vg + n1 * vs, vs, keys);
    }
    cp_async_commit();   // possibly empty: keeps the group count uniform
    cp_async_wait<1>();  // tile `it` has landed (this thread's copies)
    __syncthreads();     // ... and every thread's

    const int64_t n0 = int64_t{it} * kBlockN;
    // Warp-uniform skips: no live rows, or (causal) every key of the tile is after every row.
    if (w0 < p.sq && !(p.causal && n0 > w0 + 15)) {
      const T* k_tile = smem + (it & 1) * 2 * L::kElems;
      const T* v_tile = k_tile + L::kElems;

      // 1. S = Q K^T.
      float s[kBlockN / 8][4];
      tile_scores<T, D>(s, qf, k_tile, lane);

      // 2. Scale to log2 units; -inf past Sk, after the row (causal) or where the mask says so.
      // limit[r]: the first key (tile-relative) that row r does not see, in [0, kBlockN].
      int limit[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        int64_t lim = min64(kBlockN, p.sk - n0);
        if (p.causal) lim = min64(lim, rows[r] - n0 + 1);
        limit[r] = static_cast<int>(max64(lim, 0)) - 2 * quad;  // compared with the lane-free offset
      }
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[nt][e] = nt * 8 + (e & 1) < limit[e / 2] ? s[nt][e] * scale_log2 : neg_inf;
        }
      }
      if constexpr (kMask != kNoMask) {
        // The mask's key stride is its innermost stride: 1, or 0 where it broadcasts over keys.
        const int lane_limit[2] = {limit[0] + 2 * quad, limit[1] + 2 * quad};
        if (p.mask_sk_stride == 0) {
          apply_mask<kMask, false>(s, mask_rows, lane_limit, n0, quad);
        } else {
          apply_mask<kMask, true>(s, mask_rows, lane_limit, n0, quad);
        }
      }

      // Online softmax: new row maxima over the quad, rescale factors, probabilities, partial sums.
      float alpha[2], base[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = m_run[r];
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        base[r] = mx == neg_inf ? 0.f : mx;  // all keys so far masked: exp2(-inf - 0) = 0, no NaN
        alpha[r] = exp2f(m_run[r] - base[r]);
        m_run[r] = mx;
      }
      float sum[2] = {0.f, 0.f};
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[nt][e] = exp2f(s[nt][e] - base[e / 2]);
          sum[e / 2] += s[nt][e];
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) l_run[r] = l_run[r] * alpha[r] + sum[r];
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt) {
        o_acc[nt][0] *= alpha[0];
        o_acc[nt][1] *= alpha[0];
        o_acc[nt][2] *= alpha[1];
        o_acc[nt][3] *= alpha[1];
      }

      // 3./4. O += P V.
      tile_pv<T, D>(o_acc, s, v_tile, lane);
    }
    __syncthreads();  // every warp is done with this stage before iteration it + 1 refills it
  }

  // Epilogue: O / l (zeros for rows without a visible key), through shared memory to 16-byte stores.
  cp_async_wait<0>();
  __syncthreads();
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    inv[r] = l > 0.f ? 1.f / l : 0.f;
  }
  T* ow = o_stage + warp * 16 * kLd;
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    const int col = nt * 8 + 2 * quad;
    stage2<T>(ow + (lane / 4) * kLd + col, o_acc[nt][0] * inv[0], o_acc[nt][1] * inv[0]);
    stage2<T>(ow + (lane / 4 + 8) * kLd + col, o_acc[nt][2] * inv[1], o_acc[nt][3] * inv[1]);
  }
  __syncwarp();
  const int64_t os = p.o_strides[2];
  if constexpr (!std::is_same_v<T, float>) {
    if (p.o_inv_scale > 0.f) {  // float8 e4m3 output: each 16-byte vector of T becomes 8 bytes
      static_assert(L::kVecElems == 8, "a vector of 16-bit T is 8 values: two packs of four");
      uint8_t* og8 = static_cast<uint8_t*>(p.o) + o_at;
#pragma unroll
      for (int round = 0; round < 16 * L::kVecs / 32; ++round) {
        const int i = lane + round * 32;
        const int r = i / L::kVecs, c = i % L::kVecs;
        if (w0 + r < p.sq) {
          const T* src = ow + r * kLd + c * L::kVecElems;
          uint32_t packed[2];
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const __nv_fp8x2_storage_t lo = __nv_cvt_float2_to_fp8x2(
                make_float2(to_float(src[4 * j]) * p.o_inv_scale, to_float(src[4 * j + 1]) * p.o_inv_scale),
                __NV_SATFINITE, __NV_E4M3);
            const __nv_fp8x2_storage_t hi =
                __nv_cvt_float2_to_fp8x2(make_float2(to_float(src[4 * j + 2]) * p.o_inv_scale,
                                                     to_float(src[4 * j + 3]) * p.o_inv_scale),
                                         __NV_SATFINITE, __NV_E4M3);
            packed[j] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
          }
          *reinterpret_cast<uint2*>(og8 + (warp * 16 + r) * os + c * L::kVecElems) =
              make_uint2(packed[0], packed[1]);
        }
      }
      return;
    }
  }
#pragma unroll
  for (int round = 0; round < 16 * L::kVecs / 32; ++round) {
    const int i = lane + round * 32;
    const int r = i / L::kVecs, c = i % L::kVecs;
    if (w0 + r < p.sq) {
      *reinterpret_cast<uint4*>(og + (warp * 16 + r) * os + c * L::kVecElems) =
          *reinterpret_cast<const uint4*>(ow + r * kLd + c * L::kVecElems);
    }
  }
#endif
}

template <typename T, int D, int kMask>
void launch(const MmaAttentionParams& p, cudaStream_t stream) {
  const int64_t m_tiles = (p.sq + kBlockM - 1) / kBlockM;
  const int64_t blocks = p.batch * p.hq * m_tiles;
  const size_t smem = sizeof(T) * Tile<T, D>::kSmemElems;
  auto kernel = mma_attention_kernel<T, D, kMask>;
  if (smem > 48 * 1024) {  // above the default limit a kernel must opt in
    KILN_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  const float scale_log2 = static_cast<float>(static_cast<double>(p.scale) * 1.4426950408889634);
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(p, m_tiles, scale_log2);
  KILN_CUDA_CHECK_LAUNCH();
}

template <typename T, int D>
void launch_for_mask(const MmaAttentionParams& p, cudaStream_t stream) {
  if (p.mask_kind == kBoolMask) return launch<T, D, kBoolMask>(p, stream);
  if (p.mask_kind == kAddMask) return launch<T, D, kAddMask>(p, stream);
  launch<T, D, kNoMask>(p, stream);
}

template <typename T>
void launch_for_dtype(const MmaAttentionParams& p, int64_t d, cudaStream_t stream) {
  if (d == 32) return launch_for_mask<T, 32>(p, stream);
  if (d == 64) return launch_for_mask<T, 64>(p, stream);
  if constexpr (!std::is_same_v<T, float>) {  // float32 fragments of D > 64 would not fit in registers
    if (d == 80) return launch_for_mask<T, 80>(p, stream);
    if (d == 96) return launch_for_mask<T, 96>(p, stream);
    if (d == 128) return launch_for_mask<T, 128>(p, stream);
  }
  KILN_FAIL("mma attention: unsupported head size " << d);
}

}  // namespace

bool mma_attention_supports(const MmaAttentionParams& p, DataType dtype, int64_t d, int64_t dv, int arch) {
  if (arch < 80 || d != dv) return false;
  if (dtype == DataType::kFloat32) {
    if (d != 32 && d != 64) return false;
  } else if (dtype == DataType::kFloat16 || dtype == DataType::kBFloat16) {
    if (d != 32 && d != 64 && d != 80 && d != 96 && d != 128) return false;
  } else {
    return false;
  }
  const int64_t vec = 16 / static_cast<int64_t>(dtype_size(dtype));  // elements per 16-byte vector
  for (const void* ptr : std::initializer_list<const void*>{p.q, p.k, p.v}) {
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  }
  for (const int64_t* strides :
       std::initializer_list<const int64_t*>{p.q_strides, p.k_strides, p.v_strides}) {
    for (int i = 0; i < 3; ++i) {
      if (strides[i] % vec != 0) return false;
    }
  }
  // The output: vectors of `vec` elements, 16 bytes of T or, as float8, 8 bytes.
  const int64_t o_bytes = p.o_inv_scale > 0.f ? vec : 16;
  if (p.o_inv_scale > 0.f && dtype == DataType::kFloat32) return false;
  if (reinterpret_cast<uintptr_t>(p.o) % o_bytes != 0) return false;
  for (int i = 0; i < 3; ++i) {
    if (p.o_strides[i] % vec != 0) return false;
  }
  if (p.hkv <= 0 || p.hq % p.hkv != 0) return false;
  if (p.mask_kind != kNoMask && p.mask_sk_stride != 0 && p.mask_sk_stride != 1) return false;
  const int64_t blocks = p.batch * p.hq * ((p.sq + kBlockM - 1) / kBlockM);
  return blocks <= INT_MAX;  // one block per tile, grid.x
}

void launch_mma_attention(const MmaAttentionParams& p, DataType dtype, int64_t d, cudaStream_t stream) {
  if (p.batch == 0 || p.hq == 0 || p.sq == 0) return;
  if (dtype == DataType::kFloat16) return launch_for_dtype<__half>(p, d, stream);
  if (dtype == DataType::kFloat32) return launch_for_dtype<float>(p, d, stream);
  KILN_CHECK(dtype == DataType::kBFloat16, "mma attention: float32, float16 or bfloat16 expected");
  launch_for_dtype<__nv_bfloat16>(p, d, stream);
}

}  // namespace kiln
