// CUDA shape ops. reshape/flatten/squeeze/unsqueeze are one device-to-device copy; concat is one
// launch for up to kConcatBatch inputs (DenseNet concatenates up to 33 per layer; a launch per
// input cost it 600 launches); transpose, slice, expand and split (one per output) run one generic strided
// copy kernel over the coalesced description (kernels/strided_copy.h), moving up to 16-byte words
// (several elements when the innermost dim is contiguous on both sides) with 32-bit indexing where
// every index fits, or a cudaMemcpyAsync when the copy is contiguous.
// A transpose that coalesces to a (batched) 2-D transpose takes a shared-memory tiled kernel.
// shape writes the concrete dims, passed by value, with a one-block kernel (no host staging).
#include <algorithm>
#include <cstring>

#include "ir/op_schema.h"
#include "ir/ops/shape.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/cuda/int8_bits.cuh"
#include "kernels/kernel.h"
#include "kernels/strided_copy.h"

namespace kiln {
namespace {

// I: the index type, 32-bit when every index of the copy fits (far fewer instructions per division).
template <typename T, typename I>
__global__ void strided_copy_kernel(const T* __restrict__ src, T* __restrict__ dst, StridedCopy c, I n) {
  I dims[kMaxRank], ss[kMaxRank], ds[kMaxRank];
  for (int k = 0; k < c.rank; ++k) {
    dims[k] = static_cast<I>(c.dims[k]);
    ss[k] = static_cast<I>(c.src_strides[k]);
    ds[k] = static_cast<I>(c.dst_strides[k]);
  }
  const I src0 = static_cast<I>(c.src_offset), dst0 = static_cast<I>(c.dst_offset);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < static_cast<int64_t>(n);
       i += int64_t{gridDim.x} * blockDim.x) {
    I s = src0, d = dst0, rem = static_cast<I>(i);
    for (int k = c.rank - 1; k >= 0; --k) {
      const I q = rem / dims[k], idx = rem - q * dims[k];
      rem = q;
      s += idx * ss[k];
      d += idx * ds[k];
    }
    dst[d] = src[s];
  }
}

// Moves `word`-byte words instead of elements when the innermost dim is contiguous on both sides
// and everything (run length, strides, offsets, base addresses) divides evenly: a [B, H, S, 64]
// float16 transpose then copies 16-byte words, 8 elements per thread. Returns the word size.
size_t widen_copy(StridedCopy& c, size_t elem, const void* src, const void* dst) {
  const int last = c.rank - 1;
  if (c.rank == 0 || c.src_strides[last] != 1 || c.dst_strides[last] != 1) return elem;
  for (size_t word : {size_t{16}, size_t{8}, size_t{4}}) {
    if (word <= elem) break;
    const int64_t k = static_cast<int64_t>(word / elem);
    bool ok = c.dims[last] % k == 0 && c.src_offset % k == 0 && c.dst_offset % k == 0 &&
              reinterpret_cast<uintptr_t>(src) % word == 0 && reinterpret_cast<uintptr_t>(dst) % word == 0;
    for (int d = 0; d < last && ok; ++d) ok = c.src_strides[d] % k == 0 && c.dst_strides[d] % k == 0;
    if (!ok) continue;
    c.dims[last] /= k;
    for (int d = 0; d < last; ++d) {
      c.src_strides[d] /= k;
      c.dst_strides[d] /= k;
    }
    c.src_offset /= k;
    c.dst_offset /= k;
    return word;
  }
  return elem;
}

// Whether every source and destination index of the copy fits a signed 32-bit int.
bool fits_32bit(const StridedCopy& c) {
  constexpr int64_t kMax = 0x7fffffff;
  int64_t n = 1, s = c.src_offset, d = c.dst_offset;
  for (int k = 0; k < c.rank; ++k) {
    n *= c.dims[k];
    s += (c.dims[k] - 1) * c.src_strides[k];
    d += (c.dims[k] - 1) * c.dst_strides[k];
  }
  return n <= kMax && s <= kMax && d <= kMax;
}

template <typename T>
void launch_words(const StridedCopy& c, const void* src, void* dst, int64_t n, cudaStream_t stream) {
  constexpr int kBlock = 256;
  const unsigned grid = grid_for(n, kBlock);
  if (fits_32bit(c)) {
    strided_copy_kernel<T, uint32_t><<<grid, kBlock, 0, stream>>>(
        static_cast<const T*>(src), static_cast<T*>(dst), c, static_cast<uint32_t>(n));
  } else {
    strided_copy_kernel<T, int64_t>
        <<<grid, kBlock, 0, stream>>>(static_cast<const T*>(src), static_cast<T*>(dst), c, n);
  }
}

// Calls f(T{}) with the unsigned type of `bytes` bytes (uint4 for 16): the word a copy moves.
template <typename F>
void with_word_type(size_t bytes, F&& f) {
  switch (bytes) {
    case 1:
      return f(uint8_t{});
    case 2:
      return f(uint16_t{});
    case 4:
      return f(uint32_t{});
    case 8:
      return f(uint64_t{});
    case 16:
      return f(uint4{});
    default:
      KILN_FAIL("copy: no CUDA kernel moves " << bytes << "-byte words");
  }
}

void launch_copy(const StridedCopy& copy, const TensorView& src, const TensorView& dst,
                 const LaunchContext& ctx) {
  if (copy_count(copy) == 0) return;
  auto stream = static_cast<cudaStream_t>(ctx.stream);
  const size_t size = dtype_size(src.dtype);
  if (is_contiguous_copy(copy)) {
    KILN_CUDA_CHECK(cudaMemcpyAsync(static_cast<uint8_t*>(dst.data) + copy.dst_offset * size,
                                    static_cast<const uint8_t*>(src.data) + copy.src_offset * size,
                                    static_cast<size_t>(copy_count(copy)) * size, cudaMemcpyDeviceToDevice,
                                    stream));
    return;
  }
  StridedCopy c = copy;
  const size_t word = widen_copy(c, size, src.data, dst.data);
  const int64_t n = copy_count(c);
  with_word_type(
      word, [&](auto word_type) { launch_words<decltype(word_type)>(c, src.data, dst.data, n, stream); });
  KILN_CUDA_CHECK_LAUNCH();
}

class CudaCopy final : public Kernel {
 public:
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    size_t bytes = static_cast<size_t>(volume(out[0].dims)) * dtype_size(out[0].dtype);
    if (bytes == 0 || in[0].data == out[0].data) return;
    KILN_CUDA_CHECK(cudaMemcpyAsync(out[0].data, in[0].data, bytes, cudaMemcpyDeviceToDevice,
                                    static_cast<cudaStream_t>(ctx.stream)));
  }
  std::string name() const override { return "cuda_copy"; }
};

