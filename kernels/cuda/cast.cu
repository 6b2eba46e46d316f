// cast: one templated kernel per (source, destination) dtype pair, dispatched on both dtypes.
// Conversions follow torch: floating -> integer truncates, -> bool is != 0, integers reach
// float16/bfloat16 through float32 (one rounding each step, as torch's c10::Half(float(x))).
#include <type_traits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"

namespace kiln {
namespace {

// Device element types: bool is stored as uint8_t and int8 as int8_t, so each dtype is distinct.
template <typename T>
constexpr bool kHalfLike = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

template <typename S>
__device__ __forceinline__ float as_float(S s) {
  if constexpr (kHalfLike<S>) {
    return to_float(s);
  } else if constexpr (std::is_same_v<S, uint8_t>) {
    return s != 0 ? 1.f : 0.f;
  } else {
    return static_cast<float>(s);  // int64 -> float rounds once (cvt.rn)
  }
}

template <typename D, typename S>
__device__ __forceinline__ D convert(S s) {
  if constexpr (std::is_same_v<D, uint8_t>) {
    if constexpr (kHalfLike<S> || std::is_same_v<S, float>) {
      return as_float(s) != 0.f;  // NaN -> true, as in torch
    } else {
      return s != 0;
    }
  } else if constexpr (std::is_floating_point_v<D> || kHalfLike<D>) {
    return from_float<D>(as_float(s));
  } else if constexpr (kHalfLike<S> || std::is_same_v<S, float>) {
    return static_cast<D>(as_float(s));  // truncates toward zero
  } else if constexpr (std::is_same_v<S, uint8_t>) {
    return static_cast<D>(s != 0);
  } else {
    return static_cast<D>(s);  // integer -> integer wraps
  }
}

template <typename S, typename D>
__global__ void cast_kernel(const S* __restrict__ x, D* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = convert<D>(x[i]);
  }
}

// Calls f(T{}) with T the device element type of `t`.
template <typename F>
void dispatch_any(DataType t, F&& f) {
  switch (t) {
    case DataType::kFloat32:
      return f(float{});
    case DataType::kFloat16:
      return f(__half{});
    case DataType::kBFloat16:
      return f(__nv_bfloat16{});
    case DataType::kInt32:
      return f(int32_t{});
    case DataType::kInt64:
      return f(int64_t{});
    case DataType::kBool:
      return f(uint8_t{});
    case DataType::kInt8:
      return f(int8_t{});
  }
  KILN_FAIL("cast: no CUDA kernel for dtype " << dtype_name(t));
}

class CudaCast final : public Kernel {
 public:
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const int64_t n = volume(in[0].dims);
    if (n == 0) return;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    if (in[0].dtype == out[0].dtype) {
      KILN_CUDA_CHECK(cudaMemcpyAsync(out[0].data, in[0].data,
                                      static_cast<size_t>(n) * dtype_size(in[0].dtype),
                                      cudaMemcpyDeviceToDevice, stream));
      return;
    }
    constexpr int kBlock = 256;
    dispatch_any(in[0].dtype, [&](auto src_tag) {
      using S = decltype(src_tag);
      dispatch_any(out[0].dtype, [&](auto dst_tag) {
        using D = decltype(dst_tag);
        cast_kernel<S, D><<<grid_for(n, kBlock), kBlock, 0, stream>>>(static_cast<const S*>(in[0].data),
                                                                      static_cast<D*>(out[0].data), n);
      });
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_cast"; }
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("cast", Backend::kCuda, [](const Layer&) { return std::make_unique<CudaCast>(); });
});

}  // namespace kiln
