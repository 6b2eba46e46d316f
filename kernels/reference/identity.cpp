#include <cstring>

#include "core/dims.h"
#include "kernels/kernel.h"
#include "kernels/kernels.h"

namespace kiln {
namespace {

class RefIdentity final : public Kernel {
 public:
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    std::memcpy(out[0].data, in[0].data, static_cast<size_t>(volume(in[0].dims)) * dtype_size(in[0].dtype));
  }
  std::string name() const override { return "ref_identity"; }
};

}  // namespace

void register_identity_reference_kernel() {
  register_kernel("identity", Backend::kReference,
                  [](const Layer&) { return std::make_unique<RefIdentity>(); });
}

}  // namespace kiln