// Batched 2-D transpose through shared-memory tiles, so both the reads and the writes of a warp
// touch consecutive addresses: dst[b][r][c] = src[b][c][r], dst of shape [batch, rows, cols].
constexpr int kTile = 32;
constexpr int kTileRows = 8;  // threads per block: kTile x kTileRows, each moving kTile / kTileRows elements

template <typename T>
__global__ void transpose_tiled_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t rows,
                                       int64_t cols) {
  __shared__ T tile[kTile][kTile + 1];  // +1: column reads hit distinct banks
  const int64_t base = static_cast<int64_t>(blockIdx.z) * rows * cols;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile, c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  for (int k = threadIdx.y; k < kTile; k += kTileRows) {  // tile[k][x] = src row c0 + k, column r0 + x
    const int64_t c = c0 + k, r = r0 + threadIdx.x;
    if (c < cols && r < rows) tile[k][threadIdx.x] = src[base + c * rows + r];
  }
  __syncthreads();
  for (int k = threadIdx.y; k < kTile; k += kTileRows) {  // dst[r0 + k][c0 + x] = src[c0 + x][r0 + k]
    const int64_t r = r0 + k, c = c0 + threadIdx.x;
    if (r < rows && c < cols) dst[base + r * cols + c] = tile[threadIdx.x][k];
  }
}

