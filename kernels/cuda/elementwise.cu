// Elementwise binary ops with broadcasting. One thread per output element (grid-stride);
// same-shape operands take a path without index arithmetic. Math in float for float16/bfloat16.
#include <algorithm>

#include "core/ops/elementwise.h"
#include "kernels/broadcast.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"
#include "kernels/kernels.h"

namespace kiln {
namespace {

enum BinaryOp : int { kAdd, kSub, kMul, kDiv, kMax, kMin, kPow };

template <typename C>
__device__ __forceinline__ C apply_op(int op, C a, C b) {
  switch (op) {
    case kAdd:
      return a + b;
    case kSub:
      return a - b;
    case kMul:
      return a * b;
    case kDiv:
      return a / b;
    case kMax:
      return a > b ? a : b;
    case kMin:
      return a < b ? a : b;
    default:
      return static_cast<C>(pow(static_cast<double>(a), static_cast<double>(b)));
  }
}

template <>
__device__ __forceinline__ float apply_op<float>(int op, float a, float b) {
  switch (op) {
    case kAdd:
      return a + b;
    case kSub:
      return a - b;
    case kMul:
      return a * b;
    case kDiv:
      return a / b;
    case kMax:
      return fmaxf(a, b);
    case kMin:
      return fminf(a, b);
    default:
      return powf(a, b);
  }
}

template <typename T>
struct Compute {
  using type = T;  // integers compute in their own type
};
template <>
struct Compute<__half> {
  using type = float;
};
template <>
struct Compute<__nv_bfloat16> {
  using type = float;
};

template <typename T>
__device__ __forceinline__ typename Compute<T>::type load_c(T x) {
  return x;
}
template <>
__device__ __forceinline__ float load_c<__half>(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float load_c<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T store_c(typename Compute<T>::type x) {
  return static_cast<T>(x);
}
template <>
__device__ __forceinline__ __half store_c<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 store_c<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename T>
__global__ void binary_same_shape(int op, const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y,
                                  int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = store_c<T>(apply_op(op, load_c(a[i]), load_c(b[i])));
  }
}

template <typename T>
__global__ void binary_broadcast(int op, const T* __restrict__ a, BroadcastIndexer ia,
                                 const T* __restrict__ b, BroadcastIndexer ib, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t oa = 0, ob = 0, rem = i;
    for (int d = ia.rank - 1; d >= 0; --d) {
      int64_t idx = rem % ia.out_dims[d];
      rem /= ia.out_dims[d];
      oa += idx * ia.in_strides[d];
      ob += idx * ib.in_strides[d];
    }
    y[i] = store_c<T>(apply_op(op, load_c(a[oa]), load_c(b[ob])));
  }
}

class CudaElementwise final : public Kernel {
 public:
  CudaElementwise(int op, std::string op_name) : op_(op), op_name_(std::move(op_name)) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    switch (out[0].dtype) {
      case DataType::kFloat32:
        return launch<float>(in, out, ctx);
      case DataType::kFloat16:
        return launch<__half>(in, out, ctx);
      case DataType::kBFloat16:
        return launch<__nv_bfloat16>(in, out, ctx);
      case DataType::kInt32:
        return launch<int32_t>(in, out, ctx);
      case DataType::kInt64:
        return launch<int64_t>(in, out, ctx);
      default:
        KILN_FAIL("elementwise: no CUDA kernel for dtype " << dtype_name(out[0].dtype));
    }
  }
  std::string name() const override { return "cuda_elementwise_" + op_name_; }

 private:
  template <typename T>
  void launch(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
              const LaunchContext& ctx) const {
    int64_t n = volume(out[0].dims);
    if (n == 0) return;
    constexpr int kBlock = 256;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    const T* a = static_cast<const T*>(in[0].data);
    const T* b = static_cast<const T*>(in[1].data);
    T* y = static_cast<T*>(out[0].data);
    if (in[0].dims == out[0].dims && in[1].dims == out[0].dims) {
      binary_same_shape<T><<<grid_for(n, kBlock), kBlock, 0, stream>>>(op_, a, b, y, n);
    } else {
      binary_broadcast<T><<<grid_for(n, kBlock), kBlock, 0, stream>>>(
          op_, a, make_broadcast_indexer(in[0].dims, out[0].dims), b,
          make_broadcast_indexer(in[1].dims, out[0].dims), y, n);
    }
    KILN_CUDA_CHECK_LAUNCH();
  }

  int op_;
  std::string op_name_;
};

}  // namespace

void register_elementwise_cuda_kernel() {
  register_kernel("elementwise", Backend::kCuda, [](const Layer& l) {
    std::string op = l.attrs.get_string("op", l.name);
    const auto& ops = elementwise_ops();
    int code = static_cast<int>(std::find(ops.begin(), ops.end(), op) - ops.begin());
    return std::make_unique<CudaElementwise>(code, op);
  });
}

}  // namespace kiln
