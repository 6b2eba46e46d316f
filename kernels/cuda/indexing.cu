// CUDA indexing ops (see ir/ops/indexing.cpp).
//   gather, embedding, gather_elements, pad: one thread per output element (grid-stride), elements
//     moved as raw words of their size, so one instantiation serves every dtype of that size. An
//     index out of range (after wrapping a negative one, where the layer wraps) reads nothing and
//     writes NaN for floating data, 0 for integer and bool data: a kernel cannot raise without
//     synchronizing (the reference backend reports it), and a NaN row cannot pass for a real one.
//   cumsum: along the last axis one block per row scans tiles with warp shuffles and carries the
//     running total; along other axes one thread per line walks the axis (coalesced across lines).
//     float16/bfloat16/float32 accumulate in float32, int32/int64 in int64.
//   topk: one block sorts a row of up to kTopkChunk elements (value, index) in shared memory with a
//     bitonic sort and writes the first k, so results are always sorted. A longer row is cut into
//     pieces of kTopkChunk whose best k each go on to the next pass (candidates in the workspace)
//     until one piece holds the row: k up to kTopkChunk / 2 there.
#include <cstring>
#include <type_traits>

#include "ir/op_schema.h"
#include "ir/ops/indexing.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"  // host-side dtype rounding of the pad value

namespace kiln {
namespace {

using indexing::axis_view;
using indexing::AxisView;

constexpr int kBlock = 256;
constexpr int64_t kTopkChunk = 4096;  // topk: elements one block sorts in shared memory

template <typename T>
constexpr bool is_float_type() {
  return std::is_same_v<T, float> || std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
}

// The type a numeric T is accumulated / compared in: float for floating types, T otherwise.
template <typename T>
using Wide = std::conditional_t<is_float_type<T>(), float, T>;

template <typename T>
__device__ __forceinline__ Wide<T> widen(T x) {
  if constexpr (is_float_type<T>()) {
    return to_float(x);
  } else {
    return x;
  }
}

template <typename T, typename A>
__device__ __forceinline__ T narrow(A x) {
  if constexpr (is_float_type<T>()) {
    return from_float<T>(x);
  } else {
    return static_cast<T>(x);
  }
}

int64_t axis_of(const Layer& l, int64_t fallback) { return l.attrs.get_int("axis", fallback); }

// What a gather writes for an out-of-range index, as the raw word of `t`: a quiet NaN for floating
// dtypes, 0 otherwise.
uint64_t out_of_range_word(DataType t) {
  switch (t) {
    case DataType::kFloat32:
      return 0x7fc00000u;
    case DataType::kFloat16:
      return 0x7e00u;
    case DataType::kBFloat16:
      return 0x7fc0u;
    default:
      return 0;
  }
}

// The element position of index `i` on an axis of size `n` (negatives wrap once when `wrap`), or
// -1 when it is out of range.
template <typename I>
__device__ __forceinline__ int64_t index_position(I i, int64_t n, bool wrap) {
  int64_t j = static_cast<int64_t>(i);
  if (wrap && j < 0) j += n;
  return j >= 0 && j < n ? j : -1;
}

// ---- gather / embedding ----

template <typename W, typename I>
__global__ void gather_kernel(const W* __restrict__ data, const I* __restrict__ idx, W* __restrict__ out,
                              int64_t n, int64_t count, int64_t inner, int64_t total, bool wrap, W fill) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t k = e % inner;
    const int64_t t = e / inner;
    const int64_t p = t % count;
    const int64_t o = t / count;
    const int64_t j = index_position(idx[p], n, wrap);
    out[e] = j >= 0 ? data[(o * n + j) * inner + k] : fill;
  }
}

