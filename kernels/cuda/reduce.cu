// Reductions and arg reductions. The reduced axes are coalesced into a ReduceGeometry (any axis
// set, strided loads); two kernel shapes:
//   block per output   threads stride over the reduced elements, then a shuffle/shared-memory
//                      block reduction; used when reduced rows are contiguous or outputs are few
//   thread per output  each thread walks its reduced elements; adjacent threads read adjacent
//                      addresses, used when the innermost dim is kept and outputs are many
//   column tile        the innermost dim is kept and the reduction is long (a spatial mean of a
//                      channels-last [N, H, W, C]): a block of 32 x kTileRows threads owns 32
//                      adjacent outputs; each of its rows walks every kTileRows-th reduced
//                      element (coalesced over the 32 outputs), then through shared memory one
//                      warp per output combines the rows' partials (a shuffle tree). Not for var
//                      (two passes).
//   vector columns     the innermost dim is kept and contiguous, outputs are many (a spatial mean
//                      of a large batch, [256, 7, 7, 2048]): a thread owns 16 bytes of adjacent
//                      outputs, walks every reduced element with one 16-byte load each (coalesced
//                      over the warp, several loads in flight) and stores its outputs at once.
//                      Floating types, not var. The column tile's blocks there do ~1.5 loads per
//                      thread besides their shared-memory combine.
//   column split       the column tile when its blocks would leave most of the GPU idle (an
//                      SE block's spatial mean over 112 x 112 pixels of 32 channels is one block):
//                      the reduced elements are cut into slices over gridDim.y,
//                      each block writes float partials to the workspace, and a second kernel
//                      combines each output's partials (floating types; integers keep the tile).
// Floating types accumulate in float32, integers in int64 (wrapping); var is two-pass.
// Codes follow reduce_ops() / arg_reduce_ops() in ir/ops/reduce.cpp.
#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>

#include "ir/ops/reduce.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"
#include "kernels/reduce_geometry.h"

