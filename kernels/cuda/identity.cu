#include "kernels/cuda/cuda_check.h"
#include "kernels/kernel.h"

namespace kiln {
namespace {

class CudaIdentity final : public Kernel {
 public:
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    size_t bytes = static_cast<size_t>(volume(in[0].dims)) * dtype_size(in[0].dtype);
    if (bytes == 0 || in[0].data == out[0].data) return;
    KILN_CUDA_CHECK(cudaMemcpyAsync(out[0].data, in[0].data, bytes, cudaMemcpyDeviceToDevice,
                                    static_cast<cudaStream_t>(ctx.stream)));
  }
  std::string name() const override { return "cuda_copy"; }
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("identity", Backend::kCuda, [](const Layer&) { return std::make_unique<CudaIdentity>(); });
});

}  // namespace kiln