class CudaGather final : public Kernel {
 public:
  CudaGather(const Layer& l, int64_t axis)
      : who_(describe(l)), axis_(axis), wrap_(indexing::wraps_negative_indices(l)), name_("cuda_" + l.op) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const int64_t rank = static_cast<int64_t>(in[0].dims.size());
    const AxisView v = axis_view(in[0].dims, indexing::normalize_axis(axis_, rank, who_));
    const int64_t count = volume(in[1].dims);
    const int64_t total = v.outer * count * v.inner;
    if (total == 0) return;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    dispatch_word(dtype_size(in[0].dtype), who_.c_str(), [&](auto w) {
      using W = decltype(w);
      dispatch_index(in[1].dtype, who_.c_str(), [&](auto i) {
        using I = decltype(i);
        gather_kernel<W, I><<<grid_for(total, kBlock), kBlock, 0, stream>>>(
            static_cast<const W*>(in[0].data), static_cast<const I*>(in[1].data),
            static_cast<W*>(out[0].data), v.n, count, v.inner, total, wrap_,
            static_cast<W>(out_of_range_word(in[0].dtype)));
        KILN_CUDA_CHECK_LAUNCH();
      });
    });
  }
  std::string name() const override { return name_; }

 private:
  std::string who_;
  int64_t axis_;
  bool wrap_;
  std::string name_;
};

// ---- gather_elements ----

struct ElementsIndexer {
  int rank = 0;
  int axis = 0;
  int64_t index_dims[kMaxRank] = {};
  int64_t data_strides[kMaxRank] = {};
  int64_t axis_size = 0;
  bool wrap = true;
};

template <typename W, typename I>
__global__ void gather_elements_kernel(const W* __restrict__ data, const I* __restrict__ idx,
                                       W* __restrict__ out, ElementsIndexer g, int64_t total, W fill) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    int64_t rem = e, src = 0;
    bool valid = true;
    for (int d = g.rank - 1; d >= 0; --d) {
      int64_t c = rem % g.index_dims[d];
      rem /= g.index_dims[d];
      if (d == g.axis) {
        c = index_position(idx[e], g.axis_size, g.wrap);
        valid = c >= 0;
      }
      src += c * g.data_strides[d];
    }
    out[e] = valid ? data[src] : fill;
  }
}

class CudaGatherElements final : public Kernel {
 public:
  explicit CudaGatherElements(const Layer& l)
      : who_(describe(l)), axis_(axis_of(l, 0)), wrap_(indexing::wraps_negative_indices(l)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const Dims& data = in[0].dims;
    const int rank = static_cast<int>(data.size());
    ElementsIndexer g;
    g.rank = rank;
    g.axis = static_cast<int>(indexing::normalize_axis(axis_, rank, who_));
    g.axis_size = data[g.axis];
    g.wrap = wrap_;
    int64_t stride = 1;
    for (int d = rank - 1; d >= 0; --d) {
      g.index_dims[d] = in[1].dims[d];
      g.data_strides[d] = stride;
      stride *= data[d];
    }
    const int64_t total = volume(in[1].dims);
    if (total == 0) return;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    dispatch_word(dtype_size(in[0].dtype), who_.c_str(), [&](auto w) {
      using W = decltype(w);
      dispatch_index(in[1].dtype, who_.c_str(), [&](auto i) {
        using I = decltype(i);
        gather_elements_kernel<W, I><<<grid_for(total, kBlock), kBlock, 0, stream>>>(
            static_cast<const W*>(in[0].data), static_cast<const I*>(in[1].data),
            static_cast<W*>(out[0].data), g, total, static_cast<W>(out_of_range_word(in[0].dtype)));
        KILN_CUDA_CHECK_LAUNCH();
      });
    });
  }
  std::string name() const override { return "cuda_gather_elements"; }

 private:
  std::string who_;
  int64_t axis_;
  bool wrap_;
};

// ---- pad ----

enum PadMode : int { kConstant, kReflect, kReplicate };

struct PadIndexer {
  int rank = 0;
  int mode = kConstant;
  int64_t out_dims[kMaxRank] = {};
  int64_t in_dims[kMaxRank] = {};
  int64_t before[kMaxRank] = {};
};

