// pooling: cuDNN (cudnnPoolingForward) where it computes torch's result exactly, otherwise an own
// kernel. cuDNN's output size is the floor formula and its average divisor is either the full
// window (count_include_pad) or the valid elements, so it covers layers without ceil_mode,
// dilation or divisor_override. The own kernel (one thread per output element, 1d/2d as 3d with
// leading dims of size 1) covers every case, and bfloat16 everywhere (cuDNN's legacy pooling
// does not promise bfloat16). adaptive_pooling always runs the own kernel, or a reduction kernel
// for global pooling (output size 1). Math in float; max
// pooling propagates NaN like torch. Channels-last layers (layout nhwc) run the own kernel with
// one thread per output element in channel-fastest order, so neighbouring threads read
// neighbouring channels; 2-D ones whose channels fill 16-byte vectors take a vectorized variant
// (one thread per pixel and 8 float16 channels, 32-bit indexing).
#include <algorithm>
#include <cfloat>
#include <type_traits>

#include "ir/op_schema.h"
#include "ir/ops/convolution.h"
#include "ir/ops/pooling.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cudnn_util.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"

namespace kiln {
namespace {

struct PoolParams {
  int type;
  bool adaptive;
  bool count_include_pad;
  int64_t divisor_override;  // 0: none
  int64_t in[3], out[3];
  int64_t kernel[3], stride[3], pad[3], dilation[3];
  int64_t planes;  // N * C
  bool channels_last;
  int64_t channels;
};

template <typename T>
__global__ void pooling_kernel(PoolParams p, const T* __restrict__ x, T* __restrict__ y) {
  const int64_t out_size = p.out[0] * p.out[1] * p.out[2], in_size = p.in[0] * p.in[1] * p.in[2];
  const int64_t n = p.planes * out_size;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    // Element (pixel) of plane (sample, channel) is at base + pixel * stride; y[i] is the output.
    int64_t o, base_offset, stride;
    if (p.channels_last) {
      const int64_t rest = i / p.channels;
      o = rest % out_size;
      base_offset = rest / out_size * in_size * p.channels + i % p.channels;
      stride = p.channels;
    } else {
      o = i % out_size;
      base_offset = i / out_size * in_size;
      stride = 1;
    }
    const int64_t op[3] = {o / (p.out[1] * p.out[2]), o / p.out[2] % p.out[1], o % p.out[2]};
    int64_t lo[3], hi[3], step[3];
    int64_t padded_count = 1, count = 1;
    for (int d = 0; d < 3; ++d) {
      if (p.adaptive) {  // [floor(o * in / out), ceil((o + 1) * in / out))
        lo[d] = op[d] * p.in[d] / p.out[d];
        hi[d] = ((op[d] + 1) * p.in[d] + p.out[d] - 1) / p.out[d];
        step[d] = 1;
        count *= hi[d] - lo[d];
      } else if (p.type == kPoolMax) {  // taps start + j * dilation that fall inside the input
        const int64_t start = op[d] * p.stride[d] - p.pad[d];
        int64_t first = start < 0 ? (-start + p.dilation[d] - 1) / p.dilation[d] : 0;
        int64_t last = start >= p.in[d] ? 0 : (p.in[d] - 1 - start) / p.dilation[d] + 1;
        if (last > p.kernel[d]) last = p.kernel[d];
        lo[d] = start + first * p.dilation[d];
        hi[d] = first < last ? start + (last - 1) * p.dilation[d] + 1 : lo[d];
        step[d] = p.dilation[d];
      } else {  // torch avg_pool: the divisor counts padding up to the padded input's end
        const int64_t start = op[d] * p.stride[d] - p.pad[d];
        const int64_t end = min(start + p.kernel[d], p.in[d] + p.pad[d]);
        padded_count *= end - start;
        lo[d] = max(start, int64_t{0});
        hi[d] = min(end, p.in[d]);
        count *= hi[d] > lo[d] ? hi[d] - lo[d] : 0;
        step[d] = 1;
      }
    }
    const T* base = x + base_offset;
    float acc = p.type == kPoolMax ? -INFINITY : 0.f;
    for (int64_t a = lo[0]; a < hi[0]; a += step[0]) {
      for (int64_t b = lo[1]; b < hi[1]; b += step[1]) {
        for (int64_t c = lo[2]; c < hi[2]; c += step[2]) {
          const float v = to_float(base[((a * p.in[1] + b) * p.in[2] + c) * stride]);
          if (p.type == kPoolAvg) {
            acc += v;
          } else if (v > acc || isnan(v)) {
            acc = v;
          }
        }
      }
    }
    if (p.type == kPoolAvg) {
      const int64_t divisor = p.adaptive               ? count
                              : p.divisor_override > 0 ? p.divisor_override
                              : p.count_include_pad    ? padded_count
                                                       : count;
      acc /= static_cast<float>(divisor);
    }
    y[i] = from_float<T>(acc);
  }
}

// Global pooling (adaptive output size 1 along every spatial dim): one reduction per (sample,
// channel) instead of one thread walking a whole plane. Max propagates NaN (MaxOp).
// Channels first: one block per plane, threads stride over its pixels, then a block reduction.
template <typename T>
__global__ void global_pool_planes_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t planes,
                                          int64_t pixels, bool avg) {
  __shared__ float shared[kMaxWarps];
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    const T* base = x + plane * pixels;
    float acc = avg ? 0.f : -INFINITY;
    for (int64_t j = threadIdx.x; j < pixels; j += blockDim.x) {
      const float v = to_float(base[j]);
      acc = avg ? acc + v : MaxOp()(acc, v);
    }
    acc = avg ? block_reduce(acc, 0.f, SumOp(), shared) : block_reduce(acc, -INFINITY, MaxOp(), shared);
    if (threadIdx.x == 0) y[plane] = from_float<T>(avg ? acc / static_cast<float>(pixels) : acc);
  }
}

