// arange and fill. Element counts come from the output shape; shape-carrying inputs are not read
// (their values were known on the host when the shapes were inferred).
#include "ir/ops/generate.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"
#include "kernels/scalar_bytes.h"

namespace kiln {
namespace {

// Floating dtypes: start + step * i in double, rounded to float32 and then to T (as the
// reference backend does). Integer dtypes: exact int64 arithmetic, then the dtype's width.
template <typename T>
__global__ void arange_float(double start, double step, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = from_float<T>(static_cast<float>(start + step * static_cast<double>(i)));
  }
}

template <typename T>
__global__ void arange_int(int64_t start, int64_t step, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = static_cast<T>(start + step * i);
  }
}

template <typename U>
__global__ void fill_kernel(U value, U* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = value;
  }
}

constexpr int kBlock = 256;

class CudaArange final : public Kernel {
 public:
  explicit CudaArange(ArangeParams p) : p_(p) {}
  void run(const std::vector<TensorView>&, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const int64_t n = volume(out[0].dims);
    if (n == 0) return;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    const unsigned grid = grid_for(n, kBlock);
    switch (out[0].dtype) {
      case DataType::kInt64:
        arange_int<<<grid, kBlock, 0, stream>>>(p_.start_int, p_.step_int, static_cast<int64_t*>(out[0].data),
                                                n);
        break;
      case DataType::kInt32:
        arange_int<<<grid, kBlock, 0, stream>>>(p_.start_int, p_.step_int, static_cast<int32_t*>(out[0].data),
                                                n);
        break;
      default:
        dispatch_floating(out[0].dtype, "arange", [&](auto tag) {
          using T = decltype(tag);
          arange_float<<<grid, kBlock, 0, stream>>>(p_.start, p_.step, static_cast<T*>(out[0].data), n);
        });
    }
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_arange"; }

 private:
  ArangeParams p_;
};

class CudaFill final : public Kernel {
 public:
  explicit CudaFill(const FillParams& p) : bits_(encode_scalar(p.dtype, p.value, p.int_value)) {}
  void run(const std::vector<TensorView>&, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const int64_t n = volume(out[0].dims);
    if (n == 0) return;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    const unsigned grid = grid_for(n, kBlock);
    switch (dtype_size(out[0].dtype)) {
      case 1:
        fill_kernel<<<grid, kBlock, 0, stream>>>(static_cast<uint8_t>(bits_),
                                                 static_cast<uint8_t*>(out[0].data), n);
        break;
      case 2:
        fill_kernel<<<grid, kBlock, 0, stream>>>(static_cast<uint16_t>(bits_),
                                                 static_cast<uint16_t*>(out[0].data), n);
        break;
      case 4:
        fill_kernel<<<grid, kBlock, 0, stream>>>(static_cast<uint32_t>(bits_),
                                                 static_cast<uint32_t*>(out[0].data), n);
        break;
      default:
        fill_kernel<<<grid, kBlock, 0, stream>>>(bits_, static_cast<uint64_t*>(out[0].data), n);
    }
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_fill"; }

 private:
  uint64_t bits_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("arange", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaArange>(arange_params(l)); });
  register_kernel("fill", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaFill>(fill_params(l)); });
});

}  // namespace kiln