// I: the index type, 32-bit when every index fits (cheaper divisions).
template <typename W, typename I>
__global__ void pad_kernel(const W* __restrict__ x, W* __restrict__ y, PadIndexer p, W fill, I total) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < static_cast<int64_t>(total);
       e += int64_t{gridDim.x} * blockDim.x) {
    I rem = static_cast<I>(e), src = 0, stride = 1;
    bool inside = true;
    for (int d = p.rank - 1; d >= 0; --d) {
      const I out_dim = static_cast<I>(p.out_dims[d]), q = rem / out_dim;
      int64_t c = static_cast<int64_t>(rem - q * out_dim) - p.before[d];
      rem = q;
      const int64_t n = p.in_dims[d];
      if (c < 0 || c >= n) {
        if (p.mode == kConstant) {
          inside = false;
        } else if (p.mode == kReflect) {
          c = c < 0 ? -c : 2 * (n - 1) - c;
        } else {
          c = c < 0 ? 0 : n - 1;
        }
      }
      src += static_cast<I>(c) * stride;
      stride *= static_cast<I>(n);
    }
    y[e] = inside ? x[src] : fill;
  }
}

// Constant padding of the last dim only (a convolution's channels-last input padded to 8
// channels): a [rows, out_n] walk with one division per element instead of one per dim.
template <typename W>
__global__ void pad_last_dim_kernel(const W* __restrict__ x, W* __restrict__ y, uint32_t in_n, uint32_t out_n,
                                    uint32_t before, W fill, uint32_t total) {
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
    const uint32_t row = e / out_n, col = e - row * out_n;
    y[e] = col >= before && col - before < in_n ? x[row * in_n + col - before] : fill;
  }
}

// The same, when an output row is whole 16-byte chunks (3 channels padded to 8 in half, or to 16
// in int8): one thread per chunk, assembled in registers and stored in one 16-byte write.
template <typename W>
__global__ void pad_last_dim_vec_kernel(const W* __restrict__ x, uint4* __restrict__ y, uint32_t in_n,
                                        uint32_t out_n, uint32_t before, W fill, uint32_t chunks) {
  constexpr uint32_t kPer = sizeof(uint4) / sizeof(W);
  const uint32_t per_row = out_n / kPer;
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < chunks; e += gridDim.x * blockDim.x) {
    const uint32_t row = e / per_row, col0 = (e - row * per_row) * kPer;
    union {
      uint4 v;
      W w[kPer];
    } u;
#pragma unroll
    for (uint32_t k = 0; k < kPer; ++k) {
      const uint32_t col = col0 + k;
      u.w[k] = col >= before && col - before < in_n ? x[row * in_n + col - before] : fill;
    }
    y[e] = u.v;
  }
}