// Channels last: a block covers 32 neighbouring channels of one sample (threadIdx.x, coalesced
// reads) and kGlobalPhases pixel phases (threadIdx.y), combined through shared memory.
constexpr int kGlobalPhases = 8;
template <typename T>
__global__ void global_pool_channels_last_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t samples,
                                                 int64_t channels, int64_t pixels, bool avg) {
  __shared__ float partial[kGlobalPhases][33];
  const int64_t c = blockIdx.x * int64_t{32} + threadIdx.x;
  for (int64_t s = blockIdx.y; s < samples; s += gridDim.y) {
    float acc = avg ? 0.f : -INFINITY;
    if (c < channels) {
      const T* base = x + s * pixels * channels + c;
      for (int64_t j = threadIdx.y; j < pixels; j += kGlobalPhases) {
        const float v = to_float(base[j * channels]);
        acc = avg ? acc + v : MaxOp()(acc, v);
      }
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < channels) {
      float r = partial[0][threadIdx.x];
      for (int k = 1; k < kGlobalPhases; ++k)
        r = avg ? r + partial[k][threadIdx.x] : MaxOp()(r, partial[k][threadIdx.x]);
      y[s * channels + c] = from_float<T>(avg ? r / static_cast<float>(pixels) : r);
    }
    __syncthreads();
  }
}

void launch_global_pooling(const PoolParams& p, const TensorView& x, const TensorView& y,
                           cudaStream_t stream) {
  const int64_t pixels = p.in[0] * p.in[1] * p.in[2];
  const bool avg = p.type == kPoolAvg;
  dispatch_floating(x.dtype, "adaptive_pooling", [&](auto tag) {
    using T = decltype(tag);
    const T* xs = static_cast<const T*>(x.data);
    T* ys = static_cast<T*>(y.data);
    if (p.channels_last) {
      const int64_t samples = p.planes / p.channels;
      dim3 grid(static_cast<unsigned>((p.channels + 31) / 32),
                static_cast<unsigned>(std::min<int64_t>(samples, 65535)));
      global_pool_channels_last_kernel<T>
          <<<grid, dim3(32, kGlobalPhases), 0, stream>>>(xs, ys, samples, p.channels, pixels, avg);
    } else {
      const int block = row_block_size(pixels);
      const unsigned grid = static_cast<unsigned>(std::min<int64_t>(p.planes, int64_t{1} << 30));
      global_pool_planes_kernel<T><<<grid, block, 0, stream>>>(xs, ys, p.planes, pixels, avg);
    }
  });
  KILN_CUDA_CHECK_LAUNCH();
}

// Spatial values padded in front to three dims with `fill`.
void fill3(int64_t (&dst)[3], const std::vector<int64_t>& src, size_t first, int64_t fill) {
  const size_t n = src.size() - first;
  for (size_t i = 0; i < 3; ++i) dst[i] = i < 3 - n ? fill : src[first + i - (3 - n)];
}

