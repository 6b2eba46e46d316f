// Reference cast: each (source, destination) dtype pair converts directly in its own C++ types,
// not through double, so large int64 values round once (as torch's static_cast does).
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

// Host element types; float16/bfloat16/bool are tagged so that each dtype is a distinct type.
struct Half {
  uint16_t bits;
};
struct BF16 {
  uint16_t bits;
};
struct Bool {
  uint8_t v;
};

template <typename T>
constexpr bool kFloatLike = std::is_same_v<T, float> || std::is_same_v<T, Half> || std::is_same_v<T, BF16>;

template <typename S>
float as_float(S s) {
  if constexpr (std::is_same_v<S, Half>) {
    return half_bits_to_float(s.bits);
  } else if constexpr (std::is_same_v<S, BF16>) {
    return bf16_bits_to_float(s.bits);
  } else if constexpr (std::is_same_v<S, Bool>) {
    return s.v != 0 ? 1.f : 0.f;
  } else {
    return static_cast<float>(s);  // one rounding, also from int64
  }
}

template <typename S>
bool nonzero(S s) {
  if constexpr (kFloatLike<S>) {
    return as_float(s) != 0.f;  // NaN -> true, as in torch
  } else if constexpr (std::is_same_v<S, Bool>) {
    return s.v != 0;
  } else {
    return s != 0;
  }
}

template <typename D, typename S>
D convert(S s) {
  if constexpr (std::is_same_v<D, Bool>) {
    return Bool{static_cast<uint8_t>(nonzero(s))};
  } else if constexpr (std::is_same_v<D, float>) {
    return as_float(s);
  } else if constexpr (std::is_same_v<D, Half>) {
    return Half{float_to_half_bits(as_float(s))};
  } else if constexpr (std::is_same_v<D, BF16>) {
    return BF16{float_to_bf16_bits(as_float(s))};
  } else if constexpr (kFloatLike<S>) {
    return truncate_to_int<D>(as_float(s));  // truncates toward zero
  } else if constexpr (std::is_same_v<S, Bool>) {
    return static_cast<D>(s.v != 0);
  } else {
    return static_cast<D>(s);  // integer -> integer wraps
  }
}

// Calls f(T{}) with T the host element type of `t`.
template <typename F>
void dispatch(DataType t, F&& f) {
  switch (t) {
    case DataType::kFloat32:
      return f(float{});
    case DataType::kFloat16:
      return f(Half{});
    case DataType::kBFloat16:
      return f(BF16{});
    case DataType::kInt32:
      return f(int32_t{});
    case DataType::kInt64:
      return f(int64_t{});
    case DataType::kBool:
      return f(Bool{});
    case DataType::kInt8:
      return f(int8_t{});
  }
  KILN_FAIL("cast: unknown dtype");
}

class RefCast final : public Kernel {
 public:
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const int64_t n = volume(in[0].dims);
    dispatch(in[0].dtype, [&](auto src_tag) {
      using S = decltype(src_tag);
      dispatch(out[0].dtype, [&](auto dst_tag) {
        using D = decltype(dst_tag);
        const auto* x = static_cast<const uint8_t*>(in[0].data);
        auto* y = static_cast<uint8_t*>(out[0].data);
        for (int64_t i = 0; i < n; ++i) {
          S s;
          std::memcpy(&s, x + i * sizeof(S), sizeof(S));
          D d = convert<D>(s);
          std::memcpy(y + i * sizeof(D), &d, sizeof(D));
        }
      });
    });
  }
  std::string name() const override { return "ref_cast"; }
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("cast", Backend::kReference, [](const Layer&) { return std::make_unique<RefCast>(); });
});

}  // namespace kiln
