// Reference arange and fill. The output's shape (from the schema) gives the element count, so the
// optional shape-carrying inputs are not read.
#include <cstring>

#include "ir/ops/generate.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"
#include "kernels/scalar_bytes.h"

namespace kiln {
namespace {

class RefArange final : public Kernel {
 public:
  explicit RefArange(ArangeParams p) : p_(p) {}
  void run(const std::vector<TensorView>&, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView& y = out[0];
    const int64_t n = volume(y.dims);
    for (int64_t i = 0; i < n; ++i) {
      if (y.dtype == DataType::kInt64) {
        static_cast<int64_t*>(y.data)[i] = p_.start_int + p_.step_int * i;  // exact, no double
      } else if (y.dtype == DataType::kInt32) {
        static_cast<int32_t*>(y.data)[i] = static_cast<int32_t>(p_.start_int + p_.step_int * i);
      } else {
        store_element(y, i, p_.start + p_.step * static_cast<double>(i));
      }
    }
  }
  std::string name() const override { return "ref_arange"; }

 private:
  ArangeParams p_;
};

class RefFill final : public Kernel {
 public:
  explicit RefFill(const FillParams& p) : bits_(encode_scalar(p.dtype, p.value, p.int_value)) {}
  void run(const std::vector<TensorView>&, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const size_t size = dtype_size(out[0].dtype);
    const int64_t n = volume(out[0].dims);
    auto* y = static_cast<uint8_t*>(out[0].data);
    for (int64_t i = 0; i < n; ++i) std::memcpy(y + i * size, &bits_, size);  // little-endian
  }
  std::string name() const override { return "ref_fill"; }

 private:
  uint64_t bits_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("arange", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefArange>(arange_params(l)); });
  register_kernel("fill", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefFill>(fill_params(l)); });
});

}  // namespace kiln
