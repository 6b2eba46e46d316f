// Normalizations, float32 math with accurate expf/sqrtf. Row kernels (one block per row, two-pass
// statistics through block_reduce) for softmax along a contiguous axis and for layer_norm,
// rms_norm and group_norm, whose rows are always contiguous; softmax along a strided axis with many
// rows uses a thread per row (adjacent threads read adjacent addresses). batch_norm is pointwise.
// Parameters (weight, bias, mean, var) are x's type or float (P).
// Fast path for the transformer rows (layer_norm / rms_norm / softmax over a contiguous last axis
// of up to kRegRowMax elements, a multiple of the 16-byte vector, 16-byte aligned): a block of
// kRegBlock threads per row keeps the row in registers (16-byte loads), so x is read once and the
// statistics come from registers (mean, then the centered sum of squares: no cancellation).
#include <cmath>
#include <initializer_list>
#include <type_traits>

#include <cuda_fp8.h>

#include "ir/op_schema.h"
#include "ir/ops/normalization.h"
#include "ir/ops/reduce.h"
#include "kernels/cuda/activation_math.cuh"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"
#include "kernels/reduce_geometry.h"

namespace kiln {
namespace {

// Below this many rows a thread per row leaves the GPU idle: use a block per row.
constexpr int64_t kThreadPerRowMin = 1024;

constexpr int kRegBlock = 128;
constexpr int kRegRowMax = 4096;

// The vectors-per-thread variant that holds rows of `nvec` 16-byte vectors, or 0 when none does.
inline int reg_vecs_per_thread(int64_t nvec) {
  for (int v : {1, 2, 4, 8}) {
    if (nvec <= int64_t{v} * kRegBlock) return v;
  }
  return 0;
}

// Whether the register path applies to rows of `len` elements of T at these addresses.
template <typename T>
bool reg_row_ok(int64_t len, std::initializer_list<const void*> ptrs) {
  if (len % Vec16<T>::kSize != 0 || len > kRegRowMax) return false;
  for (const void* p : ptrs) {
    if (p && !aligned16(p)) return false;
  }
  return reg_vecs_per_thread(len / Vec16<T>::kSize) > 0;
}

// Calls f(std::integral_constant<int, V>) for the vectors-per-thread variant V.
template <typename F>
void dispatch_reg_vecs(int v, F&& f) {
  switch (v) {
    case 1:
      f(std::integral_constant<int, 1>{});
      return;
    case 2:
      f(std::integral_constant<int, 2>{});
      return;
    case 4:
      f(std::integral_constant<int, 4>{});
      return;
    default:
      f(std::integral_constant<int, 8>{});
      return;
  }
}

// Softmax over contiguous rows of `len` elements, the row in registers (see the file comment).
template <typename T, int kVecs>
__global__ void __launch_bounds__(kRegBlock)
    softmax_reg_kernel(int64_t rows, int64_t len, bool log, const T* __restrict__ x, T* __restrict__ y) {
  constexpr int V = Vec16<T>::kSize;
  __shared__ float shared[kMaxWarps];
  const int64_t nvec = len / V;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const auto* xr = reinterpret_cast<const Vec16<T>*>(x + r * len);
    float v[kVecs][V];
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t idx = threadIdx.x + int64_t{i} * kRegBlock;
      if (idx < nvec) {
        Vec16<T> a = xr[idx];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          v[i][j] = to_float(a.v[j]);
          m = MaxOp()(m, v[i][j]);
        }
      }
    }
    m = block_reduce(m, -INFINITY, MaxOp(), shared);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      if (threadIdx.x + int64_t{i} * kRegBlock < nvec) {
#pragma unroll
        for (int j = 0; j < V; ++j) sum += expf(v[i][j] - m);
      }
    }
    sum = block_reduce(sum, 0.f, SumOp(), shared);
    const float log_sum = logf(sum), inv_sum = 1.f / sum;
    auto* yr = reinterpret_cast<Vec16<T>*>(y + r * len);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t idx = threadIdx.x + int64_t{i} * kRegBlock;
      if (idx < nvec) {
        Vec16<T> o;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float shifted = v[i][j] - m;
          o.v[j] = from_float<T>(log ? shifted - log_sum : expf(shifted) * inv_sum);
        }
        yr[idx] = o;
      }
    }
  }
}