class CudaPad final : public Kernel {
 public:
  explicit CudaPad(const Layer& l)
      : pads_(l.attrs.get_ints("pads", describe(l))),
        mode_name_(l.attrs.has("mode") ? l.attrs.get_string("mode", describe(l)) : "constant"),
        mode_(variant_code(indexing::pad_modes(), mode_name_)),
        value_(l.attrs.get_float("value", 0.0)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const int rank = static_cast<int>(in[0].dims.size());
    const std::vector<int64_t> pads = indexing::resolve_pads(pads_, rank);
    PadIndexer p;
    p.rank = rank;
    p.mode = mode_;
    for (int d = 0; d < rank; ++d) {
      p.out_dims[d] = out[0].dims[d];
      p.in_dims[d] = in[0].dims[d];
      p.before[d] = pads[2 * d];
    }
    const int64_t total = volume(out[0].dims);
    if (total == 0) return;
    uint64_t fill_bits = 0;  // the pad value rounded to the output dtype, as raw bytes
    store_element({&fill_bits, out[0].dtype, {1}}, 0, value_);
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    dispatch_word(dtype_size(in[0].dtype), "pad", [&](auto w) {
      using W = decltype(w);
      W fill;
      std::memcpy(&fill, &fill_bits, sizeof(W));
      const auto* x = static_cast<const W*>(in[0].data);
      auto* y = static_cast<W*>(out[0].data);
      const bool small = total < (int64_t{1} << 31) && volume(in[0].dims) < (int64_t{1} << 31);
      bool last_only =
          rank > 0 && mode_ == kConstant && pads[2 * (rank - 1)] >= 0 && pads[2 * (rank - 1) + 1] >= 0;
      for (int d = 0; d + 1 < rank; ++d) last_only &= pads[2 * d] == 0 && pads[2 * d + 1] == 0;
      const uint32_t out_n = static_cast<uint32_t>(p.out_dims[rank - 1]);
      const bool vec =
          out_n * sizeof(W) % sizeof(uint4) == 0 && reinterpret_cast<uintptr_t>(y) % sizeof(uint4) == 0;
      if (small && last_only && vec) {
        const int64_t chunks = total * static_cast<int64_t>(sizeof(W)) / static_cast<int64_t>(sizeof(uint4));
        pad_last_dim_vec_kernel<W><<<grid_for(chunks, kBlock), kBlock, 0, stream>>>(
            x, reinterpret_cast<uint4*>(y), static_cast<uint32_t>(p.in_dims[rank - 1]), out_n,
            static_cast<uint32_t>(p.before[rank - 1]), fill, static_cast<uint32_t>(chunks));
      } else if (small && last_only) {
        pad_last_dim_kernel<W><<<grid_for(total, kBlock), kBlock, 0, stream>>>(
            x, y, static_cast<uint32_t>(p.in_dims[rank - 1]), static_cast<uint32_t>(p.out_dims[rank - 1]),
            static_cast<uint32_t>(p.before[rank - 1]), fill, static_cast<uint32_t>(total));
      } else if (small) {
        pad_kernel<W, uint32_t>
            <<<grid_for(total, kBlock), kBlock, 0, stream>>>(x, y, p, fill, static_cast<uint32_t>(total));
      } else {
        pad_kernel<W, int64_t><<<grid_for(total, kBlock), kBlock, 0, stream>>>(x, y, p, fill, total);
      }
      KILN_CUDA_CHECK_LAUNCH();
    });
  }
  std::string name() const override { return "cuda_pad_" + mode_name_; }

 private:
  std::vector<int64_t> pads_;
  std::string mode_name_;
  int mode_;
  double value_;
};

// ---- cumsum ----

template <typename T>
using Acc = std::conditional_t<is_float_type<T>(), float, int64_t>;

// One thread per line (o, k) of a tensor seen as [outer, n, inner] with inner > 1.
template <typename T>
__global__ void cumsum_lines(const T* __restrict__ x, T* __restrict__ y, int64_t n, int64_t inner,
                             int64_t lines, bool exclusive, bool reverse) {
  for (int64_t line = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; line < lines;
       line += int64_t{gridDim.x} * blockDim.x) {
    const int64_t base = (line / inner) * n * inner + line % inner;
    Acc<T> sum = 0;
    for (int64_t s = 0; s < n; ++s) {
      const int64_t e = base + (reverse ? n - 1 - s : s) * inner;
      const Acc<T> v = static_cast<Acc<T>>(widen(x[e]));
      if (!exclusive) sum += v;
      y[e] = narrow<T>(sum);
      if (exclusive) sum += v;
    }
  }
}