// 2-D channels-last pooling (not adaptive) with channels a multiple of a 16-byte vector: one
// thread per output pixel and vector of channels, 32-bit indexing, 16-byte loads and stores.
// The window and divisor rules are the generic kernel's (pooling_kernel above).
template <typename T>
__global__ void pool2d_nhwc_vec_kernel(PoolParams p, const T* __restrict__ x, T* __restrict__ y, uint32_t n) {
  constexpr int kVec = 16 / sizeof(T);
  const uint32_t cv = static_cast<uint32_t>(p.channels / kVec), ow_n = static_cast<uint32_t>(p.out[2]),
                 oh_n = static_cast<uint32_t>(p.out[1]);
  const int ih_n = static_cast<int>(p.in[1]), iw_n = static_cast<int>(p.in[2]);
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    uint32_t rest = i / cv;
    const uint32_t c = i - rest * cv;
    const uint32_t ow = rest % ow_n;
    rest /= ow_n;
    const uint32_t oh = rest % oh_n, sample = rest / oh_n;
    int lo[2], hi[2], step[2];
    int padded_count = 1, count = 1;
    const uint32_t o[2] = {oh, ow};
    const int in_dim[2] = {ih_n, iw_n};
    for (int d = 0; d < 2; ++d) {
      const int k = static_cast<int>(p.kernel[d + 1]), s = static_cast<int>(p.stride[d + 1]),
                pad = static_cast<int>(p.pad[d + 1]), dil = static_cast<int>(p.dilation[d + 1]);
      const int start = static_cast<int>(o[d]) * s - pad;
      if (p.type == kPoolMax) {
        const int first = start < 0 ? (-start + dil - 1) / dil : 0;
        int last = start >= in_dim[d] ? 0 : (in_dim[d] - 1 - start) / dil + 1;
        if (last > k) last = k;
        lo[d] = start + first * dil;
        hi[d] = first < last ? start + (last - 1) * dil + 1 : lo[d];
        step[d] = dil;
      } else {
        const int end = min(start + k, in_dim[d] + pad);
        padded_count *= end - start;
        lo[d] = max(start, 0);
        hi[d] = min(end, in_dim[d]);
        count *= hi[d] > lo[d] ? hi[d] - lo[d] : 0;
        step[d] = 1;
      }
    }
    const T* base =
        x + static_cast<size_t>(sample) * ih_n * iw_n * p.channels + static_cast<size_t>(c) * kVec;
    if constexpr (std::is_same_v<T, int8_t>) {
      // int8 pools max only: four signed bytes an instruction (as floats, a conversion each, the
      // INT8 max pool of ResNet-50 at batch 256 took 0.33 ms on an H100; this way 0.14).
      uint4 m = make_uint4(0x80808080u, 0x80808080u, 0x80808080u, 0x80808080u);  // -128: an empty window's
      for (int a = lo[0]; a < hi[0]; a += step[0]) {
        for (int b = lo[1]; b < hi[1]; b += step[1]) {
          const uint4 raw =
              *reinterpret_cast<const uint4*>(base + (static_cast<size_t>(a) * iw_n + b) * p.channels);
          m = make_uint4(__vmaxs4(m.x, raw.x), __vmaxs4(m.y, raw.y), __vmaxs4(m.z, raw.z),
                         __vmaxs4(m.w, raw.w));
        }
      }
      *reinterpret_cast<uint4*>(y + static_cast<size_t>(i) * kVec) = m;
    } else {
      float acc[kVec];
#pragma unroll
      for (int v = 0; v < kVec; ++v) acc[v] = p.type == kPoolMax ? -INFINITY : 0.f;
      for (int a = lo[0]; a < hi[0]; a += step[0]) {
        for (int b = lo[1]; b < hi[1]; b += step[1]) {
          const uint4 raw =
              *reinterpret_cast<const uint4*>(base + (static_cast<size_t>(a) * iw_n + b) * p.channels);
          const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
          for (int v = 0; v < kVec; ++v) {
            const float val = to_float(e[v]);
            if (p.type == kPoolAvg) {
              acc[v] += val;
            } else if (val > acc[v] || isnan(val)) {
              acc[v] = val;
            }
          }
        }
      }
      if (p.type == kPoolAvg) {
        const float divisor = static_cast<float>(p.divisor_override > 0 ? p.divisor_override
                                                 : p.count_include_pad  ? padded_count
                                                                        : count);
#pragma unroll
        for (int v = 0; v < kVec; ++v) acc[v] /= divisor;
      }
      uint4 out;
      T* oe = reinterpret_cast<T*>(&out);
#pragma unroll
      for (int v = 0; v < kVec; ++v) oe[v] = from_float<T>(acc[v]);
      *reinterpret_cast<uint4*>(y + static_cast<size_t>(i) * kVec) = out;
    }
  }
}