namespace kiln {
namespace {

enum ReduceOp : int { kSum, kMean, kMax, kMin, kProd, kVar };
enum ArgOp : int { kArgmax, kArgmin };

// Below this many outputs a thread per output leaves the GPU idle: use a block per output.
constexpr int64_t kThreadPerOutputMin = 1024;
// From this many reduced elements per output on, a kept innermost dim takes the column tile.
constexpr int64_t kColumnTileMinReduced = 32;
constexpr int kTileRows = 32;
// The column split: about this many blocks in all (a few per SM), each slice of the reduced
// elements at least kMinSlice long (4 loads per tile row).
constexpr int64_t kSplitBlocks = 512;
constexpr int64_t kMinSlice = 4 * kTileRows;
// Below this many reduced elements one block finishes about as fast as the split's two launches.
// (4096 before: a squeeze-excitation mean of [1, 56, 56, 48] then took 26 us in two blocks whose
// threads each walked 98 rows, on an H100.)
constexpr int64_t kSplitMinReduced = 512;

// Vector columns from this many threads (16-byte output groups) on; fewer leave the GPU idle and
// the column tile's parallelism over the reduced elements wins.
constexpr int64_t kVectorColumnsMinThreads = 16384;

// The accumulator of an element type: float for floating types, long long for integers.
template <typename T>
struct Accum {
  using type = float;
  static __device__ __forceinline__ float load(T v) { return to_float(v); }
  static __device__ __forceinline__ T store(float v) { return from_float<T>(v); }
};
template <>
struct Accum<int32_t> {
  using type = long long;
  static __device__ __forceinline__ long long load(int32_t v) { return v; }
  static __device__ __forceinline__ int32_t store(long long v) {
    return static_cast<int32_t>(static_cast<unsigned int>(v));  // wraps, as the reference
  }
};
template <>
struct Accum<int64_t> {
  using type = long long;
  static __device__ __forceinline__ long long load(int64_t v) { return v; }
  static __device__ __forceinline__ int64_t store(long long v) { return v; }
};

template <typename A>
__device__ __forceinline__ A identity_of(int op);
template <>
__device__ __forceinline__ float identity_of<float>(int op) {
  return op == kProd ? 1.f : op == kMax ? -INFINITY : op == kMin ? INFINITY : 0.f;
}
template <>
__device__ __forceinline__ long long identity_of<long long>(int op) {
  return op == kProd ? 1 : op == kMax ? LLONG_MIN : op == kMin ? LLONG_MAX : 0;
}

// One combine for every op, NaN-propagating max/min; integer sums and products wrap (computed
// unsigned: signed overflow is undefined).
__device__ __forceinline__ float combine(int op, float a, float b) {
  switch (op) {
    case kProd:
      return a * b;
    case kMax:
      return (a != a || a > b) ? a : b;
    case kMin:
      return (a != a || a < b) ? a : b;
    default:
      return a + b;
  }
}
__device__ __forceinline__ long long combine(int op, long long a, long long b) {
  using U = unsigned long long;
  switch (op) {
    case kProd:
      return static_cast<long long>(static_cast<U>(a) * static_cast<U>(b));
    case kMax:
      return a > b ? a : b;
    case kMin:
      return a < b ? a : b;
    default:
      return static_cast<long long>(static_cast<U>(a) + static_cast<U>(b));
  }
}

struct ReduceParams {
  int op;
  float correction;
};

// mean and var finish with a division; var needs the mean first (its second pass).
__device__ __forceinline__ float divisor(const ReduceParams& p, int64_t n) {
  return p.op == kVar ? fmaxf(0.f, static_cast<float>(n) - p.correction) : static_cast<float>(n);
}

template <typename T>
__global__ void reduce_block_kernel(ReduceParams p, ReduceGeometry g, const T* __restrict__ x,
                                    T* __restrict__ y) {
  using Acc = Accum<T>;
  using A = typename Acc::type;
  __shared__ A shared[kMaxWarps];
  const int pass_op = p.op == kMean || p.op == kVar ? kSum : p.op;
  auto op = [pass_op](A a, A b) { return combine(pass_op, a, b); };
  for (int64_t o = blockIdx.x; o < g.num_out; o += gridDim.x) {
    const T* row = x + axes_offset(g.kept, o);
    A acc = identity_of<A>(pass_op);
    for (int64_t r = threadIdx.x; r < g.num_red; r += blockDim.x) {
      acc = combine(pass_op, acc, Acc::load(row[axes_offset(g.red, r)]));
    }
    acc = block_reduce(acc, identity_of<A>(pass_op), op, shared);
    if constexpr (std::is_same<A, float>::value) {
      if (p.op == kMean) acc /= static_cast<float>(g.num_red);  // 0/0 = NaN over an empty axis
      if (p.op == kVar) {
        float mean = acc / static_cast<float>(g.num_red), m2 = 0.f;
        for (int64_t r = threadIdx.x; r < g.num_red; r += blockDim.x) {
          float d = Acc::load(row[axes_offset(g.red, r)]) - mean;
          m2 += d * d;
        }
        acc = block_reduce(m2, 0.f, op, shared) / divisor(p, g.num_red);
      }
    }
    if (threadIdx.x == 0) y[o] = Acc::store(acc);
  }
}

template <typename T>
__global__ void reduce_thread_kernel(ReduceParams p, ReduceGeometry g, const T* __restrict__ x,
                                     T* __restrict__ y) {
  using Acc = Accum<T>;
  using A = typename Acc::type;
  const int pass_op = p.op == kMean || p.op == kVar ? kSum : p.op;
  for (int64_t o = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; o < g.num_out;
       o += int64_t{gridDim.x} * blockDim.x) {
    const T* row = x + axes_offset(g.kept, o);
    A acc = identity_of<A>(pass_op);
    for (int64_t r = 0; r < g.num_red; ++r)
      acc = combine(pass_op, acc, Acc::load(row[axes_offset(g.red, r)]));
    if constexpr (std::is_same<A, float>::value) {
      if (p.op == kMean) acc /= static_cast<float>(g.num_red);
      if (p.op == kVar) {
        float mean = acc / static_cast<float>(g.num_red), m2 = 0.f;
        for (int64_t r = 0; r < g.num_red; ++r) {
          float d = Acc::load(row[axes_offset(g.red, r)]) - mean;
          m2 += d * d;
        }
        acc = m2 / divisor(p, g.num_red);
      }
    }
    y[o] = Acc::store(acc);
  }
}

// The column tile over reduced elements [begin, end): block (x, y) owns outputs 32x.. and, when
// split (partials != nullptr), slice y of the reduced elements, whose result goes to
// partials[y * num_out + output] for reduce_combine_partials_kernel.
template <typename T>
__global__ void __launch_bounds__(32 * kTileRows)
    reduce_column_tile_kernel(ReduceParams p, ReduceGeometry g, const T* __restrict__ x, T* __restrict__ y,
                              int64_t slice, typename Accum<T>::type* __restrict__ partials) {
  using Acc = Accum<T>;
  using A = typename Acc::type;
  __shared__ A partial[kTileRows][33];
  const int pass_op = p.op == kMean ? kSum : p.op;
  const int64_t o = int64_t{blockIdx.x} * 32 + threadIdx.x;
  const int64_t begin = int64_t{blockIdx.y} * slice;
  const int64_t end = begin + slice < g.num_red ? begin + slice : g.num_red;
  A acc = identity_of<A>(pass_op);
  if (o < g.num_out) {
    const T* row = x + axes_offset(g.kept, o);
    // Four loads in flight per thread (a dependent load-add chain would wait on each one).
    int64_t r = begin + threadIdx.y;
    for (; r + 3 * kTileRows < end; r += 4 * kTileRows) {
      A v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = Acc::load(row[axes_offset(g.red, r + u * kTileRows)]);
#pragma unroll
      for (int u = 0; u < 4; ++u) acc = combine(pass_op, acc, v[u]);
    }
    for (; r < end; r += kTileRows) acc = combine(pass_op, acc, Acc::load(row[axes_offset(g.red, r)]));
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  // Warp w combines output w's kTileRows partials as a shuffle tree.
  static_assert(kTileRows == 32, "one warp per output column");
  const int64_t out = int64_t{blockIdx.x} * 32 + threadIdx.y;
  acc = partial[threadIdx.x][threadIdx.y];
  for (int offset = 16; offset > 0; offset >>= 1)
    acc = combine(pass_op, acc, __shfl_down_sync(0xffffffffu, acc, offset));
  if (threadIdx.x != 0 || out >= g.num_out) return;
  if (partials != nullptr) {
    partials[int64_t{blockIdx.y} * g.num_out + out] = acc;
    return;
  }
  if constexpr (std::is_same<A, float>::value) {
    if (p.op == kMean) acc /= static_cast<float>(g.num_red);
  }
  y[out] = Acc::store(acc);
}

// Thread t owns outputs [t * V, t * V + V), contiguous in x (the kept innermost dim has stride 1
// and a multiple of V elements) and in y; V * sizeof(T) = 16 bytes, x and y 16-byte aligned.
template <typename T>
__global__ void reduce_vector_columns_kernel(ReduceParams p, ReduceGeometry g, const T* __restrict__ x,
                                             T* __restrict__ y) {
  constexpr int V = 16 / sizeof(T);
  union Pack {
    uint4 bits;
    T v[V];
  };
  const int pass_op = p.op == kMean ? kSum : p.op;
  const int64_t groups = g.num_out / V;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < groups;
       t += int64_t{gridDim.x} * blockDim.x) {
    const T* row = x + axes_offset(g.kept, t * V);
    float acc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = identity_of<float>(pass_op);
#pragma unroll 4
    for (int64_t r = 0; r < g.num_red; ++r) {
      Pack in;
      in.bits = __ldg(reinterpret_cast<const uint4*>(row + axes_offset(g.red, r)));
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] = combine(pass_op, acc[k], to_float(in.v[k]));
    }
    Pack out;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      out.v[k] = from_float<T>(p.op == kMean ? acc[k] / static_cast<float>(g.num_red) : acc[k]);
    }
    *reinterpret_cast<uint4*>(y + t * V) = out.bits;
  }
}