// One block of kBlock threads per contiguous row: tiles of kBlock elements, each scanned with warp
// shuffles and per-warp totals, offset by the total of the tiles before.
template <typename T>
__global__ void cumsum_rows(const T* __restrict__ x, T* __restrict__ y, int64_t n, int64_t rows,
                            bool exclusive, bool reverse) {
  using A = Acc<T>;
  constexpr int kWarps = kBlock / 32;
  __shared__ A warp_total[kWarps];
  __shared__ A tile_incl[kBlock];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * n;
    T* yr = y + r * n;
    A carry = 0;
    for (int64_t base = 0; base < n; base += kBlock) {
      const int64_t s = base + threadIdx.x;
      const int64_t j = reverse ? n - 1 - s : s;
      A incl = s < n ? static_cast<A>(widen(xr[j])) : A(0);
      for (int off = 1; off < 32; off <<= 1) {
        A t = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += t;
      }
      if (lane == 31) warp_total[warp] = incl;
      __syncthreads();
      if (warp == 0) {
        A w = lane < kWarps ? warp_total[lane] : A(0);
        for (int off = 1; off < kWarps; off <<= 1) {
          A t = __shfl_up_sync(0xffffffffu, w, off);
          if (lane >= off) w += t;
        }
        if (lane < kWarps) warp_total[lane] = w;  // inclusive over warps
      }
      __syncthreads();
      if (warp > 0) incl += warp_total[warp - 1];
      tile_incl[threadIdx.x] = incl;
      __syncthreads();
      const A excl = threadIdx.x > 0 ? tile_incl[threadIdx.x - 1] : A(0);
      if (s < n) yr[j] = narrow<T>(carry + (exclusive ? excl : incl));
      carry += tile_incl[kBlock - 1];
      __syncthreads();  // the next tile reuses warp_total and tile_incl
    }
  }
}

class CudaCumsum final : public Kernel {
 public:
  explicit CudaCumsum(const Layer& l)
      : who_(describe(l)),
        axis_(l.attrs.get_int("axis", who_)),
        exclusive_(l.attrs.get_int("exclusive", int64_t{0}) != 0),
        reverse_(l.attrs.get_int("reverse", int64_t{0}) != 0) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const int64_t rank = static_cast<int64_t>(in[0].dims.size());
    const AxisView v = axis_view(in[0].dims, indexing::normalize_axis(axis_, rank, who_));
    if (volume(in[0].dims) == 0) return;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    dispatch_numeric(in[0].dtype, "cumsum", [&](auto t) {
      using T = decltype(t);
      const T* x = static_cast<const T*>(in[0].data);
      T* y = static_cast<T*>(out[0].data);
      if (v.inner == 1) {
        cumsum_rows<T><<<grid_for(v.outer, 1), kBlock, 0, stream>>>(x, y, v.n, v.outer, exclusive_, reverse_);
      } else {
        const int64_t lines = v.outer * v.inner;
        cumsum_lines<T>
            <<<grid_for(lines, kBlock), kBlock, 0, stream>>>(x, y, v.n, v.inner, lines, exclusive_, reverse_);
      }
      KILN_CUDA_CHECK_LAUNCH();
    });
  }
  std::string name() const override { return "cuda_cumsum"; }

 private:
  std::string who_;
  int64_t axis_;
  bool exclusive_, reverse_;
};

// ---- topk ----

// Best first: larger (or smaller) value, NaN above every number as in torch, ties by lower index;
// padding slots (index -1) after every element.
template <typename K>
__device__ __forceinline__ bool ranks_before(K a, int ia, K b, int ib, bool largest) {
  if (ia < 0 || ib < 0) return ib < 0 && ia >= 0;
  const bool na = a != a, nb = b != b;  // NaN tests; always false for integers
  if (na || nb) {
    if (na && nb) return ia < ib;
    return largest ? na : nb;
  }
  if (a != b) return largest ? a > b : a < b;
  return ia < ib;
}