bool vec_nhwc_ok(const PoolParams& p, const TensorView& x, const TensorView& y) {
  const int64_t vec = 16 / static_cast<int64_t>(dtype_size(x.dtype));
  return p.channels_last && !p.adaptive && p.in[0] == 1 && p.out[0] == 1 && p.kernel[0] == 1 &&
         p.channels % vec == 0 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(y.data) % 16 == 0 && volume(x.dims) < (int64_t{1} << 31) &&
         volume(y.dims) < (int64_t{1} << 31);
}

// f(T{}) for a floating dtype, or int8 (max pooling of a quantized tensor: the values are
// integers, which float holds exactly, and max returns one of them).
template <typename F>
void dispatch_pooled(DataType t, const char* who, F&& f) {
  if (t == DataType::kInt8) {
    f(int8_t{});
  } else {
    dispatch_floating(t, who, f);
  }
}

void launch_pooling(const PoolParams& p, const TensorView& x, const TensorView& y, cudaStream_t stream,
                    const char* who) {
  const int64_t n = volume(y.dims);
  if (n == 0) return;
  constexpr int kBlock = 256;
  if (vec_nhwc_ok(p, x, y)) {
    dispatch_pooled(x.dtype, who, [&](auto tag) {
      using T = decltype(tag);
      const int64_t threads = n / (16 / static_cast<int64_t>(sizeof(T)));
      pool2d_nhwc_vec_kernel<T><<<grid_for(threads, kBlock), kBlock, 0, stream>>>(
          p, static_cast<const T*>(x.data), static_cast<T*>(y.data), static_cast<uint32_t>(threads));
    });
    KILN_CUDA_CHECK_LAUNCH();
    return;
  }
  dispatch_pooled(x.dtype, who, [&](auto tag) {
    using T = decltype(tag);
    pooling_kernel<T><<<grid_for(n, kBlock), kBlock, 0, stream>>>(p, static_cast<const T*>(x.data),
                                                                  static_cast<T*>(y.data));
  });
  KILN_CUDA_CHECK_LAUNCH();
}

// Params of a pooling layer with (stored) dims x and y.
PoolParams pool_params(const PoolGeometry& g, const Dims& stored_x, const Dims& stored_y,
                       bool channels_last) {
  const Dims x = channels_last ? channels_first_dims(stored_x) : stored_x;
  const Dims y = channels_last ? channels_first_dims(stored_y) : stored_y;
  PoolParams p{};
  p.channels_last = channels_last;
  p.channels = x[1];
  p.type = g.type;
  p.adaptive = false;
  p.count_include_pad = g.count_include_pad;
  p.divisor_override = g.divisor_override;
  fill3(p.in, x, 2, 1);
  fill3(p.out, y, 2, 1);
  fill3(p.kernel, g.kernel, 0, 1);
  fill3(p.stride, g.strides, 0, 1);
  fill3(p.pad, g.pads, 0, 0);
  fill3(p.dilation, g.dilations, 0, 1);
  p.planes = x[0] * x[1];
  return p;
}

class CudaPooling final : public Kernel {
 public:
  explicit CudaPooling(Layer layer) : layer_(std::move(layer)), channels_last_(channels_last(layer_)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const PoolGeometry g = pool_geometry(layer_, static_cast<int>(in[0].dims.size()) - 2);
    launch_pooling(pool_params(g, in[0].dims, out[0].dims, channels_last_), in[0], out[0],
                   static_cast<cudaStream_t>(ctx.stream), "pooling");
  }
  std::string name() const override { return "cuda_pooling"; }

 private:
  Layer layer_;
  bool channels_last_;
};