// A (batched) 2-D transpose with a narrow side (NCHW <-> NHWC with a few channels, where a tile
// would sit mostly idle): one thread per element of the wide side moves the whole narrow line, so
// its `narrow` loads (or stores) are warp-coalesced across threads and its stores (or loads) are
// one contiguous run. dst[b][r][c] = src[b][c][r], dst of shape [batch, rows, cols].
template <typename T, bool kNarrowCols>
__global__ void transpose_narrow_kernel(const T* __restrict__ src, T* __restrict__ dst, uint32_t batch,
                                        uint32_t rows, uint32_t cols) {
  const uint32_t wide = kNarrowCols ? rows : cols, narrow = kNarrowCols ? cols : rows;
  const uint32_t total = batch * wide;
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
    const uint32_t b = e / wide, w = e - b * wide;
    const T* s = src + static_cast<size_t>(b) * rows * cols;
    T* d = dst + static_cast<size_t>(b) * rows * cols;
    if (kNarrowCols) {  // dst row w (cols elements) gathers src column w
      for (uint32_t c = 0; c < narrow; ++c) d[w * cols + c] = s[c * rows + w];
    } else {  // dst column w scatters src row w (rows elements)
      for (uint32_t r = 0; r < narrow; ++r) d[r * cols + w] = s[w * rows + r];
    }
  }
}

template <typename T>
void launch_narrow_transpose(const TensorView& src, const TensorView& dst, int64_t batch, int64_t rows,
                             int64_t cols, cudaStream_t stream) {
  const auto* s = static_cast<const T*>(src.data);
  auto* d = static_cast<T*>(dst.data);
  const int64_t wide = cols < rows ? rows : cols;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>((batch * wide + 255) / 256, 65535 * 8));
  const auto b = static_cast<uint32_t>(batch), r = static_cast<uint32_t>(rows),
             c = static_cast<uint32_t>(cols);
  if (cols < rows) {
    transpose_narrow_kernel<T, true><<<grid, 256, 0, stream>>>(s, d, b, r, c);
  } else {
    transpose_narrow_kernel<T, false><<<grid, 256, 0, stream>>>(s, d, b, r, c);
  }
}

constexpr int64_t kNarrowLine = 16;  // a transpose side this short or shorter takes the narrow kernel

// When the coalesced copy is a (batched) 2-D transpose, launches the tiled kernel (or the narrow
// one) and returns true.
bool launch_tiled_transpose(const StridedCopy& c, const TensorView& src, const TensorView& dst,
                            const LaunchContext& ctx) {
  if (c.rank != 2 && c.rank != 3) return false;
  const int i = c.rank - 2;  // [batch,] rows, cols of the output
  const int64_t rows = c.dims[i], cols = c.dims[i + 1];
  const int64_t batch = c.rank == 3 ? c.dims[0] : 1;
  const bool is_2d_transpose =
      c.dst_strides[i + 1] == 1 && c.dst_strides[i] == cols && c.src_strides[i] == 1 &&
      c.src_strides[i + 1] == rows && c.src_offset == 0 && c.dst_offset == 0 &&
      (c.rank == 2 || (c.src_strides[0] == rows * cols && c.dst_strides[0] == rows * cols));
  const int64_t grid_y = (rows + kTile - 1) / kTile, grid_x = (cols + kTile - 1) / kTile;
  if (!is_2d_transpose) return false;
  auto stream = static_cast<cudaStream_t>(ctx.stream);
  if (std::min(rows, cols) <= kNarrowLine && batch * rows * cols < (int64_t{1} << 32)) {
    dispatch_word(dtype_size(src.dtype), "transpose",
                  [&](auto w) { launch_narrow_transpose<decltype(w)>(src, dst, batch, rows, cols, stream); });
    KILN_CUDA_CHECK_LAUNCH();
    return true;
  }
  // Other narrow ones (past 32-bit indexing) take the strided kernel, as do huge batches.
  if (rows < kTile / 4 || cols < kTile / 4) return false;
  if (batch > 65535 || grid_y > 65535 || grid_x > 0x7fffffff) return false;
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y), static_cast<unsigned>(batch));
  const dim3 block(kTile, kTileRows);
  switch (dtype_size(src.dtype)) {
    case 1:
      transpose_tiled_kernel<<<grid, block, 0, stream>>>(static_cast<const uint8_t*>(src.data),
                                                         static_cast<uint8_t*>(dst.data), rows, cols);
      break;
    case 2:
      transpose_tiled_kernel<<<grid, block, 0, stream>>>(static_cast<const uint16_t*>(src.data),
                                                         static_cast<uint16_t*>(dst.data), rows, cols);
      break;
    case 4:
      transpose_tiled_kernel<<<grid, block, 0, stream>>>(static_cast<const uint32_t*>(src.data),
                                                         static_cast<uint32_t*>(dst.data), rows, cols);
      break;
    case 8:
      transpose_tiled_kernel<<<grid, block, 0, stream>>>(static_cast<const uint64_t*>(src.data),
                                                         static_cast<uint64_t*>(dst.data), rows, cols);
      break;
    default:
      return false;
  }
  KILN_CUDA_CHECK_LAUNCH();
  return true;
}

