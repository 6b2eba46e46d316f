// Attention on CUDA (attention in both layouts and packed_attention, one set of kernels: q, k, v
// and the output are addressed through the strides of AttentionGeometry, ir/ops/attention.h).
// A flash-attention-style kernel without tensor cores (correctness first).
// One block per (batch * query head, tile of kBlockM query rows); each of its warps owns
// kRowsPerWarp rows. Key/value tiles of kBlockN keys stream through shared memory (as float);
// lane l computes the scores of key l for the warp's rows, a warp-wide online softmax (running
// max and sum, float32) rescales the output accumulators, which live in registers: lane l holds
// output columns l, l + 32, ... of each row. Causal layers stop at the tile's last visible key.
// No scratch memory. A row whose keys are all masked gets zeros, like the reference.
//
// Fast path: float16/bfloat16 with head size D = Dv in {32, 64, 80, 96, 128}, or float32 with D = Dv in
// {32, 64}, on sm_80+ (16-byte aligned tensors) takes the tensor-core flash-attention kernel of
// attention_mma.cu; everything else (other head sizes, misaligned views) takes the kernel here.
#include <algorithm>
#include <cmath>
#include <string>

#include "ir/op_schema.h"
#include "ir/ops/attention.h"
#include "kernels/broadcast.h"
#include "kernels/cuda/attention_mma.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/device.h"
#include "kernels/kernel.h"

