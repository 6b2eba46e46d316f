// CUDA quantize / dequantize / fake_quantize (see ir/ops/quantize.cpp): one thread per element
// (grid-stride), float32 math as torch's (__fmul_rn and rintf, so no contraction changes a
// rounding), the channel of a per-channel scale from the element's index. Format e4m3 (FP8, per
// tensor): x * (1 / scale) converted by __nv_cvt_float_to_fp8 (nearest even, saturated to +-448:
// ir/float8.h's rounding), eight elements per thread (vector loads) where size and alignment allow;
// so does the per-tensor integer quantize.
// The narrow formats of fake_quantize round with ir/minifloat.h's function, shared with the
// reference backend.
#include <cuda_fp8.h>

#include <cmath>

#include "ir/minifloat.h"
#include "ir/op_schema.h"
#include "ir/ops/quantize.h"
#include "kernels/cuda/activation_math.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"

namespace kiln {
namespace {

constexpr int kBlock = 256;
enum Mode : int { kQuantize, kDequantize, kFakeQuantize };

struct QuantGeometry {
  int64_t n = 0;
  int64_t inner = 1, channels = 1;  // per channel: channel of element i = (i / inner) % channels
  bool per_channel = false;
  float lo = -128.f, hi = 127.f;
  bool has_inv = false;
  float inv = 0.f;
  bool minifloat = false;  // fake_quantize to a narrow floating format
  bool saturate = true;
  Minifloat format;
};

__device__ __forceinline__ float load_float(const int8_t v) { return static_cast<float>(v); }
template <typename T>
__device__ __forceinline__ float load_float(const T v) {
  return to_float(v);
}

template <typename Z>
__device__ __forceinline__ float zero_point(const Z* zp, int64_t c) {
  return zp ? static_cast<float>(zp[c]) : 0.f;
}

// q = clamp(rint(x * inv) + zp, lo, hi) as a float (exact: |q| < 2^24); NaN goes to lo.
__device__ __forceinline__ float quantized(float x, float inv, float zp, float lo, float hi) {
  const float r = rintf(__fmul_rn(x, inv));
  if (r != r) return lo;
  return fminf(fmaxf(r + zp, lo), hi);
}

template <int kMode, typename In, typename Out, typename Z>
__global__ void quantize_kernel(QuantGeometry g, const In* __restrict__ x, const float* __restrict__ scale,
                                const Z* __restrict__ zp, Out* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < g.n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = g.per_channel ? (i / g.inner) % g.channels : 0;
    const float s = scale[c], z = zero_point(zp, c), v = load_float(x[i]);
    if constexpr (kMode == kDequantize) {
      y[i] = from_float<Out>(__fmul_rn(v - z, s));
    } else {
      const float inv = g.has_inv ? g.inv : __frcp_rn(s);
      if constexpr (kMode == kFakeQuantize) {
        if (g.minifloat) {
          y[i] = from_float<Out>(__fmul_rn(round_minifloat(__fmul_rn(v, inv), g.format, g.saturate), s));
          continue;
        }
      }
      const float q = quantized(v, inv, z, g.lo, g.hi);
      if constexpr (kMode == kQuantize) {
        y[i] = static_cast<int8_t>(q);
      } else {
        y[i] = from_float<Out>(__fmul_rn(q - z, s));
      }
    }
  }
}

__device__ __forceinline__ uint8_t to_e4m3(float v) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}
__device__ __forceinline__ float from_e4m3(uint8_t b) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b), __NV_E4M3)));
}

