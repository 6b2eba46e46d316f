// Elementwise binary ops with broadcasting. One thread per output element (grid-stride);
// same-shape operands take a path without index arithmetic. Math in float for float16/bfloat16.
#include <algorithm>
#include <type_traits>

#include "ir/ops/elementwise.h"
#include "kernels/broadcast.h"
#include "kernels/cuda/activation_math.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"

namespace kiln {
namespace {

enum BinaryOp : int {
  kAdd,
  kSub,
  kMul,
  kDiv,
  kFloorDiv,
  kPow,
  kMax,
  kMin,
  kEq,
  kNe,
  kLt,
  kLe,
  kGt,
  kGe,
  kAnd,
  kOr,
  kXor,
  kAtan2  // floating only (the schema refuses integers)
};

// Exact integer power by squaring (a double pow can land just below an integer and truncate).
// Negative exponents follow integer division: only |a| == 1 gives a non-zero result.
template <typename C>
__device__ __forceinline__ C int_pow(C a, C b) {
  if (b < 0) return a == 1 ? 1 : a == -1 ? ((b & 1) ? -1 : 1) : 0;
  C r = 1;
  while (b) {
    if (b & 1) r *= a;
    a *= a;
    b >>= 1;
  }
  return r;
}

// Arithmetic in the compute type C (float for floating dtypes, the integer type otherwise).
template <typename C>
__device__ __forceinline__ C arith(int op, C a, C b) {
  switch (op) {
    case kAdd:
      return a + b;
    case kSub:
      return a - b;
    case kMul:
      return a * b;
    case kDiv:
      return a / b;
    case kFloorDiv: {
      C q = a / b;  // truncated; step down when the remainder's sign differs from the divisor's
      return (a % b != 0 && ((a % b < 0) != (b < 0))) ? q - 1 : q;
    }
    case kMax:
      return a > b ? a : b;
    case kMin:
      return a < b ? a : b;
    default:
      return int_pow(a, b);
  }
}

template <>
__device__ __forceinline__ float arith<float>(int op, float a, float b) {
  switch (op) {
    case kAdd:
      return a + b;
    case kSub:
      return a - b;
    case kMul:
      return a * b;
    case kDiv:
      return a / b;
    case kFloorDiv:
      return floorf(a / b);
    case kMax:  // NaN on either side gives NaN (torch.maximum); fmaxf would drop it
      return a < b || b != b ? b : a;
    case kMin:
      return a > b || b != b ? b : a;
    case kAtan2:
      return atan2f(a, b);
    default:
      return powf(a, b);
  }
}

template <typename C>
__device__ __forceinline__ bool compare(int op, C a, C b) {
  switch (op) {
    case kEq:
      return a == b;
    case kNe:
      return a != b;
    case kLt:
      return a < b;
    case kLe:
      return a <= b;
    case kGt:
      return a > b;
    default:
      return a >= b;
  }
}

__device__ __forceinline__ bool logical(int op, bool a, bool b) {
  return op == kAnd ? (a && b) : op == kOr ? (a || b) : (a != b);
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

// Out = U: T for arithmetic, uint8_t (bool) for comparisons and logical ops.
template <typename T, typename U>
__device__ __forceinline__ U apply(int op, T a, T b) {
  using C = typename Compute<T>::type;
  if constexpr (std::is_same_v<T, uint8_t>) {
    return op >= kAnd ? logical(op, a != 0, b != 0) : compare(op, a, b);
  } else if constexpr (std::is_same_v<U, uint8_t>) {
    return compare(op, load_c(a), load_c(b));
  } else {
    return store_c<T>(arith<C>(op, load_c(a), load_c(b)));
  }
}

template <typename T, typename U>
__global__ void binary_same_shape(int op, const T* __restrict__ a, const T* __restrict__ b, U* __restrict__ y,
                                  int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = apply<T, U>(op, a[i], b[i]);
  }
}

// Index: int32_t when the output (and one grid stride past it) stays below 2^31, so the per-element
// divisions are 32-bit ones; input offsets are below the output's size.
template <typename T, typename U, typename Index>
__global__ void binary_broadcast(int op, const T* __restrict__ a, BroadcastIndexer ia,
                                 const T* __restrict__ b, BroadcastIndexer ib, U* __restrict__ y, Index n) {
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    Index oa = 0, ob = 0, rem = i;
    for (int d = ia.rank - 1; d >= 0; --d) {
      const Index size = static_cast<Index>(ia.out_dims[d]);
      const Index idx = rem % size;
      rem /= size;
      oa += idx * static_cast<Index>(ia.in_strides[d]);
      ob += idx * static_cast<Index>(ib.in_strides[d]);
    }
    y[i] = apply<T, U>(op, a[oa], b[ob]);
  }
}

// Sixteen bytes of output per thread: both inputs run contiguously along the innermost dim, whose
// size is a multiple of the vector (x [N, H*W, C] * s [N, 1, C]); offsets are computed per vector.
template <typename T>
__global__ void binary_broadcast_vec(int op, const T* __restrict__ a, BroadcastIndexer ia,
                                     const T* __restrict__ b, BroadcastIndexer ib, T* __restrict__ y,
                                     int32_t vectors) {
  using V = Vec16<T>;
  for (int32_t i = blockIdx.x * static_cast<int32_t>(blockDim.x) + threadIdx.x; i < vectors;
       i += static_cast<int32_t>(gridDim.x) * blockDim.x) {
    int32_t oa = 0, ob = 0, rem = i * V::kSize;
    for (int d = ia.rank - 1; d >= 0; --d) {
      const int32_t size = static_cast<int32_t>(ia.out_dims[d]);
      const int32_t idx = rem % size;
      rem /= size;
      oa += idx * static_cast<int32_t>(ia.in_strides[d]);
      ob += idx * static_cast<int32_t>(ib.in_strides[d]);
    }
    const V va = *reinterpret_cast<const V*>(a + oa), vb = *reinterpret_cast<const V*>(b + ob);
    V out;
#pragma unroll
    for (int j = 0; j < V::kSize; ++j) out.v[j] = apply<T, T>(op, va.v[j], vb.v[j]);
    *reinterpret_cast<V*>(y + int64_t{i} * V::kSize) = out;
  }
}

// Drops size-1 output dims and merges adjacent ones that both inputs walk alike (contiguously, or
// both broadcast): x [32, 28, 28, 120] * s [32, 1, 1, 120] indexes as [32, 784, 120], two
// divisions per element instead of three.
void coalesce(BroadcastIndexer& a, BroadcastIndexer& b) {
  int r = 0;
  for (int d = 0; d < a.rank; ++d) {
    if (a.out_dims[d] == 1) continue;
    const bool merge = r > 0 && a.in_strides[r - 1] == a.in_strides[d] * a.out_dims[d] &&
                       b.in_strides[r - 1] == b.in_strides[d] * b.out_dims[d];
    if (merge) {
      a.out_dims[r - 1] *= a.out_dims[d];
      b.out_dims[r - 1] = a.out_dims[r - 1];
      a.in_strides[r - 1] = a.in_strides[d];
      b.in_strides[r - 1] = b.in_strides[d];
      continue;
    }
    a.out_dims[r] = b.out_dims[r] = a.out_dims[d];
    a.in_strides[r] = a.in_strides[d];
    b.in_strides[r] = b.in_strides[d];
    ++r;
  }
  a.rank = b.rank = r;
}

class CudaElementwise final : public Kernel {
 public:
  CudaElementwise(int op, std::string op_name) : op_(op), op_name_(std::move(op_name)) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const bool to_bool = out[0].dtype == DataType::kBool;
    switch (in[0].dtype) {
      case DataType::kFloat32:
        return to_bool ? launch<float, uint8_t>(in, out, ctx) : launch<float, float>(in, out, ctx);
      case DataType::kFloat16:
        return to_bool ? launch<__half, uint8_t>(in, out, ctx) : launch<__half, __half>(in, out, ctx);
      case DataType::kBFloat16:
        return to_bool ? launch<__nv_bfloat16, uint8_t>(in, out, ctx)
                       : launch<__nv_bfloat16, __nv_bfloat16>(in, out, ctx);
      case DataType::kInt32:
        return to_bool ? launch<int32_t, uint8_t>(in, out, ctx) : launch<int32_t, int32_t>(in, out, ctx);
      case DataType::kInt64:
        return to_bool ? launch<int64_t, uint8_t>(in, out, ctx) : launch<int64_t, int64_t>(in, out, ctx);
      case DataType::kBool:
        return launch<uint8_t, uint8_t>(in, out, ctx);
      default:
        KILN_FAIL("elementwise: no CUDA kernel for dtype " << dtype_name(in[0].dtype));
    }
  }
  std::string name() const override { return "cuda_elementwise_" + op_name_; }