namespace kiln {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kBlockM = kWarps * kRowsPerWarp;  // query rows per block
constexpr int kBlockN = 32;                     // keys per tile: one per lane
constexpr int kThreads = kWarps * 32;
constexpr int64_t kMaxHeadDim = 256;  // 8 output columns per lane and row
constexpr unsigned kFullMask = 0xffffffffu;

enum MaskKind : int { kNoMask = 0, kBoolMask = 1, kAddMask = 2 };

struct AttentionParams {
  int64_t sq, sk, d, dv;
  AttentionOperand q_at, k_at, v_at, out_at;  // element (b, h, s, c) of each buffer
  int64_t hq, hkv, group;                     // group = hq / hkv query heads per kv head
  int64_t m_tiles;                            // query tiles per head
  int64_t tiles;                              // heads * m_tiles
  float scale;
  float out_inv_scale;  // > 0: a float8 output (the tensor-core kernel only)
  bool causal;
  int mask_kind;
  // Mask strides, 0 where broadcast: lead dims are [B..., Hq] (the flattened index bh = b * hq + h).
  int lead_rank;
  int64_t lead_dims[kMaxRank];
  int64_t lead_strides[kMaxRank];
  int64_t mask_sq_stride, mask_sk_stride;
};

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

// Shared-memory layout, in floats: Q tile [kBlockM][d], K tile [kBlockN][kstride], V tile
// [kBlockN][dv]. kstride = d | 1 is odd, so lanes reading their own key row hit distinct banks.
__host__ __device__ inline int64_t k_stride(int64_t d) { return d | 1; }
inline size_t smem_bytes(int64_t d, int64_t dv) {
  return sizeof(float) * static_cast<size_t>(kBlockM * d + kBlockN * k_stride(d) + kBlockN * dv);
}

template <typename T, int kChunks>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     const uint8_t* __restrict__ mask_bool, const T* __restrict__ mask_add,
                     T* __restrict__ out, AttentionParams p) {
  extern __shared__ float smem[];
  const int d = static_cast<int>(p.d), dv = static_cast<int>(p.dv), ks = static_cast<int>(k_stride(p.d));
  float* q_tile = smem;
  float* k_tile = q_tile + kBlockM * d;
  float* v_tile = k_tile + kBlockN * ks;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float neg_inf = -INFINITY;

  for (int64_t tile = blockIdx.x; tile < p.tiles; tile += gridDim.x) {
    const int64_t bh = tile / p.m_tiles;
    const int64_t m0 = (tile % p.m_tiles) * kBlockM;
    const int64_t b = bh / p.hq, h = bh % p.hq, kvh = h / p.group;
    const T* qb = q + p.q_at.offset + b * p.q_at.batch + h * p.q_at.head + m0 * p.q_at.seq;
    const T* kb = k + p.k_at.offset + b * p.k_at.batch + kvh * p.k_at.head;
    const T* vb = v + p.v_at.offset + b * p.v_at.batch + kvh * p.v_at.head;
    int64_t mask_base = 0;
    if (p.mask_kind != kNoMask) {
      int64_t rem = bh;
      for (int i = p.lead_rank - 1; i >= 0; --i) {
        mask_base += (rem % p.lead_dims[i]) * p.lead_strides[i];
        rem /= p.lead_dims[i];
      }
    }
    const int rows = static_cast<int>(min64(kBlockM, p.sq - m0));

    __syncthreads();  // the previous tile's readers are done with shared memory
    for (int i = threadIdx.x; i < kBlockM * d; i += kThreads) {
      const int r = i / d;
      q_tile[i] = r < rows ? to_float(qb[r * p.q_at.seq + (i - r * d)]) : 0.f;
    }

    float m_run[kRowsPerWarp], l_run[kRowsPerWarp], acc[kRowsPerWarp][kChunks];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      m_run[r] = neg_inf;
      l_run[r] = 0.f;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) acc[r][c] = 0.f;
    }

    // Causal: keys past the tile's last row are masked for every row of the tile.
    const int64_t n_end = p.causal ? min64(p.sk, m0 + kBlockM) : p.sk;
    for (int64_t n0 = 0; n0 < n_end; n0 += kBlockN) {
      __syncthreads();  // the Q tile is written, the previous K/V tile consumed
      const int keys = static_cast<int>(min64(kBlockN, p.sk - n0));
      const T* kt = kb + n0 * p.k_at.seq;
      const T* vt = vb + n0 * p.v_at.seq;
      for (int i = threadIdx.x; i < kBlockN * d; i += kThreads) {
        const int r = i / d;
        k_tile[r * ks + (i - r * d)] = r < keys ? to_float(kt[r * p.k_at.seq + (i - r * d)]) : 0.f;
      }
      for (int i = threadIdx.x; i < kBlockN * dv; i += kThreads) {
        const int r = i / dv;
        v_tile[i] = r < keys ? to_float(vt[r * p.v_at.seq + (i - r * dv)]) : 0.f;
      }
      __syncthreads();

      // Scores of key n0 + lane against the warp's rows.
      float s[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) s[r] = 0.f;
      const float* k_row = k_tile + lane * ks;
      const float* q_rows = q_tile + warp * kRowsPerWarp * d;
      for (int c = 0; c < d; ++c) {
        const float kc = k_row[c];
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) s[r] = fmaf(q_rows[r * d + c], kc, s[r]);
      }

      // Online softmax: s[r] becomes the row's unnormalized probability of this lane's key.
      const int64_t j = n0 + lane;
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int64_t i = m0 + warp * kRowsPerWarp + r;
        float x = s[r] * p.scale;
        bool live = j < p.sk && i < p.sq && !(p.causal && j > i);
        if (live && p.mask_kind != kNoMask) {
          const int64_t off = mask_base + i * p.mask_sq_stride + j * p.mask_sk_stride;
          if (p.mask_kind == kBoolMask) {
            live = mask_bool[off] != 0;
          } else {
            x += to_float(mask_add[off]);
          }
        }
        x = live ? x : neg_inf;
        const float m_new = fmaxf(m_run[r], warp_max(x));
        float prob = 0.f, alpha = 1.f;
        if (m_new != neg_inf) {  // else every key so far is masked: nothing accumulated yet
          prob = expf(x - m_new);
          alpha = expf(m_run[r] - m_new);
        }
        l_run[r] = l_run[r] * alpha + warp_sum(prob);
        m_run[r] = m_new;
#pragma unroll
        for (int c = 0; c < kChunks; ++c) acc[r][c] *= alpha;
        s[r] = prob;
      }

      // acc[r][c] += sum over the tile's keys of prob(r, key) * v[key][lane + 32 c].
      for (int jj = 0; jj < keys; ++jj) {
        const float* v_row = v_tile + jj * dv;
        float vv[kChunks];
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          const int col = lane + 32 * c;
          vv[c] = col < dv ? v_row[col] : 0.f;
        }
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
          const float pj = __shfl_sync(kFullMask, s[r], jj);
