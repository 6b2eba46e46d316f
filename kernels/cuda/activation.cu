// Activations, one thread per element (grid-stride), math in float.
#include <algorithm>

#include "core/ops/activation.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"
#include "kernels/kernels.h"

namespace kiln {
namespace {

enum ActivationType : int { kRelu, kSigmoid, kTanh, kLeakyRelu };

__device__ __forceinline__ float activate(int type, float x, float alpha) {
  switch (type) {
    case kRelu:
      return x > 0.f ? x : 0.f;
    case kSigmoid:
      return 1.f / (1.f + __expf(-x));
    case kTanh:
      return tanhf(x);
    default:
      return x >= 0.f ? x : alpha * x;
  }
}

template <typename T>
__global__ void activation_kernel(int type, float alpha, const T* __restrict__ x, T* __restrict__ y,
                                  int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = from_float<T>(activate(type, to_float(x[i]), alpha));
  }
}

class CudaActivation final : public Kernel {
 public:
  CudaActivation(int type, std::string type_name, float alpha)
      : type_(type), type_name_(std::move(type_name)), alpha_(alpha) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    int64_t n = volume(in[0].dims);
    if (n == 0) return;
    constexpr int kBlock = 256;
    dispatch_floating(in[0].dtype, "activation", [&](auto tag) {
      using T = decltype(tag);
      activation_kernel<T><<<grid_for(n, kBlock), kBlock, 0, static_cast<cudaStream_t>(ctx.stream)>>>(
          type_, alpha_, static_cast<const T*>(in[0].data), static_cast<T*>(out[0].data), n);
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_" + type_name_; }

 private:
  int type_;
  std::string type_name_;
  float alpha_;
};

}  // namespace

void register_activation_cuda_kernel() {
  register_kernel("activation", Backend::kCuda, [](const Layer& l) {
    std::string type = l.attrs.get_string("type", l.name);
    const auto& types = activation_types();
    int code = static_cast<int>(std::find(types.begin(), types.end(), type) - types.begin());
    return std::make_unique<CudaActivation>(code, type, static_cast<float>(l.attrs.get_float("alpha", 0.0)));
  });
}

}  // namespace kiln