template <typename T>
__global__ void softmax_block_kernel(AxisGeometry g, bool log, const T* __restrict__ x, T* __restrict__ y) {
  __shared__ float shared[kMaxWarps];
  const int64_t rows = g.outer * g.inner;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    int64_t base = (row / g.inner) * g.n * g.inner + row % g.inner;
    float m = -INFINITY;
    for (int64_t k = threadIdx.x; k < g.n; k += blockDim.x) m = MaxOp()(m, to_float(x[base + k * g.inner]));
    m = block_reduce(m, -INFINITY, MaxOp(), shared);
    float sum = 0.f;
    for (int64_t k = threadIdx.x; k < g.n; k += blockDim.x) sum += expf(to_float(x[base + k * g.inner]) - m);
    sum = block_reduce(sum, 0.f, SumOp(), shared);
    float log_sum = logf(sum), inv_sum = 1.f / sum;
    for (int64_t k = threadIdx.x; k < g.n; k += blockDim.x) {
      float shifted = to_float(x[base + k * g.inner]) - m;
      y[base + k * g.inner] = from_float<T>(log ? shifted - log_sum : expf(shifted) * inv_sum);
    }
  }
}

template <typename T>
__global__ void softmax_thread_kernel(AxisGeometry g, bool log, const T* __restrict__ x, T* __restrict__ y) {
  const int64_t rows = g.outer * g.inner;
  for (int64_t row = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; row < rows;
       row += int64_t{gridDim.x} * blockDim.x) {
    int64_t base = (row / g.inner) * g.n * g.inner + row % g.inner;
    float m = -INFINITY, sum = 0.f;
    for (int64_t k = 0; k < g.n; ++k) m = MaxOp()(m, to_float(x[base + k * g.inner]));
    for (int64_t k = 0; k < g.n; ++k) sum += expf(to_float(x[base + k * g.inner]) - m);
    float log_sum = logf(sum), inv_sum = 1.f / sum;
    for (int64_t k = 0; k < g.n; ++k) {
      float shifted = to_float(x[base + k * g.inner]) - m;
      y[base + k * g.inner] = from_float<T>(log ? shifted - log_sum : expf(shifted) * inv_sum);
    }
  }
}