// FP8 (format e4m3): kVec elements per thread with one vector load and store (n % kVec == 0,
// pointers aligned), float8 stored as uint8_t.
template <int kMode, int kVec, typename In, typename Out>
__global__ void e4m3_kernel(int64_t n, bool has_inv, float inv_attr, const In* __restrict__ x,
                            const float* __restrict__ scale, Out* __restrict__ y) {
  const float s = scale[0], inv = has_inv ? inv_attr : __frcp_rn(s);
  for (int64_t i = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * kVec; i < n;
       i += int64_t{gridDim.x} * blockDim.x * kVec) {
    const Pack<In, kVec> in = *reinterpret_cast<const Pack<In, kVec>*>(x + i);
    Pack<Out, kVec> out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if constexpr (kMode == kDequantize) {
        out.v[j] = from_float<Out>(__fmul_rn(from_e4m3(in.v[j]), s));
      } else if constexpr (kMode == kQuantize) {
        out.v[j] = to_e4m3(__fmul_rn(to_float(in.v[j]), inv));
      } else {
        out.v[j] = from_float<Out>(__fmul_rn(from_e4m3(to_e4m3(__fmul_rn(to_float(in.v[j]), inv))), s));
      }
    }
    *reinterpret_cast<Pack<Out, kVec>*>(y + i) = out;
  }
}

// Integer quantize with one scale and zero point (per tensor): kVec elements per thread with one
// vector load and store (n % kVec == 0, pointers aligned); the same arithmetic as quantize_kernel.
// The INT8 convolutions' inputs are quantized here.
template <int kVec, typename In, typename Z>
__global__ void quantize_per_tensor_kernel(QuantGeometry g, const In* __restrict__ x,
                                           const float* __restrict__ scale, const Z* __restrict__ zp,
                                           int8_t* __restrict__ y) {
  const float s = scale[0], z = zero_point(zp, 0), inv = g.has_inv ? g.inv : __frcp_rn(s);
  for (int64_t i = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * kVec; i < g.n;
       i += int64_t{gridDim.x} * blockDim.x * kVec) {
    const Pack<In, kVec> in = *reinterpret_cast<const Pack<In, kVec>*>(x + i);
    Pack<int8_t, kVec> out;
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      out.v[j] = static_cast<int8_t>(quantized(load_float(in.v[j]), inv, z, g.lo, g.hi));
    *reinterpret_cast<Pack<int8_t, kVec>*>(y + i) = out;
  }
}

template <int kMode, typename In, typename Out>
void launch_e4m3(int64_t n, const QuantParams& p, const void* x, const float* scale, void* y,
                 cudaStream_t stream) {
  const auto* xi = static_cast<const In*>(x);
  auto* yo = static_cast<Out*>(y);
  constexpr int kVec = 8;
  const bool aligned = reinterpret_cast<uintptr_t>(x) % (kVec * sizeof(In)) == 0 &&
                       reinterpret_cast<uintptr_t>(y) % (kVec * sizeof(Out)) == 0;
  if (n % kVec == 0 && aligned) {
    e4m3_kernel<kMode, kVec, In, Out>
        <<<grid_for(n / kVec, kBlock), kBlock, 0, stream>>>(n, p.has_inv_scale, p.inv_scale, xi, scale, yo);
  } else {
    e4m3_kernel<kMode, 1, In, Out>
        <<<grid_for(n, kBlock), kBlock, 0, stream>>>(n, p.has_inv_scale, p.inv_scale, xi, scale, yo);
  }
}

template <typename F>
void dispatch_zero_point(const std::vector<TensorView>& in, F&& f) {
  if (in.size() < 3) {
    f(static_cast<const int32_t*>(nullptr));
  } else if (in[2].dtype == DataType::kInt32) {
    f(static_cast<const int32_t*>(in[2].data));
  } else {
    f(static_cast<const int64_t*>(in[2].data));
  }
}

