// Unary math, one thread per element (grid-stride). Floating types compute in float; abs, neg,
// sign on int32/int64 and not on bool compute in their own type. Codes follow unary_ops().
#include <algorithm>

#include "ir/ops/unary.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"

namespace kiln {
namespace {

enum UnaryOp : int {
  kExp,
  kLog,
  kSqrt,
  kRsqrt,
  kAbs,
  kNeg,
  kErf,
  kSin,
  kCos,
  kFloor,
  kCeil,
  kRound,
  kReciprocal,
  kSign,
  kNot,
  kTan,
  kAsin,
  kAcos,
  kAtan,
  kSinh,
  kCosh,
  kAsinh,
  kAcosh,
  kAtanh,
  kExpm1,
  kLog1p,
  kLog2,
  kLog10
};

__device__ __forceinline__ float unary_float(int op, float x) {
  switch (op) {
    case kExp:
      return expf(x);
    case kLog:
      return logf(x);
    case kSqrt:
      return sqrtf(x);
    case kRsqrt:
      return 1.f / sqrtf(x);
    case kAbs:
      return fabsf(x);
    case kNeg:
      return -x;
    case kErf:
      return erff(x);
    case kSin:
      return sinf(x);
    case kCos:
      return cosf(x);
    case kFloor:
      return floorf(x);
    case kCeil:
      return ceilf(x);
    case kRound:
      return rintf(x);  // half to even
    case kReciprocal:
      return 1.f / x;
    case kTan:
      return tanf(x);
    case kAsin:
      return asinf(x);
    case kAcos:
      return acosf(x);
    case kAtan:
      return atanf(x);
    case kSinh:
      return sinhf(x);
    case kCosh:
      return coshf(x);
    case kAsinh:
      return asinhf(x);
    case kAcosh:
      return acoshf(x);
    case kAtanh:
      return atanhf(x);
    case kExpm1:
      return expm1f(x);
    case kLog1p:
      return log1pf(x);
    case kLog2:
      return log2f(x);
    case kLog10:
      return log10f(x);
    default:  // kSign (kNot runs its own kernel)
      return static_cast<float>((x > 0.f) - (x < 0.f));
  }
}

template <typename T>
__global__ void unary_float_kernel(int op, const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = from_float<T>(unary_float(op, to_float(x[i])));
  }
}

template <typename T>
__global__ void unary_int_kernel(int op, const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    T v = x[i];
    y[i] = op == kAbs ? (v < 0 ? -v : v) : op == kNeg ? -v : static_cast<T>((v > 0) - (v < 0));
  }
}

__global__ void not_kernel(const uint8_t* __restrict__ x, uint8_t* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = x[i] == 0;
  }
}

class CudaUnary final : public Kernel {
 public:
  CudaUnary(int op, std::string op_name) : op_(op), op_name_(std::move(op_name)) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    int64_t n = volume(in[0].dims);
    if (n == 0) return;
    constexpr int kBlock = 256;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    unsigned grid = grid_for(n, kBlock);
    DataType t = in[0].dtype;
    if (t == DataType::kBool) {
      not_kernel<<<grid, kBlock, 0, stream>>>(static_cast<const uint8_t*>(in[0].data),
                                              static_cast<uint8_t*>(out[0].data), n);
    } else if (t == DataType::kInt32) {
      unary_int_kernel<int32_t><<<grid, kBlock, 0, stream>>>(op_, static_cast<const int32_t*>(in[0].data),
                                                             static_cast<int32_t*>(out[0].data), n);
    } else if (t == DataType::kInt64) {
      unary_int_kernel<int64_t><<<grid, kBlock, 0, stream>>>(op_, static_cast<const int64_t*>(in[0].data),
                                                             static_cast<int64_t*>(out[0].data), n);
    } else {
      dispatch_floating(t, "unary", [&](auto tag) {
        using T = decltype(tag);
        unary_float_kernel<T><<<grid, kBlock, 0, stream>>>(op_, static_cast<const T*>(in[0].data),
                                                           static_cast<T*>(out[0].data), n);
      });
    }
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_" + op_name_; }

 private:
  int op_;
  std::string op_name_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("unary", Backend::kCuda, [](const Layer& l) {
    std::string op = l.attrs.get_string("op", l.name);
    return std::make_unique<CudaUnary>(variant_code(unary_ops(), op), op);
  });
});

}  // namespace kiln