// One pass of topk over the rows, each cut into `chunks` pieces of at most kTopkChunk elements;
// one block sorts one piece (value, index) in shared memory with a bitonic sort. The source is the
// input tensor (`x`, the axis strided by `inner`, element j's index j) when `src_keys` is null,
// else a candidate buffer of `m` (key, index) pairs per row. A row of one piece writes its best k
// to the layer's outputs (the value read back from `x`, exactly); a row of several writes each
// piece's best min(k, piece length) pairs to the candidate buffer `dst_*`, piece c's at c * k, so
// that every pass shrinks a row (k <= kTopkChunk / 2) until one piece holds it.
template <typename T>
__global__ void topk_pass(const T* __restrict__ x, const Wide<T>* __restrict__ src_keys,
                          const int* __restrict__ src_idx, int64_t m, int64_t inner, int64_t rows,
                          int64_t chunks, int64_t k, int pow2, bool largest, T* __restrict__ values,
                          int64_t* __restrict__ indices, Wide<T>* __restrict__ dst_keys,
                          int* __restrict__ dst_idx, int64_t m_out) {
  using K = Wide<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  K* key = reinterpret_cast<K*>(smem);
  int* idx = reinterpret_cast<int*>(smem + pow2 * sizeof(K));
  for (int64_t b = blockIdx.x; b < rows * chunks; b += gridDim.x) {
    const int64_t r = b / chunks, c = b % chunks;
    const int64_t o = r / inner, i = r % inner;
    const T* xr = x + o * m * inner + i;  // the input row (read when it is the source: m is n)
    const int64_t first = c * kTopkChunk;
    const int64_t len = min(m - first, kTopkChunk);
    for (int j = threadIdx.x; j < pow2; j += blockDim.x) {
      const int64_t g = first + j;
      if (j >= len) {
        key[j] = K(0);
        idx[j] = -1;
      } else if (src_keys == nullptr) {
        key[j] = widen(xr[g * inner]);
        idx[j] = static_cast<int>(g);
      } else {
        key[j] = src_keys[r * m + g];
        idx[j] = src_idx[r * m + g];
      }
    }
    __syncthreads();
    for (int size = 2; size <= pow2; size <<= 1) {
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        for (int t = threadIdx.x; t < pow2; t += blockDim.x) {
          const int u = t ^ stride;
          if (u <= t) continue;
          const bool forward = (t & size) == 0;  // this run sorts best first, the other best last
          const bool swap = forward ? ranks_before(key[u], idx[u], key[t], idx[t], largest)
                                    : ranks_before(key[t], idx[t], key[u], idx[u], largest);
          if (swap) {
            const K kt = key[t];
            key[t] = key[u];
            key[u] = kt;
            const int it = idx[t];
            idx[t] = idx[u];
            idx[u] = it;
          }
        }
        __syncthreads();
      }
    }
    if (chunks == 1) {
      for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
        const int64_t dst = (o * k + j) * inner + i;
        values[dst] = x[(o * m_out + idx[j]) * inner + i];  // m_out: the input row's length
        indices[dst] = idx[j];
      }
    } else {
      for (int64_t j = threadIdx.x; j < min(k, len); j += blockDim.x) {
        dst_keys[r * m_out + c * k + j] = key[j];
        dst_idx[r * m_out + c * k + j] = idx[j];
      }
    }
    __syncthreads();  // the next piece overwrites key and idx
  }
}

// Candidates one pass leaves of a row of m elements (the best min(k, length) of each piece).
int64_t topk_candidates(int64_t m, int64_t k) {
  const int64_t full = (m - 1) / kTopkChunk;  // pieces before the last
  return full * k + std::min(k, m - full * kTopkChunk);
}