// A transpose whose innermost output dims gather (a large source stride: pixel_shuffle and
// pixel_unshuffle, the 2x2 fold of a space-to-depth stem) while the next output dim reads nearby
// source elements. The plain copy gives consecutive threads consecutive outputs, so a warp's loads
// land in 32 different rows; here each thread copies one group, the kGroupMax or fewer elements
// of the innermost output dims (contiguous in the output), and consecutive threads take
// consecutive groups, whose sources are neighbours. The source offsets of a group's elements are
// the same for every group: computed once on the host, staged in shared memory.
constexpr int kGroupMax = 32;

struct GroupedCopy {
  StridedCopy outer;           // the dims outside the group (their strides)
  int32_t pattern[kGroupMax];  // source offset of a group's element e (its destination: + e)
  int32_t size = 0;            // elements in a group
};

template <typename T>
__global__ void grouped_copy_kernel(const T* __restrict__ src, T* __restrict__ dst, GroupedCopy g,
                                    uint32_t groups) {
  __shared__ int32_t pattern[kGroupMax];
  if (threadIdx.x < static_cast<unsigned>(g.size)) pattern[threadIdx.x] = g.pattern[threadIdx.x];
  __syncthreads();
  const StridedCopy& c = g.outer;
  uint32_t dims[kMaxRank], ss[kMaxRank], ds[kMaxRank];
  for (int k = 0; k < c.rank; ++k) {
    dims[k] = static_cast<uint32_t>(c.dims[k]);
    ss[k] = static_cast<uint32_t>(c.src_strides[k]);
    ds[k] = static_cast<uint32_t>(c.dst_strides[k]);
  }
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < groups; i += gridDim.x * blockDim.x) {
    uint32_t s = static_cast<uint32_t>(c.src_offset), d = static_cast<uint32_t>(c.dst_offset), rem = i;
    for (int k = c.rank - 1; k >= 0; --k) {
      const uint32_t q = rem / dims[k], idx = rem - q * dims[k];
      rem = q;
      s += idx * ss[k];
      d += idx * ds[k];
    }
    for (int e = 0; e < g.size; ++e) dst[d + e] = src[s + pattern[e]];
  }
}

// Launches the grouped copy when it is the better one for transpose copy `c` (see above): the
// innermost output dims of at most kGroupMax elements gather (source stride > 1 of the innermost),
// the next dim out has a smaller source stride than that, and every index fits 32 bits.
bool launch_grouped_transpose(const StridedCopy& c, const TensorView& src, const TensorView& dst,
                              const LaunchContext& ctx) {
  if (c.rank < 2 || !fits_32bit(c)) return false;
  const int last = c.rank - 1;
  int inner = 0;
  int64_t size = 1;
  while (inner < c.rank - 1 && size * c.dims[last - inner] <= kGroupMax) size *= c.dims[last - inner++];
  if (inner == 0 || size < 2) return false;
  const int next = last - inner;  // the dim consecutive threads walk
  if (c.src_strides[last] <= 1 || c.src_strides[next] >= c.src_strides[last]) return false;
  GroupedCopy g;
  g.size = static_cast<int32_t>(size);
  // The group's elements in output order; the output of a transpose is contiguous, so element e
  // of a group sits e after the group's first.
  int64_t expect = 1;
  for (int k = last; k > next; --k) {
    if (c.dst_strides[k] != expect) return false;
    expect *= c.dims[k];
  }
  for (int64_t e = 0; e < size; ++e) {
    int64_t rem = e, off = 0;
    for (int k = last; k > next; --k) {
      off += (rem % c.dims[k]) * c.src_strides[k];
      rem /= c.dims[k];
    }
    g.pattern[e] = static_cast<int32_t>(off);
  }
  g.outer.rank = next + 1;
  for (int k = 0; k <= next; ++k) {
    g.outer.dims[k] = c.dims[k];
    g.outer.src_strides[k] = c.src_strides[k];
    g.outer.dst_strides[k] = c.dst_strides[k];
  }
  g.outer.src_offset = c.src_offset;
  g.outer.dst_offset = c.dst_offset;
  const int64_t groups = copy_count(g.outer);
  constexpr int kBlock = 256;
  auto stream = static_cast<cudaStream_t>(ctx.stream);
  dispatch_word(dtype_size(src.dtype), "transpose", [&](auto w) {
    using W = decltype(w);
    grouped_copy_kernel<W><<<grid_for(groups, kBlock), kBlock, 0, stream>>>(
        static_cast<const W*>(src.data), static_cast<W*>(dst.data), g, static_cast<uint32_t>(groups));
  });
  KILN_CUDA_CHECK_LAUNCH();
  return true;
}

