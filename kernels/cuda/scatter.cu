// CUDA scatter_elements (see ir/ops/scatter.cpp): the output starts as a copy of data; with
// include_self = 0 a first pass writes the reduction's identity at every position indices hit;
// then one thread per update writes it (reduction none: one of the repeated writes lands) or
// folds it in atomically (float32 add with atomicAdd, the rest with a compare-and-swap loop on
// the element's word, combining in float for float16/bfloat16). Atomic order varies from run to
// run, so floating add/mul results may differ in the last bits between runs. An index out of
// range is skipped (a kernel cannot raise without synchronizing; the reference backend reports it).
#include <cstring>
#include <limits>
#include <type_traits>

#include "ir/op_schema.h"
#include "ir/ops/scatter.h"
#include "ir/ops/shape_values.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"

namespace kiln {
namespace {

constexpr int kBlock = 256;

enum Reduction : int { kNone, kAdd, kMul, kMax, kMin };  // scatter_reductions() order

struct ScatterGeometry {
  int rank = 0;
  int axis = 0;
  int64_t index_dims[kMaxRank] = {};
  int64_t data_strides[kMaxRank] = {};
  int64_t update_strides[kMaxRank] = {};
  int64_t axis_size = 0;
};

// The position in data of index element e (-1 when its index is out of range); its update's
// offset in `source`.
template <typename I>
__device__ __forceinline__ int64_t target_of(const ScatterGeometry& g, const I* idx, int64_t e,
                                             int64_t* source = nullptr) {
  int64_t rem = e, pos = 0, src = 0;
  for (int d = g.rank - 1; d >= 0; --d) {
    int64_t c = rem % g.index_dims[d];
    rem /= g.index_dims[d];
    src += c * g.update_strides[d];
    if (d == g.axis) {
      c = static_cast<int64_t>(idx[e]);
      if (c < 0 || c >= g.axis_size) return -1;
    }
    pos += c * g.data_strides[d];
  }
  if (source != nullptr) *source = src;
  return pos;
}

template <typename T>
struct WordOf {
  using type = std::conditional_t<sizeof(T) == 2, unsigned short,
                                  std::conditional_t<sizeof(T) == 4, unsigned int, unsigned long long>>;
};

template <typename T>
__device__ __forceinline__ bool is_nan(T v) {
  if constexpr (std::is_integral_v<T>) {
    return false;
  } else {
    const float f = to_float(v);
    return f != f;
  }
}

template <typename T>
__device__ __forceinline__ T combine(int r, T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;  // wraps on overflow, as torch's integer arithmetic
    if (r == kAdd) return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
    if (r == kMul) return static_cast<T>(static_cast<U>(a) * static_cast<U>(b));
    if (r == kMax) return a > b ? a : b;
    return a < b ? a : b;
  } else {
    const float x = to_float(a), y = to_float(b);
    if (r == kAdd) return from_float<T>(x + y);
    if (r == kMul) return from_float<T>(x * y);
    if (x != x || y != y) return from_float<T>(x != x ? x : y);  // max/min propagate NaN
    return from_float<T>(r == kMax ? (x > y ? x : y) : (x < y ? x : y));
  }
}

template <typename T>
__device__ __forceinline__ void atomic_combine(T* addr, T v, int r) {
  if constexpr (std::is_same_v<T, float>) {
    if (r == kAdd) {
      atomicAdd(addr, v);
      return;
    }
  }
  using W = typename WordOf<T>::type;
  W* word = reinterpret_cast<W*>(addr);
  W old = *word, assumed;
  do {
    assumed = old;
    T current;
    memcpy(&current, &assumed, sizeof(T));
    const T next = combine(r, current, v);
    W next_word;
    memcpy(&next_word, &next, sizeof(T));
    if (next_word == assumed) return;  // nothing changes (max/min that keep the element)
    old = atomicCAS(word, assumed, next_word);
  } while (old != assumed);
}

template <typename T, typename I>
__global__ void fill_identity_kernel(T* __restrict__ out, const I* __restrict__ idx, ScatterGeometry g,
                                     int64_t count, T identity) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < count;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t pos = target_of(g, idx, e);
    if (pos >= 0) out[pos] = identity;
  }
}