class CudnnPooling final : public Kernel {
 public:
  explicit CudnnPooling(Layer layer) : layer_(std::move(layer)), who_(describe(layer_)) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView &x = in[0], &y = out[0];
    const PoolGeometry g = pool_geometry(layer_, static_cast<int>(x.dims.size()) - 2);
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    if (volume(y.dims) == 0) return;
    if (x.dtype == DataType::kBFloat16 || x.dtype == DataType::kInt8) {
      launch_pooling(pool_params(g, x.dims, y.dims, false), x, y, stream, "pooling");
      return;
    }
    auto handle = static_cast<cudnnHandle_t>(ctx.cudnn);
    KILN_CHECK(handle != nullptr, who_ << ": no cuDNN handle in the launch context");
    KILN_CUDNN_CHECK(cudnnSetStream(handle, stream));
    const cudnnDataType_t type = cudnn_type(x.dtype, who_);
    TensorDescriptor xd, yd;
    PoolingDescriptor pd;
    set_packed(xd, type, cudnn_dims(x.dims, who_), who_);
    set_packed(yd, type, cudnn_dims(y.dims, who_), who_);
    std::vector<int> window = cudnn_spatial(g.kernel, 1), pads = cudnn_spatial(g.pads, 0),
                     strides = cudnn_spatial(g.strides, 1);
    const cudnnPoolingMode_t mode = g.type == kPoolMax    ? CUDNN_POOLING_MAX_DETERMINISTIC
                                    : g.count_include_pad ? CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING
                                                          : CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING;
    KILN_CUDNN_CHECK(cudnnSetPoolingNdDescriptor(pd.get(), mode, CUDNN_PROPAGATE_NAN,
                                                 static_cast<int>(window.size()), window.data(), pads.data(),
                                                 strides.data()));
    const float alpha = 1.f, beta = 0.f;
    cudnnStatus_t st =
        cudnnPoolingForward(handle, pd.get(), &alpha, xd.get(), x.data, &beta, yd.get(), y.data);
    KILN_CHECK(st == CUDNN_STATUS_SUCCESS, who_ << ": cudnnPoolingForward failed for " << dtype_name(x.dtype)
                                                << " input " << to_string(x.dims) << ": "
                                                << cudnnGetErrorString(st));
  }
  std::string name() const override { return "cudnn_pooling"; }
  bool uses_cudnn() const override { return true; }

 private:
  Layer layer_;
  std::string who_;
};

class CudaAdaptivePooling final : public Kernel {
 public:
  CudaAdaptivePooling(int type, bool channels_last) : type_(type), channels_last_(channels_last) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView &x = in[0], &y = out[0];
    const Dims xd = channels_last_ ? channels_first_dims(x.dims) : x.dims;
    const Dims yd = channels_last_ ? channels_first_dims(y.dims) : y.dims;
    PoolParams p{};
    p.type = type_;
    p.adaptive = true;
    p.channels_last = channels_last_;
    p.channels = xd[1];
    fill3(p.in, xd, 2, 1);
    fill3(p.out, yd, 2, 1);
    p.planes = xd[0] * xd[1];
    if (volume(y.dims) == 0) return;
    if (p.out[0] == 1 && p.out[1] == 1 && p.out[2] == 1) {
      launch_global_pooling(p, x, y, static_cast<cudaStream_t>(ctx.stream));
      return;
    }
    launch_pooling(p, x, y, static_cast<cudaStream_t>(ctx.stream), "adaptive_pooling");
  }
  std::string name() const override { return "cuda_adaptive_pooling"; }

 private:
  int type_;
  bool channels_last_;
};

// cuDNN computes the layer exactly when no option beyond its pooling modes is set (see the top).
bool cudnn_expresses(const Layer& l) {
  if (channels_last(l)) return false;
  if (l.attrs.get_int("ceil_mode", int64_t{0}) != 0 || l.attrs.has("divisor_override")) return false;
  if (l.attrs.has("dilations")) {
    for (int64_t d : l.attrs.get_ints("dilations", describe(l))) {
      if (d != 1) return false;
    }
  }
  return true;
}

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("pooling", Backend::kCuda, [](const Layer& l) -> std::unique_ptr<Kernel> {
    if (cudnn_expresses(l)) return std::make_unique<CudnnPooling>(l);
    return std::make_unique<CudaPooling>(l);
  });
  register_kernel("adaptive_pooling", Backend::kCuda, [](const Layer& l) {
    return std::make_unique<CudaAdaptivePooling>(adaptive_pool_type(l), channels_last(l));
  });
});

}  // namespace kiln