// space_to_depth (ir/ops/shape.h): an image padded and folded 2x2 into channels in one pass (the
// stem of space_to_depth_stems), instead of a pad and a gathering transpose over the padded copy.
struct SpaceToDepthParams {
  int64_t c, h, w, channels, top, left, hs, ws;
};

template <typename W, typename I>
__device__ __forceinline__ W space_to_depth_element(const W* __restrict__ x, const SpaceToDepthParams& p, I n,
                                                    I k, I i, I j) {
  const I two_c = 2 * static_cast<I>(p.channels);
  const I dy = k / two_c, dx = k / static_cast<I>(p.channels) % 2, c = k % static_cast<I>(p.channels);
  const int64_t r = 2 * static_cast<int64_t>(i) + dy - p.top, q = 2 * static_cast<int64_t>(j) + dx - p.left;
  if (c >= p.c || r < 0 || r >= p.h || q < 0 || q >= p.w) return W{0};
  return x[((static_cast<I>(n) * static_cast<I>(p.c) + c) * static_cast<I>(p.h) + static_cast<I>(r)) *
               static_cast<I>(p.w) +
           static_cast<I>(q)];
}

// Channels last, the output pixel's 4C' elements in 16-byte chunks: thread e writes chunk e (V
// elements) with one store; neighbouring threads read neighbouring input columns.
template <typename W, typename I>
__global__ void space_to_depth_nhwc_kernel(const W* __restrict__ x, uint4* __restrict__ y,
                                           SpaceToDepthParams p, I chunks) {
  constexpr int V = 16 / sizeof(W);
  const I per_pixel = static_cast<I>(4 * p.channels / V);
  for (I e = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; e < chunks;
       e += static_cast<I>(gridDim.x) * blockDim.x) {
    const I pixel = e / per_pixel, k0 = (e - pixel * per_pixel) * V;
    const I j = pixel % static_cast<I>(p.ws), rest = pixel / static_cast<I>(p.ws);
    const I i = rest % static_cast<I>(p.hs), n = rest / static_cast<I>(p.hs);
    union {
      uint4 v;
      W w[V];
    } u;
#pragma unroll
    for (int k = 0; k < V; ++k) u.w[k] = space_to_depth_element<W, I>(x, p, n, k0 + k, i, j);
    y[e] = u.v;
  }
}

// Any layout, one output element per thread.
template <typename W, typename I>
__global__ void space_to_depth_kernel(const W* __restrict__ x, W* __restrict__ y, SpaceToDepthParams p,
                                      bool nhwc, I total) {
  const I oc = static_cast<I>(4 * p.channels), hs = static_cast<I>(p.hs), ws = static_cast<I>(p.ws);
  for (I e = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<I>(gridDim.x) * blockDim.x) {
    I n, k, i, j;
    if (nhwc) {
      k = e % oc;
      j = e / oc % ws;
      i = e / oc / ws % hs;
      n = e / oc / ws / hs;
    } else {
      j = e % ws;
      i = e / ws % hs;
      k = e / ws / hs % oc;
      n = e / ws / hs / oc;
    }
    y[e] = space_to_depth_element<W, I>(x, p, n, k, i, j);
  }
}