class CudaTopk final : public Kernel {
 public:
  explicit CudaTopk(const Layer& l)
      : who_(describe(l)), axis_(axis_of(l, -1)), largest_(l.attrs.get_int("largest", int64_t{1}) != 0) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const int64_t rank = static_cast<int64_t>(in[0].dims.size());
    const int64_t axis = indexing::normalize_axis(axis_, rank, who_);
    const AxisView v = axis_view(in[0].dims, axis);
    const int64_t k = out[0].dims[axis];
    KILN_CHECK(k <= v.n, who_ << ": k = " << k << " exceeds the size " << v.n << " of axis " << axis);
    if (volume(out[0].dims) == 0) return;
    KILN_CHECK(v.n < (int64_t{1} << 31),
               who_ << ": the CUDA topk kernel takes axes of fewer than 2^31 elements, got " << v.n);
    KILN_CHECK(v.n <= kTopkChunk || 2 * k <= kTopkChunk,
               who_ << ": the CUDA topk kernel takes k up to " << kTopkChunk / 2 << " on an axis longer than "
                    << kTopkChunk << " elements, got k = " << k << " of " << v.n
                    << "; run this layer on the reference backend or take fewer elements");
    const int64_t rows = v.outer * v.inner;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    dispatch_numeric(in[0].dtype, "topk", [&](auto t) {
      using T = decltype(t);
      using K = Wide<T>;
      const T* x = static_cast<const T*>(in[0].data);
      // Rows longer than one piece go through candidate buffers in the workspace: two of
      // rows * (the first pass's candidates) pairs, the passes alternating between them.
      const int64_t most = v.n > kTopkChunk ? topk_candidates(v.n, k) : 0;
      const size_t keys_bytes = (static_cast<size_t>(rows * most) * sizeof(K) + 15) / 16 * 16;
      const size_t idx_bytes = (static_cast<size_t>(rows * most) * sizeof(int) + 15) / 16 * 16;
      const size_t need = 2 * (keys_bytes + idx_bytes);
      KILN_CHECK(need <= ctx.workspace_bytes, who_ << ": the CUDA topk kernel needs " << need
                                                   << " bytes of workspace for " << rows << " rows of " << v.n
                                                   << " elements, the engine has " << ctx.workspace_bytes
                                                   << "; raise the builder's workspace size");
      auto* base = static_cast<unsigned char*>(ctx.workspace);
      K* keys[2] = {reinterpret_cast<K*>(base), reinterpret_cast<K*>(base + keys_bytes + idx_bytes)};
      int* idx[2] = {reinterpret_cast<int*>(base + keys_bytes),
                     reinterpret_cast<int*>(base + 2 * keys_bytes + idx_bytes)};
      int64_t m = v.n;
      for (int pass = 0;; ++pass) {
        const int64_t chunks = (m + kTopkChunk - 1) / kTopkChunk;
        int pow2 = 1;
        while (pow2 < std::min<int64_t>(m, kTopkChunk)) pow2 <<= 1;
        const int threads = pow2 < 32 ? 32 : pow2 > 1024 ? 1024 : pow2;
        const size_t smem = static_cast<size_t>(pow2) * (sizeof(K) + sizeof(int));  // <= 48 KiB
        const K* src_keys = pass == 0 ? nullptr : keys[(pass - 1) % 2];
        const int* src_idx = pass == 0 ? nullptr : idx[(pass - 1) % 2];
        // The last pass reads values back from x, a row of v.n (passed as m_out).
        const int64_t m_out = chunks == 1 ? v.n : topk_candidates(m, k);
        topk_pass<T><<<grid_for(rows * chunks, 1), threads, smem, stream>>>(
            x, src_keys, src_idx, m, v.inner, rows, chunks, k, pow2, largest_, static_cast<T*>(out[0].data),
            static_cast<int64_t*>(out[1].data), keys[pass % 2], idx[pass % 2], m_out);
        KILN_CUDA_CHECK_LAUNCH();
        if (chunks == 1) break;
        m = m_out;
      }
    });
  }
  std::string name() const override { return "cuda_topk_bitonic"; }

 private:
  std::string who_;
  int64_t axis_;
  bool largest_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("gather", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaGather>(l, axis_of(l, 0)); });
  register_kernel("embedding", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaGather>(l, 0); });
  register_kernel("gather_elements", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaGatherElements>(l); });
  register_kernel("pad", Backend::kCuda, [](const Layer& l) { return std::make_unique<CudaPad>(l); });
  register_kernel("cumsum", Backend::kCuda, [](const Layer& l) { return std::make_unique<CudaCumsum>(l); });
  register_kernel("topk", Backend::kCuda, [](const Layer& l) { return std::make_unique<CudaTopk>(l); });
});

}  // namespace kiln
