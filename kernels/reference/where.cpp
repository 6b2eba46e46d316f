// Reference where: y = cond ? a : b with broadcasting; elements are copied as bytes, so every
// dtype (int64 included) passes through exactly.
#include <cstring>

#include "kernels/broadcast.h"
#include "kernels/kernel.h"

namespace kiln {
namespace {

class RefWhere final : public Kernel {
 public:
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView& y = out[0];
    BroadcastIndexer ic = make_broadcast_indexer(in[0].dims, y.dims);
    BroadcastIndexer ia = make_broadcast_indexer(in[1].dims, y.dims);
    BroadcastIndexer ib = make_broadcast_indexer(in[2].dims, y.dims);
    const size_t size = dtype_size(y.dtype);
    const auto* cond = static_cast<const uint8_t*>(in[0].data);
    const auto* a = static_cast<const uint8_t*>(in[1].data);
    const auto* b = static_cast<const uint8_t*>(in[2].data);
    auto* dst = static_cast<uint8_t*>(y.data);
    const int64_t n = volume(y.dims);
    for (int64_t i = 0; i < n; ++i) {
      int64_t oc = 0, oa = 0, ob = 0, rem = i;
      for (int d = ic.rank - 1; d >= 0; --d) {
        int64_t idx = rem % ic.out_dims[d];
        rem /= ic.out_dims[d];
        oc += idx * ic.in_strides[d];
        oa += idx * ia.in_strides[d];
        ob += idx * ib.in_strides[d];
      }
      const uint8_t* src = cond[oc] != 0 ? a + oa * size : b + ob * size;
      std::memcpy(dst + i * size, src, size);
    }
  }
  std::string name() const override { return "ref_where"; }
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("where", Backend::kReference, [](const Layer&) { return std::make_unique<RefWhere>(); });
});

}  // namespace kiln