#pragma unroll
          for (int c = 0; c < kChunks; ++c) acc[r][c] = fmaf(pj, vv[c], acc[r][c]);
        }
      }
    }

#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t i = m0 + warp * kRowsPerWarp + r;
      if (i >= p.sq) continue;
      const float inv = l_run[r] > 0.f ? 1.f / l_run[r] : 0.f;  // all keys masked: zeros
      T* o = out + p.out_at.offset + b * p.out_at.batch + h * p.out_at.head + i * p.out_at.seq;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const int col = lane + 32 * c;
        if (col < dv) o[col] = from_float<T>(acc[r][c] * inv);
      }
    }
  }
}

// The buffers of one attention problem: q, k and v (one buffer for packed_attention), an optional
// mask, the output.
struct AttentionBuffers {
  const void *q, *k, *v;
  const TensorView* mask;  // nullptr: none
  void* out;
};

template <typename T, int kChunks>
void launch(const AttentionBuffers& buf, const AttentionParams& p, cudaStream_t stream) {
  const uint8_t* mask_bool = p.mask_kind == kBoolMask ? static_cast<const uint8_t*>(buf.mask->data) : nullptr;
  const T* mask_add = p.mask_kind == kAddMask ? static_cast<const T*>(buf.mask->data) : nullptr;
  const size_t smem = smem_bytes(p.d, p.dv);
  auto kernel = attention_kernel<T, kChunks>;
  if (smem > 48 * 1024) {  // above the default limit a kernel must opt in
    KILN_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  const unsigned grid =
      static_cast<unsigned>(std::min<int64_t>(p.tiles, int64_t{1} << 24));  // loop covers the rest
  kernel<<<grid, kThreads, smem, stream>>>(static_cast<const T*>(buf.q), static_cast<const T*>(buf.k),
                                           static_cast<const T*>(buf.v), mask_bool, mask_add,
                                           static_cast<T*>(buf.out), p);
  KILN_CUDA_CHECK_LAUNCH();
}

// The tensor-core kernel's view of the problem: each operand's base pointer moved to its offset,
// its (batch, head, seq) strides from the geometry; the mask as the generic kernel reads it.
MmaAttentionParams mma_params(const AttentionGeometry& g, const AttentionBuffers& buf,
                              const AttentionParams& p, DataType dtype) {
  const size_t e = dtype_size(dtype);
  auto at = [e](const void* base, const AttentionOperand& o) {
    return static_cast<const void*>(static_cast<const uint8_t*>(base) + o.offset * static_cast<int64_t>(e));
  };
  auto strides = [](int64_t(&dst)[3], const AttentionOperand& o) {
    dst[0] = o.batch;
    dst[1] = o.head;
    dst[2] = o.seq;
  };
  MmaAttentionParams m;
  m.q = at(buf.q, g.q);
  m.k = at(buf.k, g.k);
  m.v = at(buf.v, g.v);
  m.o = p.out_inv_scale > 0.f
            ? static_cast<void*>(static_cast<uint8_t*>(buf.out) + g.out.offset)  // 1-byte float8
            : const_cast<void*>(at(buf.out, g.out));
  strides(m.q_strides, g.q);
  strides(m.k_strides, g.k);
  strides(m.v_strides, g.v);
  strides(m.o_strides, g.out);
  m.batch = g.batch;
  m.hq = g.hq;
  m.hkv = g.hkv;
  m.sq = g.sq;
  m.sk = g.sk;
  m.mask = buf.mask ? buf.mask->data : nullptr;
  m.mask_kind = p.mask_kind;
  m.mask_lead_rank = p.lead_rank;
  for (int i = 0; i < p.lead_rank; ++i) {
    m.mask_lead_dims[i] = p.lead_dims[i];
    m.mask_lead_strides[i] = p.lead_strides[i];
  }
  m.mask_sq_stride = p.mask_sq_stride;
  m.mask_sk_stride = p.mask_sk_stride;
  m.scale = p.scale;
  m.causal = p.causal;
  m.o_inv_scale = p.out_inv_scale;
  return m;
}

// One attention problem of layer `who` ("layer 'x' (op)"): parameters from the geometry, then the
// tensor-core or the generic kernel.
void run_attention(const std::string& who, const AttentionAttrs& attrs, const AttentionGeometry& g,
                   const AttentionBuffers& buf, DataType dtype, int arch, cudaStream_t stream) {
  KILN_CHECK(g.d <= kMaxHeadDim && g.dv <= kMaxHeadDim,
             who << ": the CUDA kernel supports head sizes up to " << kMaxHeadDim << ", got D=" << g.d
                 << ", Dv=" << g.dv << "; split the head dim or run this layer on the reference backend");
  const int64_t heads = g.batch * g.hq;
  if (heads == 0 || g.sq == 0 || g.dv == 0) return;
  AttentionParams p{};
  p.sq = g.sq;
  p.sk = g.sk;
  p.d = g.d;
  p.dv = g.dv;
  p.q_at = g.q;
  p.k_at = g.k;
  p.v_at = g.v;
  p.out_at = g.out;
  p.hq = g.hq;
  p.hkv = g.hkv;
  p.group = g.hq / g.hkv;
  p.m_tiles = (p.sq + kBlockM - 1) / kBlockM;
  p.tiles = heads * p.m_tiles;
  p.scale = static_cast<float>(attention_scale(attrs, p.d));
  p.causal = attrs.causal;
  p.out_inv_scale = attrs.out_inv_scale;
  p.mask_kind = kNoMask;
  if (buf.mask) {
    p.mask_kind = buf.mask->dtype == DataType::kBool ? kBoolMask : kAddMask;
    BroadcastIndexer mi = make_broadcast_indexer(buf.mask->dims, g.scores);
    p.lead_rank = static_cast<int>(g.scores.size()) - 2;
    for (int i = 0; i < p.lead_rank; ++i) {
      p.lead_dims[i] = mi.out_dims[i];
      p.lead_strides[i] = mi.in_strides[i];
    }
    p.mask_sq_stride = mi.in_strides[p.lead_rank];
    p.mask_sk_stride = mi.in_strides[p.lead_rank + 1];
  }
  const MmaAttentionParams mp = mma_params(g, buf, p, dtype);
  if (mma_attention_supports(mp, dtype, p.d, p.dv, arch)) return launch_mma_attention(mp, dtype, p.d, stream);
  // The builder folds a float8 output only where the IR's conditions give the tensor-core kernel.
  KILN_CHECK(
      !(p.out_inv_scale > 0.f),
      who << ": a float8 output (output_inv_scale) runs on the tensor-core kernel only (sm_80+, float16 "
             "or bfloat16, head size 32, 64 or 128, 16-byte aligned inputs), which does not take this "
             "problem");
  dispatch_floating(dtype, "attention", [&](auto tag) {
    using T = decltype(tag);
    if (p.dv <= 32) return launch<T, 1>(buf, p, stream);
    if (p.dv <= 64) return launch<T, 2>(buf, p, stream);
    if (p.dv <= 128) return launch<T, 4>(buf, p, stream);
    return launch<T, 8>(buf, p, stream);
  });
}

class CudaAttention final : public Kernel {
 public:
  // Kernels are created on the engine's device: its architecture decides the tensor-core path.
  CudaAttention(const Layer& layer, bool packed)
      : who_(describe(layer)), attrs_(attention_attrs(layer)), packed_(packed), arch_(cuda_device_arch()) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    if (packed_) {
      const AttentionBuffers buf{in[0].data, in[0].data, in[0].data, in.size() == 2 ? &in[1] : nullptr,
                                 out[0].data};
      return run_attention(who_, attrs_, packed_attention_geometry(attrs_.layout, in[0].dims), buf,
                           in[0].dtype, arch_, stream);
    }
    const AttentionBuffers buf{in[0].data, in[1].data, in[2].data, in.size() == 4 ? &in[3] : nullptr,
                               out[0].data};
    run_attention(who_, attrs_, attention_geometry(attrs_.layout, in[0].dims, in[1].dims, in[2].dims), buf,
                  in[0].dtype, arch_, stream);
  }
  std::string name() const override { return packed_ ? "cuda_packed_attention" : "cuda_attention"; }

 private:
  std::string who_;
  AttentionAttrs attrs_;
  bool packed_;
  int arch_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("attention", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaAttention>(l, false); });
  register_kernel("packed_attention", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaAttention>(l, true); });
});

}  // namespace kiln
