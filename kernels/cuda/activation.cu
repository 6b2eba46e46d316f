// Activations, elementwise (grid-stride), math in float with the accurate (non-intrinsic)
// functions of activation_math.cuh. 16-byte aligned tensors take a vectorized loop (16-byte loads
// and stores) with a scalar tail.
#include <algorithm>

#include "ir/ops/activation.h"
#include "kernels/cuda/activation_math.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"

namespace kiln {
namespace {

template <typename T>
__global__ void activation_vec_kernel(ActivationParams p, const Vec16<T>* __restrict__ x,
                                      Vec16<T>* __restrict__ y, int64_t nvec) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < nvec;
       i += int64_t{gridDim.x} * blockDim.x) {
    Vec16<T> v = x[i];
#pragma unroll
    for (int j = 0; j < Vec16<T>::kSize; ++j) v.v[j] = from_float<T>(activate(p, to_float(v.v[j])));
    y[i] = v;
  }
}

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
      auto stream = static_cast<cudaStream_t>(ctx.stream);
      auto* x = static_cast<const T*>(in[0].data);
      auto* y = static_cast<T*>(out[0].data);
      int64_t done = 0;
      if (aligned16(x) && aligned16(y)) {
        const int64_t nvec = n / Vec16<T>::kSize;
        if (nvec > 0) {
          activation_vec_kernel<T><<<grid_for(nvec, kBlock), kBlock, 0, stream>>>(
              params_, reinterpret_cast<const Vec16<T>*>(x), reinterpret_cast<Vec16<T>*>(y), nvec);
        }
        done = nvec * Vec16<T>::kSize;
      }
      if (done < n) {
        activation_kernel<T>
            <<<grid_for(n - done, kBlock), kBlock, 0, stream>>>(params_, x + done, y + done, n - done);
      }
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_" + type_name_; }

 private:
  ActivationParams params_;
  std::string type_name_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("activation", Backend::kCuda, [](const Layer& l) {
    std::string type = l.attrs.get_string("type", l.name);
    return std::make_unique<CudaActivation>(activation_params(type, l.attrs), type);
  });
});

}  // namespace kiln
