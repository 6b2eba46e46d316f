// where: y = cond ? a : b with broadcasting. The op only moves elements, so the kernel is
// instantiated per element size (1, 2, 4, 8 bytes), which covers every dtype; same-shape
// operands take a path without index arithmetic.
#include "kernels/broadcast.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"

namespace kiln {
namespace {

template <typename U>
__global__ void where_same_shape(const uint8_t* __restrict__ cond, const U* __restrict__ a,
                                 const U* __restrict__ b, U* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = cond[i] ? a[i] : b[i];
  }
}

template <typename U>
__global__ void where_broadcast(const uint8_t* __restrict__ cond, BroadcastIndexer ic,
                                const U* __restrict__ a, BroadcastIndexer ia, const U* __restrict__ b,
                                BroadcastIndexer ib, U* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t oc = 0, oa = 0, ob = 0, rem = i;
    for (int d = ic.rank - 1; d >= 0; --d) {
      int64_t idx = rem % ic.out_dims[d];
      rem /= ic.out_dims[d];
      oc += idx * ic.in_strides[d];
      oa += idx * ia.in_strides[d];
      ob += idx * ib.in_strides[d];
    }
    y[i] = cond[oc] ? a[oa] : b[ob];
  }
}

class CudaWhere final : public Kernel {
 public:
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    switch (dtype_size(out[0].dtype)) {
      case 1:
        return launch<uint8_t>(in, out, ctx);
      case 2:
        return launch<uint16_t>(in, out, ctx);
      case 4:
        return launch<uint32_t>(in, out, ctx);
      default:
        return launch<uint64_t>(in, out, ctx);
    }
  }
  std::string name() const override { return "cuda_where"; }

 private:
  template <typename U>
  void launch(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
              const LaunchContext& ctx) const {
    const int64_t n = volume(out[0].dims);
    if (n == 0) return;
    constexpr int kBlock = 256;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    const auto* cond = static_cast<const uint8_t*>(in[0].data);
    const U* a = static_cast<const U*>(in[1].data);
    const U* b = static_cast<const U*>(in[2].data);
    U* y = static_cast<U*>(out[0].data);
    const Dims& o = out[0].dims;
    if (in[0].dims == o && in[1].dims == o && in[2].dims == o) {
      where_same_shape<U><<<grid_for(n, kBlock), kBlock, 0, stream>>>(cond, a, b, y, n);
    } else {
      where_broadcast<U><<<grid_for(n, kBlock), kBlock, 0, stream>>>(
          cond, make_broadcast_indexer(in[0].dims, o), a, make_broadcast_indexer(in[1].dims, o), b,
          make_broadcast_indexer(in[2].dims, o), y, n);
    }
    KILN_CUDA_CHECK_LAUNCH();
  }
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("where", Backend::kCuda, [](const Layer&) { return std::make_unique<CudaWhere>(); });
});

}  // namespace kiln