class CudaSoftmax final : public Kernel {
 public:
  explicit CudaSoftmax(const Layer& l)
      : layer_(l), log_(l.attrs.get_int("log", default_int(l.op, "log")) != 0) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView& x = in[0];
    AxisGeometry g = make_axis_geometry(x.dims, resolve_axis(layer_, static_cast<int>(x.dims.size()), -1));
    int64_t rows = g.outer * g.inner;
    if (rows == 0 || g.n == 0) return;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    dispatch_floating(x.dtype, "softmax", [&](auto tag) {
      using T = decltype(tag);
      auto* px = static_cast<const T*>(x.data);
      auto* py = static_cast<T*>(out[0].data);
      if (g.inner == 1 && reg_row_ok<T>(g.n, {px, py})) {
        dispatch_reg_vecs(reg_vecs_per_thread(g.n / Vec16<T>::kSize), [&](auto vecs) {
          softmax_reg_kernel<T, decltype(vecs)::value>
              <<<grid_for(rows, 1), kRegBlock, 0, stream>>>(rows, g.n, log_, px, py);
        });
      } else if (g.inner > 1 && rows >= kThreadPerRowMin) {
        constexpr int kBlock = 256;
        softmax_thread_kernel<T><<<grid_for(rows, kBlock), kBlock, 0, stream>>>(g, log_, px, py);
      } else {
        softmax_block_kernel<T><<<grid_for(rows, 1), row_block_size(g.n), 0, stream>>>(g, log_, px, py);
      }
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return log_ ? "cuda_log_softmax" : "cuda_softmax"; }

 private:
  Layer layer_;
  bool log_;
};

// Calls f(T{}, P{}): T the device type of x, P that of the parameters (x's type or float).
template <typename F>
void dispatch_norm(DataType x, bool params_float, const char* who, F&& f) {
  dispatch_floating(x, who, [&](auto tag) {
    using T = decltype(tag);
    if (params_float) {
      f(T{}, float{});
    } else {
      f(T{}, T{});
    }
  });
}

bool params_float(const std::vector<TensorView>& in) {
  return in.size() < 2 || in[1].dtype == DataType::kFloat32;
}

template <typename T, typename P>
__global__ void batch_norm_kernel(const T* __restrict__ x, const P* __restrict__ scale,
                                  const P* __restrict__ bias, const P* __restrict__ mean,
                                  const P* __restrict__ var, float eps, int64_t channels, int64_t inner,
                                  int64_t n, T* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t c = (i / inner) % channels;
    float a = to_float(scale[c]) / sqrtf(to_float(var[c]) + eps);
    y[i] = from_float<T>((to_float(x[i]) - to_float(mean[c])) * a + to_float(bias[c]));
  }
}