// Combines the `slices` partials of each output (column split), then the mean's division.
template <typename T>
__global__ void reduce_combine_partials_kernel(ReduceParams p, int64_t num_out, int64_t num_red, int slices,
                                               const typename Accum<T>::type* __restrict__ partials,
                                               T* __restrict__ y) {
  using Acc = Accum<T>;
  using A = typename Acc::type;
  const int pass_op = p.op == kMean ? kSum : p.op;
  for (int64_t o = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; o < num_out;
       o += int64_t{gridDim.x} * blockDim.x) {
    A acc = identity_of<A>(pass_op);
    for (int s = 0; s < slices; ++s) acc = combine(pass_op, acc, partials[s * num_out + o]);
    if constexpr (std::is_same<A, float>::value) {
      if (p.op == kMean) acc /= static_cast<float>(num_red);
    }
    y[o] = Acc::store(acc);
  }
}

class CudaReduce final : public Kernel {
 public:
  explicit CudaReduce(const Layer& l)
      : layer_(l),
        params_{variant_code(reduce_ops(), l.attrs.get_string("op", l.name)),
                static_cast<float>(l.attrs.get_int("correction", int64_t{1}))} {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView& x = in[0];
    ReduceGeometry g = make_reduce_geometry(x.dims, reduced_axes(layer_, static_cast<int>(x.dims.size())));
    if (g.num_out == 0) return;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    const int64_t vector = 16 / static_cast<int64_t>(dtype_size(x.dtype));
    const bool vector_columns =
        is_floating(x.dtype) && params_.op != kVar && !g.inner_reduced && g.kept.rank > 0 &&
        g.kept.strides[g.kept.rank - 1] == 1 && g.kept.sizes[g.kept.rank - 1] % vector == 0 &&
        g.num_out / vector >= kVectorColumnsMinThreads && reinterpret_cast<uintptr_t>(x.data) % 16 == 0 &&
        reinterpret_cast<uintptr_t>(out[0].data) % 16 == 0 && [&] {
          for (int d = 0; d < g.red.rank; ++d)
            if (g.red.strides[d] % vector) return false;  // each reduced step keeps the alignment
          for (int d = 0; d < g.kept.rank; ++d)
            if (g.kept.strides[d] % vector && d != g.kept.rank - 1) return false;
          return true;
        }();
    const bool column_tile = !g.inner_reduced && g.num_red >= kColumnTileMinReduced && params_.op != kVar;
    const bool per_thread = !g.inner_reduced && g.num_out >= kThreadPerOutputMin;
    dispatch_numeric(x.dtype, "reduce", [&](auto tag) {
      using T = decltype(tag);
      auto* px = static_cast<const T*>(x.data);
      auto* py = static_cast<T*>(out[0].data);
      if constexpr (std::is_floating_point<T>::value || sizeof(T) == 2) {
        if (vector_columns) {
          constexpr int kBlock = 256;
          reduce_vector_columns_kernel<T>
              <<<grid_for(g.num_out / vector, kBlock), kBlock, 0, stream>>>(params_, g, px, py);
          return;
        }
      }
      if (column_tile) {
        using A = typename Accum<T>::type;
        const int64_t columns = (g.num_out + 31) / 32;
        // Slices of the reduced elements (at least kMinSlice each) until about kSplitBlocks
        // blocks run, where the workspace holds their partials.
        int64_t slices = g.num_red < kSplitMinReduced
                             ? 1
                             : std::min<int64_t>(kSplitBlocks / columns, g.num_red / kMinSlice);
        if (slices > 1 && static_cast<size_t>(slices * g.num_out) * sizeof(A) > ctx.workspace_bytes)
          slices = 1;
        const unsigned grid = static_cast<unsigned>(columns);
        if (slices > 1) {
          const int64_t slice = (g.num_red + slices - 1) / slices;
          slices = (g.num_red + slice - 1) / slice;
          auto* partials = static_cast<A*>(ctx.workspace);
          reduce_column_tile_kernel<T>
              <<<dim3(grid, static_cast<unsigned>(slices)), dim3(32, kTileRows), 0, stream>>>(
                  params_, g, px, py, slice, partials);
          KILN_CUDA_CHECK_LAUNCH();
          constexpr int kBlock = 256;
          reduce_combine_partials_kernel<T><<<grid_for(g.num_out, kBlock), kBlock, 0, stream>>>(
              params_, g.num_out, g.num_red, static_cast<int>(slices), partials, py);
        } else {
          reduce_column_tile_kernel<T>
              <<<grid, dim3(32, kTileRows), 0, stream>>>(params_, g, px, py, g.num_red, nullptr);
        }
      } else if (per_thread) {
        constexpr int kBlock = 256;
        reduce_thread_kernel<T><<<grid_for(g.num_out, kBlock), kBlock, 0, stream>>>(params_, g, px, py);
      } else {
        int block = row_block_size(g.num_red);
        reduce_block_kernel<T><<<grid_for(g.num_out, 1), block, 0, stream>>>(params_, g, px, py);
      }
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_reduce_" + reduce_ops()[params_.op]; }

 private:
  Layer layer_;
  ReduceParams params_;
};

// arg_reduce. A candidate (v, i) replaces the best (bv, bi): an index of -1 is "none yet"; the first
// NaN beats everything (torch); otherwise a strictly better value, or an equal one at a smaller index.
template <typename A>
__device__ __forceinline__ bool arg_better(int op, A v, int64_t i, A bv, int64_t bi) {
  if (i < 0) return false;
  if (bi < 0) return true;
  bool vn = v != v, bn = bv != bv;
  if (vn || bn) return vn && (!bn || i < bi);
  if (v == bv) return i < bi;
  return op == kArgmax ? v > bv : v < bv;
}

template <typename T>
__global__ void arg_reduce_block_kernel(int op, AxisGeometry g, const T* __restrict__ x,
                                        int64_t* __restrict__ y) {
  using Acc = Accum<T>;
  using A = typename Acc::type;
  __shared__ A shared_v[kMaxWarps];
  __shared__ int64_t shared_i[kMaxWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t rows = g.outer * g.inner;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* base = x + (row / g.inner) * g.n * g.inner + row % g.inner;
    A best = A{};
    int64_t bi = -1;
    for (int64_t k = threadIdx.x; k < g.n; k += blockDim.x) {
      A v = Acc::load(base[k * g.inner]);
      if (arg_better(op, v, k, best, bi)) best = v, bi = k;
    }
    for (int level = 0; level < 2; ++level) {  // within each warp, then across the warps
      for (int offset = 16; offset > 0; offset >>= 1) {
        A v = __shfl_down_sync(0xffffffffu, best, offset);
        int64_t i = __shfl_down_sync(0xffffffffu, bi, offset);
        if (arg_better(op, v, i, best, bi)) best = v, bi = i;
      }
      if (level == 1) break;
      if (lane == 0) shared_v[warp] = best, shared_i[warp] = bi;
      __syncthreads();
      if (warp == 0) {
        bool has = lane < static_cast<int>(blockDim.x >> 5);
        best = has ? shared_v[lane] : A{};
        bi = has ? shared_i[lane] : -1;
      } else {
        bi = -1;
      }
    }
    if (threadIdx.x == 0) y[row] = bi;
    __syncthreads();  // shared_* are rewritten for the next row
  }
}

template <typename T>
__global__ void arg_reduce_thread_kernel(int op, AxisGeometry g, const T* __restrict__ x,
                                         int64_t* __restrict__ y) {
  using Acc = Accum<T>;
  using A = typename Acc::type;
  const int64_t rows = g.outer * g.inner;
  for (int64_t row = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; row < rows;
       row += int64_t{gridDim.x} * blockDim.x) {
    const T* base = x + (row / g.inner) * g.n * g.inner + row % g.inner;
    A best = Acc::load(base[0]);
    int64_t bi = 0;
    for (int64_t k = 1; k < g.n; ++k) {
      A v = Acc::load(base[k * g.inner]);
      if (arg_better(op, v, k, best, bi)) best = v, bi = k;
    }
    y[row] = bi;
  }
}

class CudaArgReduce final : public Kernel {
 public:
  explicit CudaArgReduce(const Layer& l)
      : layer_(l), op_(variant_code(arg_reduce_ops(), l.attrs.get_string("op", l.name))) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView& x = in[0];
    AxisGeometry g = make_axis_geometry(x.dims, resolve_axis(layer_, static_cast<int>(x.dims.size()), 0));
    int64_t rows = g.outer * g.inner;
    if (rows == 0) return;  // the schema refused an empty reduced axis
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    dispatch_numeric(x.dtype, "arg_reduce", [&](auto tag) {
      using T = decltype(tag);
      auto* px = static_cast<const T*>(x.data);
      auto* py = static_cast<int64_t*>(out[0].data);
      if (g.inner > 1 && rows >= kThreadPerOutputMin) {
        constexpr int kBlock = 256;
        arg_reduce_thread_kernel<T><<<grid_for(rows, kBlock), kBlock, 0, stream>>>(op_, g, px, py);
      } else {
        arg_reduce_block_kernel<T><<<grid_for(rows, 1), row_block_size(g.n), 0, stream>>>(op_, g, px, py);
      }
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_" + arg_reduce_ops()[op_]; }

 private:
  Layer layer_;
  int op_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("reduce", Backend::kCuda, [](const Layer& l) { return std::make_unique<CudaReduce>(l); });
  register_kernel("arg_reduce", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaArgReduce>(l); });
});

}  // namespace kiln