class CudaQuantization final : public Kernel {
 public:
  explicit CudaQuantization(const Layer& l)
      : layer_(l),
        mode_(l.op == "quantize"     ? kQuantize
              : l.op == "dequantize" ? kDequantize
                                     : kFakeQuantize) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView& x = in[0];
    const int64_t count = volume(in[1].dims);
    const QuantParams p = quant_params(layer_, x.dims.size(), count);
    QuantGeometry g;
    g.n = volume(x.dims);
    if (g.n == 0) return;
    if (p.e4m3) return run_e4m3(p, g.n, in, out, static_cast<cudaStream_t>(ctx.stream));
    g.per_channel = p.per_channel;
    g.channels = count;
    if (p.per_channel) {
      KILN_CHECK(x.dims[static_cast<size_t>(p.axis)] == count,
                 describe(layer_) << ": " << count << " per-channel scales for a dim of "
                                  << x.dims[static_cast<size_t>(p.axis)]);
      for (size_t d = static_cast<size_t>(p.axis) + 1; d < x.dims.size(); ++d) g.inner *= x.dims[d];
    }
    g.lo = static_cast<float>(p.quant_min), g.hi = static_cast<float>(p.quant_max);
    g.has_inv = p.has_inv_scale, g.inv = p.inv_scale;
    g.minifloat = p.minifloat, g.saturate = p.saturate, g.format = p.format;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    const unsigned grid = grid_for(g.n, kBlock);
    const float* scale = static_cast<const float*>(in[1].data);
    const std::string who = describe(layer_);
    dispatch_zero_point(in, [&](auto zp) {
      using Z = std::remove_cv_t<std::remove_pointer_t<decltype(zp)>>;
      if (mode_ == kDequantize) {
        dispatch_floating(out[0].dtype, who.c_str(), [&](auto o) {
          using Out = decltype(o);
          quantize_kernel<kDequantize, int8_t, Out, Z><<<grid, kBlock, 0, stream>>>(
              g, static_cast<const int8_t*>(x.data), scale, zp, static_cast<Out*>(out[0].data));
        });
      } else {
        dispatch_floating(x.dtype, who.c_str(), [&](auto t) {
          using In = decltype(t);
          constexpr int kVec = 8;
          const bool vector = !g.per_channel && g.n % kVec == 0 &&
                              reinterpret_cast<uintptr_t>(x.data) % (kVec * sizeof(In)) == 0 &&
                              reinterpret_cast<uintptr_t>(out[0].data) % kVec == 0;
          if (mode_ == kQuantize && vector) {
            quantize_per_tensor_kernel<kVec, In, Z><<<grid_for(g.n / kVec, kBlock), kBlock, 0, stream>>>(
                g, static_cast<const In*>(x.data), scale, zp, static_cast<int8_t*>(out[0].data));
          } else if (mode_ == kQuantize) {
            quantize_kernel<kQuantize, In, int8_t, Z><<<grid, kBlock, 0, stream>>>(
                g, static_cast<const In*>(x.data), scale, zp, static_cast<int8_t*>(out[0].data));
          } else {
            quantize_kernel<kFakeQuantize, In, In, Z><<<grid, kBlock, 0, stream>>>(
                g, static_cast<const In*>(x.data), scale, zp, static_cast<In*>(out[0].data));
          }
        });
      }
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_" + layer_.op; }

 private:
  void run_e4m3(const QuantParams& p, int64_t n, const std::vector<TensorView>& in,
                const std::vector<TensorView>& out, cudaStream_t stream) const {
    const float* scale = static_cast<const float*>(in[1].data);
    const std::string who = describe(layer_);
    if (mode_ == kDequantize) {
      dispatch_floating(out[0].dtype, who.c_str(), [&](auto o) {
        launch_e4m3<kDequantize, uint8_t, decltype(o)>(n, p, in[0].data, scale, out[0].data, stream);
      });
    } else {
      dispatch_floating(in[0].dtype, who.c_str(), [&](auto t) {
        using In = decltype(t);
        if (mode_ == kQuantize) {
          launch_e4m3<kQuantize, In, uint8_t>(n, p, in[0].data, scale, out[0].data, stream);
        } else {
          launch_e4m3<kFakeQuantize, In, In>(n, p, in[0].data, scale, out[0].data, stream);
        }
      });
    }
    KILN_CUDA_CHECK_LAUNCH();
  }

  Layer layer_;
  int mode_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  for (const char* op : {"quantize", "dequantize", "fake_quantize"}) {
    register_kernel(op, Backend::kCuda, [](const Layer& l) { return std::make_unique<CudaQuantization>(l); });
  }
});

}  // namespace kiln