class CudaBatchNorm final : public Kernel {
 public:
  explicit CudaBatchNorm(const Layer& l)
      : eps_(static_cast<float>(l.attrs.get_float("eps", default_float(l.op, "eps")))) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const Dims& d = in[0].dims;
    int64_t n = volume(d);
    if (n == 0) return;
    int64_t inner = 1;
    for (size_t i = 2; i < d.size(); ++i) inner *= d[i];
    constexpr int kBlock = 256;
    dispatch_norm(in[0].dtype, params_float(in), "batch_norm", [&](auto t, auto p) {
      using T = decltype(t);
      using P = decltype(p);
      batch_norm_kernel<T, P><<<grid_for(n, kBlock), kBlock, 0, static_cast<cudaStream_t>(ctx.stream)>>>(
          static_cast<const T*>(in[0].data), static_cast<const P*>(in[1].data),
          static_cast<const P*>(in[2].data), static_cast<const P*>(in[3].data),
          static_cast<const P*>(in[4].data), eps_, d[1], inner, n, static_cast<T*>(out[0].data));
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_batch_norm"; }

 private:
  float eps_;
};

// layer_norm, rms_norm and group_norm: `rows` contiguous rows of `len` elements; element j of row r
// takes parameter (r % groups) * channels_per_group + j / spatial. weight/bias may be null.
struct RowNormShape {
  int64_t rows, len, groups, channels_per_group, spatial;
};

// The quantized copy of y (QuantizedCopy; q null: none), written as the quantize layer's kernel
// computes it from the rounded y: int8 clamp(rint(y * inv)), e4m3 saturated nearest even.
struct CopyParams {
  uint8_t* q = nullptr;
  bool e4m3 = false;
  float inv = 1.f, lo = -128.f, hi = 127.f;
};

template <typename T>
__device__ __forceinline__ uint8_t quantized_copy_of(const CopyParams& c, T y) {
  const float v = __fmul_rn(to_float(y), c.inv);
  if (c.e4m3) return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
  const float r = rintf(v);
  return static_cast<uint8_t>(static_cast<int8_t>(r != r ? c.lo : fminf(fmaxf(r, c.lo), c.hi)));
}

template <typename T, typename P>
__global__ void row_norm_kernel(RowNormShape s, float eps, bool rms, const T* __restrict__ x,
                                const P* __restrict__ weight, const P* __restrict__ bias, T* __restrict__ y,
                                CopyParams copy) {
  __shared__ float shared[kMaxWarps];
  for (int64_t r = blockIdx.x; r < s.rows; r += gridDim.x) {
    const T* row = x + r * s.len;
    float mean = 0.f;
    if (!rms) {
      for (int64_t j = threadIdx.x; j < s.len; j += blockDim.x) mean += to_float(row[j]);
      mean = block_reduce(mean, 0.f, SumOp(), shared) / static_cast<float>(s.len);
    }
    float m2 = 0.f;
    for (int64_t j = threadIdx.x; j < s.len; j += blockDim.x) {
      float d = to_float(row[j]) - mean;
      m2 += d * d;
    }
    m2 = block_reduce(m2, 0.f, SumOp(), shared);
    float inv = 1.f / sqrtf(m2 / static_cast<float>(s.len) + eps);
    int64_t param_base = (r % s.groups) * s.channels_per_group;
    for (int64_t j = threadIdx.x; j < s.len; j += blockDim.x) {
      int64_t p = param_base + j / s.spatial;
      float v = (to_float(row[j]) - mean) * inv;
      if (weight) v *= to_float(weight[p]);
      if (bias) v += to_float(bias[p]);
      const T out = from_float<T>(v);
      y[r * s.len + j] = out;
      if (copy.q) copy.q[r * s.len + j] = quantized_copy_of(copy, out);
    }
  }
}

// layer_norm / rms_norm (one parameter per element of the row, parameter index = position in the
// row), the row in registers. Not for group_norm with spatial > 1 or groups > 1 (see the dispatch).
template <typename T, typename P, int kVecs>
__global__ void __launch_bounds__(kRegBlock)
    row_norm_reg_kernel(int64_t rows, int64_t len, float eps, bool rms, const T* __restrict__ x,
                        const P* __restrict__ weight, const P* __restrict__ bias, T* __restrict__ y,
                        CopyParams copy) {
  constexpr int V = Vec16<T>::kSize;
  __shared__ float shared[kMaxWarps];
  const int64_t nvec = len / V;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const auto* xr = reinterpret_cast<const Vec16<T>*>(x + r * len);
    float v[kVecs][V];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t idx = threadIdx.x + int64_t{i} * kRegBlock;
      if (idx < nvec) {
        Vec16<T> a = xr[idx];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          v[i][j] = to_float(a.v[j]);
          sum += v[i][j];
        }
      }
    }
    const float mean = rms ? 0.f : block_reduce(sum, 0.f, SumOp(), shared) / static_cast<float>(len);
    float m2 = 0.f;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      if (threadIdx.x + int64_t{i} * kRegBlock < nvec) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float d = v[i][j] - mean;
          m2 += d * d;
        }
      }
    }
    m2 = block_reduce(m2, 0.f, SumOp(), shared);
    const float inv = 1.f / sqrtf(m2 / static_cast<float>(len) + eps);
    auto* yr = reinterpret_cast<Vec16<T>*>(y + r * len);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t idx = threadIdx.x + int64_t{i} * kRegBlock;
      if (idx < nvec) {
        Vec16<T> o;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const int64_t p = idx * V + j;
          float f = (v[i][j] - mean) * inv;
          if (weight) f *= to_float(weight[p]);
          if (bias) f += to_float(bias[p]);
          o.v[j] = from_float<T>(f);
        }
        yr[idx] = o;
        if (copy.q) {  // V bytes, one aligned store (the row and its start are V-aligned)
          Pack<uint8_t, V> qv;
#pragma unroll
          for (int j = 0; j < V; ++j) qv.v[j] = quantized_copy_of(copy, o.v[j]);
          *reinterpret_cast<Pack<uint8_t, V>*>(copy.q + r * len + idx * V) = qv;
        }
      }
    }
  }
}

// The same for rows of at most kWarpVecs * 32 vectors (BERT's 768 float16 values: 96 vectors):
// one warp per row, kWarpRows rows per block, the statistics by warp shuffles (no shared memory,
// no block barrier), weight and bias read as whole vectors where they have x's type. The block
// kernel above left a quarter of its 128 threads idle on such rows and crossed six barriers each.
constexpr int kWarpRows = 4;
constexpr int kWarpVecs = 4;

