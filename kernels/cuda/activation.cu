// Activations, one thread per element (grid-stride), math in float with the accurate (non-
// intrinsic) functions. Codes follow activation_types() in core/ops/activation.cpp.
#include <algorithm>

#include "core/ops/activation.h"
#include "kernels/cuda/activation_math.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"
#include "kernels/kernels.h"

namespace kiln {
namespace {

template <typename T>
__global__ void activation_kernel(ActivationParams p, const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = from_float<T>(activate(p, to_float(x[i])));
  }
}

class CudaActivation final : public Kernel {
 public:
  CudaActivation(ActivationParams params, std::string type_name)
      : params_(params), type_name_(std::move(type_name)) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    int64_t n = volume(in[0].dims);
    if (n == 0) return;
    constexpr int kBlock = 256;
    dispatch_floating(in[0].dtype, "activation", [&](auto tag) {
      using T = decltype(tag);
      activation_kernel<T><<<grid_for(n, kBlock), kBlock, 0, static_cast<cudaStream_t>(ctx.stream)>>>(
          params_, static_cast<const T*>(in[0].data), static_cast<T*>(out[0].data), n);
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_" + type_name_; }

 private:
  ActivationParams params_;
  std::string type_name_;
};

}  // namespace

void register_activation_cuda_kernel() {
  register_kernel("activation", Backend::kCuda, [](const Layer& l) {
    std::string type = l.attrs.get_string("type", l.name);
    ActivationParams p;
    p.type = variant_code(activation_types(), type);
    p.alpha = static_cast<float>(l.attrs.get_float("alpha", type == "clip"  ? 0.0
                                                            : type == "elu" ? 1.0
                                                                            : 0.01));
    p.beta = static_cast<float>(l.attrs.get_float("beta", 1.0));
    p.threshold = static_cast<float>(l.attrs.get_float("threshold", 20.0));
    return std::make_unique<CudaActivation>(p, type);
  });
}

}  // namespace kiln