// space_to_depth writing int8 (output_inv_scale): each value, the padding's 0 too, quantized as the
// per-tensor quantize it replaces computed it (x * inv_scale, rounded to nearest even, clamped; NaN
// to quant_min). kVec outputs a thread: 16 channels of one pixel (nhwc, one 16-byte store), or 1.
template <typename T, typename I, int kVec>
__global__ void space_to_depth_int8_kernel(const T* __restrict__ x, int8_t* __restrict__ y,
                                           SpaceToDepthParams p, bool nhwc, I groups, float inv, float lo,
                                           float hi) {
  const I oc = static_cast<I>(4 * p.channels), hs = static_cast<I>(p.hs), ws = static_cast<I>(p.ws);
  for (I e = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; e < groups;
       e += static_cast<I>(gridDim.x) * blockDim.x) {
    const I first = e * kVec;
    I n, k, i, j;
    if (nhwc) {
      k = first % oc;
      j = first / oc % ws;
      i = first / oc / ws % hs;
      n = first / oc / ws / hs;
    } else {
      j = first % ws;
      i = first / ws % hs;
      k = first / ws / hs % oc;
      n = first / ws / hs / oc;
    }
    union {
      uint4 v;
      int8_t q[kVec > 16 ? kVec : 16];
    } u;
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      const float f = to_float(space_to_depth_element<T, I>(x, p, n, k + v, i, j));
      u.q[v] = round_clamp_int8(__fmul_rn(f, inv), lo, hi);
    }
    if constexpr (kVec == 16) {
      *reinterpret_cast<uint4*>(y + first) = u.v;
    } else {
#pragma unroll
      for (int v = 0; v < kVec; ++v) y[first + v] = u.q[v];
    }
  }
}

void launch_space_to_depth_int8(const SpaceToDepth& g, const SpaceToDepthParams& p, const TensorView& x,
                                const TensorView& y, cudaStream_t stream) {
  const int64_t total = volume(y.dims);
  KILN_CHECK(total < (int64_t{1} << 31) && volume(x.dims) < (int64_t{1} << 31),
             "space_to_depth to int8: fewer than 2^31 elements, got " << total);
  constexpr int kBlock = 256;
  const float inv = g.inv_scale, lo = static_cast<float>(g.quant_min), hi = static_cast<float>(g.quant_max);
  auto* out = static_cast<int8_t*>(y.data);
  dispatch_floating(x.dtype, "space_to_depth", [&](auto t) {
    using T = decltype(t);
    const auto* in = static_cast<const T*>(x.data);
    if (g.nhwc && 4 * g.channels % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0) {
      const auto groups = static_cast<uint32_t>(total / 16);
      space_to_depth_int8_kernel<T, uint32_t, 16>
          <<<grid_for(groups, kBlock), kBlock, 0, stream>>>(in, out, p, true, groups, inv, lo, hi);
    } else {
      space_to_depth_int8_kernel<T, uint32_t, 1><<<grid_for(total, kBlock), kBlock, 0, stream>>>(
          in, out, p, g.nhwc, static_cast<uint32_t>(total), inv, lo, hi);
    }
  });
  KILN_CUDA_CHECK_LAUNCH();
}