template <typename T, typename P, int kVecs>
__global__ void __launch_bounds__(kWarpRows * 32)
    row_norm_warp_kernel(int64_t rows, int64_t len, float eps, bool rms, const T* __restrict__ x,
                         const P* __restrict__ weight, const P* __restrict__ bias, T* __restrict__ y,
                         CopyParams copy) {
  constexpr int V = Vec16<T>::kSize;
  const int lane = threadIdx.x % 32;
  const int64_t nvec = len / V;
  for (int64_t r = blockIdx.x * int64_t{kWarpRows} + threadIdx.x / 32; r < rows;
       r += int64_t{gridDim.x} * kWarpRows) {
    const auto* xr = reinterpret_cast<const Vec16<T>*>(x + r * len);
    float v[kVecs][V];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t idx = lane + int64_t{i} * 32;
      if (idx < nvec) {
        const Vec16<T> a = xr[idx];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          v[i][j] = to_float(a.v[j]);
          sum += v[i][j];
        }
      }
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float mean = rms ? 0.f : sum / static_cast<float>(len);
    float m2 = 0.f;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      if (lane + int64_t{i} * 32 < nvec) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float d = v[i][j] - mean;
          m2 += d * d;
        }
      }
    }
    for (int o = 16; o > 0; o >>= 1) m2 += __shfl_xor_sync(0xffffffffu, m2, o);
    const float inv = 1.f / sqrtf(m2 / static_cast<float>(len) + eps);
    auto* yr = reinterpret_cast<Vec16<T>*>(y + r * len);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t idx = lane + int64_t{i} * 32;
      if (idx < nvec) {
        float w[V], b[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          w[j] = 1.f;
          b[j] = 0.f;
        }
        if constexpr (sizeof(P) == sizeof(T)) {  // parameters of x's type: one vector each
          if (weight) {
            const Vec16<P> wv = reinterpret_cast<const Vec16<P>*>(weight)[idx];
#pragma unroll
            for (int j = 0; j < V; ++j) w[j] = to_float(wv.v[j]);
          }
          if (bias) {
            const Vec16<P> bv = reinterpret_cast<const Vec16<P>*>(bias)[idx];
#pragma unroll
            for (int j = 0; j < V; ++j) b[j] = to_float(bv.v[j]);
          }
        } else {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            if (weight) w[j] = to_float(weight[idx * V + j]);
            if (bias) b[j] = to_float(bias[idx * V + j]);
          }
        }
        Vec16<T> o;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          // As the block kernel: (x - mean) * inv, times the weight, plus the bias.
          float f = (v[i][j] - mean) * inv;
          if (weight) f *= w[j];
          if (bias) f += b[j];
          o.v[j] = from_float<T>(f);
        }
        yr[idx] = o;
        if (copy.q) {  // V bytes, one aligned store (the row and its start are V-aligned)
          Pack<uint8_t, V> qv;
#pragma unroll
          for (int j = 0; j < V; ++j) qv.v[j] = quantized_copy_of(copy, o.v[j]);
          *reinterpret_cast<Pack<uint8_t, V>*>(copy.q + r * len + idx * V) = qv;
        }
      }
    }
  }
}