 private:
  template <typename T, typename U>
  void launch(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
              const LaunchContext& ctx) const {
    int64_t n = volume(out[0].dims);
    if (n == 0) return;
    constexpr int kBlock = 256;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    const T* a = static_cast<const T*>(in[0].data);
    const T* b = static_cast<const T*>(in[1].data);
    U* y = static_cast<U*>(out[0].data);
    if (in[0].dims == out[0].dims && in[1].dims == out[0].dims) {
      binary_same_shape<T, U><<<grid_for(n, kBlock), kBlock, 0, stream>>>(op_, a, b, y, n);
    } else {
      BroadcastIndexer ia = make_broadcast_indexer(in[0].dims, out[0].dims);
      BroadcastIndexer ib = make_broadcast_indexer(in[1].dims, out[0].dims);
      coalesce(ia, ib);
      constexpr int kVec = 16 / sizeof(T);
      const int r = ia.rank;
      const bool vec = std::is_same_v<T, U> && sizeof(T) <= 4 && r > 0 && ia.out_dims[r - 1] % kVec == 0 &&
                       ia.in_strides[r - 1] == 1 && ib.in_strides[r - 1] == 1 && aligned16(a) &&
                       aligned16(b) && aligned16(y) && n < (int64_t{1} << 30);
      const unsigned grid = grid_for(n, kBlock);
      if (vec) {
        if constexpr (std::is_same_v<T, U> && sizeof(T) <= 4) {
          const int64_t vectors = n / kVec;
          binary_broadcast_vec<T><<<grid_for(vectors, kBlock), kBlock, 0, stream>>>(
              op_, a, ia, b, ib, reinterpret_cast<T*>(y), static_cast<int32_t>(vectors));
        }
      } else if (n + int64_t{grid} * kBlock < (int64_t{1} << 31)) {
        binary_broadcast<T, U, int32_t>
            <<<grid, kBlock, 0, stream>>>(op_, a, ia, b, ib, y, static_cast<int32_t>(n));
      } else {
        binary_broadcast<T, U, int64_t><<<grid, kBlock, 0, stream>>>(op_, a, ia, b, ib, y, n);
      }
    }
    KILN_CUDA_CHECK_LAUNCH();
  }

  int op_;
  std::string op_name_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("elementwise", Backend::kCuda, [](const Layer& l) {
    std::string op = l.attrs.get_string("op", l.name);
    return std::make_unique<CudaElementwise>(variant_code(elementwise_ops(), op), op);
  });
});

}  // namespace kiln