class CudaSpaceToDepth final : public Kernel {
 public:
  explicit CudaSpaceToDepth(Layer layer) : layer_(std::move(layer)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const SpaceToDepth g = resolve_space_to_depth(layer_, in[0].dims);
    const SpaceToDepthParams p{g.c, g.h, g.w, g.channels, g.top, g.left, g.hs, g.ws};
    const int64_t total = volume(out[0].dims);
    if (total == 0) return;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    if (g.quantized) return launch_space_to_depth_int8(g, p, in[0], out[0], stream);
    const bool small = total < (int64_t{1} << 31) && volume(in[0].dims) < (int64_t{1} << 31);
    constexpr int kBlock = 256;
    const int64_t bytes = static_cast<int64_t>(dtype_size(in[0].dtype));
    dispatch_word(static_cast<size_t>(bytes), "space_to_depth", [&](auto w) {
      using W = decltype(w);
      const auto* x = static_cast<const W*>(in[0].data);
      if (g.nhwc && small && 4 * g.channels * bytes % 16 == 0 &&
          reinterpret_cast<uintptr_t>(out[0].data) % 16 == 0) {
        const int64_t chunks = total * bytes / 16;
        space_to_depth_nhwc_kernel<W, uint32_t><<<grid_for(chunks, kBlock), kBlock, 0, stream>>>(
            x, static_cast<uint4*>(out[0].data), p, static_cast<uint32_t>(chunks));
      } else if (small) {
        space_to_depth_kernel<W, uint32_t><<<grid_for(total, kBlock), kBlock, 0, stream>>>(
            x, static_cast<W*>(out[0].data), p, g.nhwc, static_cast<uint32_t>(total));
      } else {
        space_to_depth_kernel<W, int64_t><<<grid_for(total, kBlock), kBlock, 0, stream>>>(
            x, static_cast<W*>(out[0].data), p, g.nhwc, total);
      }
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_space_to_depth"; }

 private:
  Layer layer_;
};

class CudaTranspose final : public Kernel {
 public:
  explicit CudaTranspose(std::vector<int64_t> perm) : perm_(std::move(perm)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    StridedCopy c = transpose_copy(in[0].dims, perm_);
    if (copy_count(c) == 0 || launch_tiled_transpose(c, in[0], out[0], ctx) ||
        launch_grouped_transpose(c, in[0], out[0], ctx)) {
      return;
    }
    launch_copy(c, in[0], out[0], ctx);
  }
  std::string name() const override { return "cuda_transpose"; }

 private:
  std::vector<int64_t> perm_;
};

class CudaSlice final : public Kernel {
 public:
  explicit CudaSlice(Layer layer) : layer_(std::move(layer)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    launch_copy(slice_copy(in[0].dims, resolve_slice(layer_, in[0].dims)), in[0], out[0], ctx);
  }
  std::string name() const override { return "cuda_slice"; }

 private:
  Layer layer_;  // the start of a negative index depends on the run-time dim
};

class CudaExpand final : public Kernel {
 public:
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    launch_copy(expand_copy(in[0].dims, out[0].dims), in[0], out[0], ctx);
  }
  std::string name() const override { return "cuda_expand"; }
};

// Concat as rows: the output is [outer, row] with row = sum_j row_j, input j contributing row_j
// contiguous units at prefix_j of each row (a unit: the widest word, up to 16 bytes, that divides
// every row_j, the output row and every address). One thread per unit of the output; it finds
// its input by a scan of the prefixes (few inputs per launch, so the scan is short and uniform).
constexpr int kConcatBatch = 32;

struct ConcatBatch {
  const void* src[kConcatBatch];
  int64_t prefix[kConcatBatch + 1];  // units, relative to the batch's first: prefix[0] == 0
  int count = 0;
};

template <typename T, typename I>
__global__ void concat_rows_kernel(ConcatBatch b, T* __restrict__ dst, I outer, I row, I first) {
  const I width = static_cast<I>(b.prefix[b.count]);
  const I n = outer * width;
  for (I i = blockIdx.x * I{blockDim.x} + threadIdx.x; i < n; i += I{gridDim.x} * blockDim.x) {
    const I o = i / width, r = i - o * width;
    int j = 0;
    while (r >= static_cast<I>(b.prefix[j + 1])) ++j;
    const I lo = static_cast<I>(b.prefix[j]), len = static_cast<I>(b.prefix[j + 1]) - lo;
    dst[o * row + first + r] = static_cast<const T*>(b.src[j])[o * len + (r - lo)];
  }
}

template <typename T>
void launch_concat_rows(const ConcatBatch& b, void* dst, int64_t outer, int64_t row, int64_t first,
                        cudaStream_t stream) {
  constexpr int kBlock = 256;
  const int64_t n = outer * b.prefix[b.count];
  if (n == 0) return;
  const unsigned grid = grid_for(n, kBlock);
  if (outer * row <= 0x7fffffff) {
    concat_rows_kernel<T, uint32_t>
        <<<grid, kBlock, 0, stream>>>(b, static_cast<T*>(dst), static_cast<uint32_t>(outer),
                                      static_cast<uint32_t>(row), static_cast<uint32_t>(first));
  } else {
    concat_rows_kernel<T, int64_t><<<grid, kBlock, 0, stream>>>(b, static_cast<T*>(dst), outer, row, first);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

class CudaConcat final : public Kernel {
 public:
  explicit CudaConcat(int64_t axis) : axis_(axis) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView& y = out[0];
    const int64_t axis = axis_ < 0 ? axis_ + static_cast<int64_t>(y.dims.size()) : axis_;
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < axis; ++d) outer *= y.dims[d];
    for (size_t d = static_cast<size_t>(axis) + 1; d < y.dims.size(); ++d) inner *= y.dims[d];
    const size_t elem = dtype_size(y.dtype);
    // Row bytes per input; the unit is the widest word dividing all of them and every address.
    std::vector<int64_t> bytes;
    auto common = static_cast<uint64_t>(y.dims[axis] * inner) * elem | reinterpret_cast<uintptr_t>(y.data);
    for (const auto& x : in) {
      bytes.push_back(x.dims[axis] * inner * static_cast<int64_t>(elem));
      if (bytes.back() > 0)
        common |= static_cast<uint64_t>(bytes.back()) | reinterpret_cast<uintptr_t>(x.data);
    }
    size_t unit = elem;
    for (size_t w : {size_t{16}, size_t{8}, size_t{4}, size_t{2}}) {
      if (w > elem && common % w == 0) {
        unit = w;
        break;
      }
    }
    const int64_t row = y.dims[axis] * inner * static_cast<int64_t>(elem) / static_cast<int64_t>(unit);
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    int64_t first = 0;  // units of the output row before the current batch
    for (size_t k = 0; k < in.size();) {
      ConcatBatch b;
      b.prefix[0] = 0;
      for (; k < in.size() && b.count < kConcatBatch; ++k) {
        b.src[b.count] = in[k].data;
        b.prefix[b.count + 1] = b.prefix[b.count] + bytes[k] / static_cast<int64_t>(unit);
        ++b.count;
      }
      with_word_type(unit, [&](auto word_type) {
        launch_concat_rows<decltype(word_type)>(b, y.data, outer, row, first, stream);
      });
      first += b.prefix[b.count];
    }
  }
  std::string name() const override { return "cuda_concat"; }

 private:
  int64_t axis_;
};

class CudaSplit final : public Kernel {
 public:
  explicit CudaSplit(int64_t axis) : axis_(axis) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const int64_t axis = axis_ < 0 ? axis_ + static_cast<int64_t>(in[0].dims.size()) : axis_;
    int64_t offset = 0;
    for (const auto& y : out) {
      launch_copy(part_copy(y.dims, in[0].dims, axis, offset, /*part_is_dst=*/true), in[0], y, ctx);
      offset += y.dims[axis];
    }
  }
  std::string name() const override { return "cuda_split"; }

 private:
  int64_t axis_;
};

struct DimsArg {
  int64_t v[kMaxRank];
};

__global__ void write_dims_kernel(DimsArg dims, int rank, int64_t* __restrict__ out) {
  const int d = static_cast<int>(threadIdx.x);
  if (d < rank) out[d] = dims.v[d];
}

class CudaShape final : public Kernel {
 public:
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const int rank = static_cast<int>(in[0].dims.size());
    if (rank == 0) return;
    DimsArg dims{};
    for (int d = 0; d < rank; ++d) dims.v[d] = in[0].dims[d];
    write_dims_kernel<<<1, kMaxRank, 0, static_cast<cudaStream_t>(ctx.stream)>>>(
        dims, rank, static_cast<int64_t*>(out[0].data));
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_shape"; }
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  for (const char* op : {"reshape", "flatten", "squeeze", "unsqueeze"}) {
    register_kernel(op, Backend::kCuda, [](const Layer&) { return std::make_unique<CudaCopy>(); });
  }
  register_kernel("transpose", Backend::kCuda, [](const Layer& l) {
    auto rank = static_cast<int64_t>(l.attrs.get_ints("perm", describe(l)).size());
    return std::make_unique<CudaTranspose>(resolve_perm(l, rank));
  });
  register_kernel("slice", Backend::kCuda, [](const Layer& l) { return std::make_unique<CudaSlice>(l); });
  register_kernel("expand", Backend::kCuda, [](const Layer&) { return std::make_unique<CudaExpand>(); });
  register_kernel("concat", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaConcat>(l.attrs.get_int("axis", 0)); });
  register_kernel("split", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaSplit>(l.attrs.get_int("axis", 0)); });
  register_kernel("shape", Backend::kCuda, [](const Layer&) { return std::make_unique<CudaShape>(); });
  register_kernel("space_to_depth", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaSpaceToDepth>(l); });
});

}  // namespace kiln