class CudaRowNorm final : public Kernel {
 public:
  explicit CudaRowNorm(const Layer& l)
      : op_(l.op),
        rms_(l.op == "rms_norm"),
        eps_(static_cast<float>(l.attrs.get_float("eps", default_float(l.op, "eps")))),
        ndim_(l.attrs.get_int("normalized_ndim", int64_t{1})),
        groups_(l.attrs.get_int("num_groups", int64_t{1})),
        copy_(quantized_copy(l)) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const Dims& d = in[0].dims;
    RowNormShape s;
    if (op_ == "group_norm") {
      int64_t spatial = 1;
      for (size_t i = 2; i < d.size(); ++i) spatial *= d[i];
      int64_t cpg = d[1] / groups_;
      s = {d[0] * groups_, cpg * spatial, groups_, cpg, spatial};
    } else {
      int64_t len = 1;
      for (size_t i = d.size() - static_cast<size_t>(ndim_); i < d.size(); ++i) len *= d[i];
      s = {len == 0 ? 0 : volume(d) / len, len, 1, len, 1};
    }
    if (s.len == 0 || s.rows == 0) return;
    dispatch_norm(in[0].dtype, params_float(in), op_.c_str(), [&](auto t, auto p) {
      using T = decltype(t);
      using P = decltype(p);
      const P* weight = in.size() > 1 ? static_cast<const P*>(in[1].data) : nullptr;
      const P* bias = in.size() > 2 ? static_cast<const P*>(in[2].data) : nullptr;
      auto* x = static_cast<const T*>(in[0].data);
      auto* y = static_cast<T*>(out[0].data);
      CopyParams copy;
      if (copy_.on) {
        copy.q = static_cast<uint8_t*>(out[1].data);
        copy.e4m3 = copy_.e4m3;
        copy.inv = copy_.inv_scale;
        copy.lo = static_cast<float>(copy_.lo);
        copy.hi = static_cast<float>(copy_.hi);
      }
      // The register kernel indexes parameters by the element's position in the row: right for
      // layer_norm/rms_norm, and for group_norm only when each row is one group of channels with no
      // spatial extent (otherwise a parameter belongs to a channel, i.e. to `spatial` elements).
      const bool param_per_element = s.groups == 1 && s.spatial == 1;
      const int64_t nvec = s.len / Vec16<T>::kSize;
      if (param_per_element && reg_row_ok<T>(s.len, {x, y, copy.q, weight, bias}) && nvec <= kWarpVecs * 32) {
        auto warp_kernel = nvec <= 32   ? row_norm_warp_kernel<T, P, 1>
                           : nvec <= 64 ? row_norm_warp_kernel<T, P, 2>
                                        : row_norm_warp_kernel<T, P, kWarpVecs>;
        warp_kernel<<<grid_for(s.rows, kWarpRows), kWarpRows * 32, 0,
                      static_cast<cudaStream_t>(ctx.stream)>>>(s.rows, s.len, eps_, rms_, x, weight, bias, y,
                                                               copy);
        KILN_CUDA_CHECK_LAUNCH();
        return;
      }
      if (param_per_element && reg_row_ok<T>(s.len, {x, y, copy.q})) {
        dispatch_reg_vecs(reg_vecs_per_thread(s.len / Vec16<T>::kSize), [&](auto vecs) {
          row_norm_reg_kernel<T, P, decltype(vecs)::value>
              <<<grid_for(s.rows, 1), kRegBlock, 0, static_cast<cudaStream_t>(ctx.stream)>>>(
                  s.rows, s.len, eps_, rms_, x, weight, bias, y, copy);
        });
        return;
      }
      row_norm_kernel<T, P>
          <<<grid_for(s.rows, 1), row_block_size(s.len), 0, static_cast<cudaStream_t>(ctx.stream)>>>(
              s, eps_, rms_, static_cast<const T*>(in[0].data), weight, bias, static_cast<T*>(out[0].data),
              copy);
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_" + op_; }

 private:
  std::string op_;
  bool rms_;
  float eps_;
  int64_t ndim_, groups_;
  QuantizedCopy copy_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("softmax", Backend::kCuda, [](const Layer& l) { return std::make_unique<CudaSoftmax>(l); });
  register_kernel("batch_norm", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaBatchNorm>(l); });
  for (const char* op : {"layer_norm", "group_norm", "rms_norm"}) {
    register_kernel(op, Backend::kCuda, [](const Layer& l) { return std::make_unique<CudaRowNorm>(l); });
  }
});

}  // namespace kiln
