// Reference activations, computed in double.
#include <cmath>

#include "core/error.h"
#include "kernels/kernel.h"
#include "kernels/kernels.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

class RefActivation final : public Kernel {
 public:
  RefActivation(std::string type, double alpha) : type_(std::move(type)), alpha_(alpha) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    int64_t n = volume(in[0].dims);
    for (int64_t i = 0; i < n; ++i) store_element(out[0], i, apply(load_element(in[0], i)));
  }
  std::string name() const override { return "ref_" + type_; }

 private:
  double apply(double x) const {
    if (type_ == "relu") return x > 0 ? x : 0.0;
    if (type_ == "sigmoid") return 1.0 / (1.0 + std::exp(-x));
    if (type_ == "tanh") return std::tanh(x);
    if (type_ == "leaky_relu") return x >= 0 ? x : alpha_ * x;
    KILN_FAIL("activation: unknown type '" << type_ << "'");
  }

  std::string type_;
  double alpha_;
};

}  // namespace

void register_activation_reference_kernel() {
  register_kernel("activation", Backend::kReference, [](const Layer& l) {
    return std::make_unique<RefActivation>(l.attrs.get_string("type", l.name),
                                           l.attrs.get_float("alpha", 0.0));
  });
}

}  // namespace kiln