// kWrite: reduction none, T a raw word; otherwise T is the element's device type.
template <typename T, typename I, bool kWrite>
__global__ void scatter_kernel(T* __restrict__ out, const I* __restrict__ idx, const T* __restrict__ updates,
                               ScatterGeometry g, int64_t count, int reduction) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < count;
       e += int64_t{gridDim.x} * blockDim.x) {
    int64_t src = 0;
    const int64_t pos = target_of(g, idx, e, &src);
    if (pos < 0) continue;
    if constexpr (kWrite) {
      out[pos] = updates[src];
    } else {
      atomic_combine(out + pos, updates[src], reduction);
    }
  }
}

template <typename T>
T identity_of(int reduction) {
  if constexpr (std::is_integral_v<T>) {
    if (reduction == kMul) return T{1};
    if (reduction == kMax) return std::numeric_limits<T>::lowest();
    if (reduction == kMin) return std::numeric_limits<T>::max();
    return T{0};
  } else {
    const float inf = std::numeric_limits<float>::infinity();
    const float v = reduction == kMul ? 1.f : reduction == kMax ? -inf : reduction == kMin ? inf : 0.f;
    if constexpr (std::is_same_v<T, float>) {
      return v;
    } else if constexpr (std::is_same_v<T, __half>) {
      return __float2half_rn(v);
    } else {
      return __float2bfloat16_rn(v);
    }
  }
}

class CudaScatterElements final : public Kernel {
 public:
  explicit CudaScatterElements(const Layer& l)
      : who_(describe(l)),
        axis_(l.attrs.get_int("axis", int64_t{0})),
        reduction_(variant_code(scatter_reductions(), scatter_reduction(l))),
        include_self_(l.attrs.get_int("include_self", int64_t{1}) != 0) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const Dims& data = in[0].dims;
    const int rank = static_cast<int>(data.size());
    ScatterGeometry g;
    g.rank = rank;
    g.axis = static_cast<int>(normalize_axis(axis_, rank, who_));
    g.axis_size = data[g.axis];
    int64_t stride = 1, update_stride = 1;
    for (int d = rank - 1; d >= 0; --d) {
      KILN_CHECK(in[1].dims[d] <= in[2].dims[d], who_ << ": updates " << to_string(in[2].dims)
                                                      << " are smaller than indices " << to_string(in[1].dims)
                                                      << " in dim " << d);
      KILN_CHECK(d == g.axis || in[1].dims[d] <= data[d], who_ << ": indices " << to_string(in[1].dims)
                                                               << " are larger than data " << to_string(data)
                                                               << " in dim " << d);
      g.index_dims[d] = in[1].dims[d];
      g.data_strides[d] = stride;
      g.update_strides[d] = update_stride;
      stride *= data[d];
      update_stride *= in[2].dims[d];
    }
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    const size_t bytes = static_cast<size_t>(volume(data)) * dtype_size(in[0].dtype);
    if (bytes > 0 && out[0].data != in[0].data) {
      KILN_CUDA_CHECK(cudaMemcpyAsync(out[0].data, in[0].data, bytes, cudaMemcpyDeviceToDevice, stream));
    }
    const int64_t count = volume(in[1].dims);
    if (count == 0 || bytes == 0) return;
    const unsigned grid = grid_for(count, kBlock);
    dispatch_index(in[1].dtype, who_.c_str(), [&](auto i) {
      using I = decltype(i);
      const I* idx = static_cast<const I*>(in[1].data);
      if (reduction_ == kNone) {
        dispatch_word(dtype_size(in[0].dtype), who_.c_str(), [&](auto w) {
          using W = decltype(w);
          scatter_kernel<W, I, true><<<grid, kBlock, 0, stream>>>(
              static_cast<W*>(out[0].data), idx, static_cast<const W*>(in[2].data), g, count, kNone);
          KILN_CUDA_CHECK_LAUNCH();
        });
        return;
      }
      dispatch_numeric(in[0].dtype, who_.c_str(), [&](auto t) {
        using T = decltype(t);
        T* y = static_cast<T*>(out[0].data);
        if (!include_self_) {
          fill_identity_kernel<T, I>
              <<<grid, kBlock, 0, stream>>>(y, idx, g, count, identity_of<T>(reduction_));
          KILN_CUDA_CHECK_LAUNCH();
        }
        scatter_kernel<T, I, false>
            <<<grid, kBlock, 0, stream>>>(y, idx, static_cast<const T*>(in[2].data), g, count, reduction_);
        KILN_CUDA_CHECK_LAUNCH();
      });
    });
  }
  std::string name() const override { return "cuda_scatter_elements"; }

 private:
  std::string who_;
  int64_t axis_;
  int reduction_;
  bool include_self_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("scatter_elements", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaScatterElements>(l); });
});

}  // namespace kiln
