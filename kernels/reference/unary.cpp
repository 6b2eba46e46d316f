// Reference unary math, computed in double.
#include <cmath>
#include <functional>

#include "core/error.h"
#include "kernels/kernel.h"
#include "kernels/kernels.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

using Fn = std::function<double(double)>;

Fn unary_fn(const std::string& op) {
  if (op == "exp") return [](double x) { return std::exp(x); };
  if (op == "log") return [](double x) { return std::log(x); };
  if (op == "sqrt") return [](double x) { return std::sqrt(x); };
  if (op == "rsqrt") return [](double x) { return 1.0 / std::sqrt(x); };
  if (op == "abs") return [](double x) { return std::fabs(x); };
  if (op == "neg") return [](double x) { return -x; };
  if (op == "erf") return [](double x) { return std::erf(x); };
  if (op == "sin") return [](double x) { return std::sin(x); };
  if (op == "cos") return [](double x) { return std::cos(x); };
  if (op == "floor") return [](double x) { return std::floor(x); };
  if (op == "ceil") return [](double x) { return std::ceil(x); };
  if (op == "round") return [](double x) { return std::nearbyint(x); };  // half to even
  if (op == "reciprocal") return [](double x) { return 1.0 / x; };
  if (op == "sign") return [](double x) { return static_cast<double>((x > 0) - (x < 0)); };
  if (op == "not") return [](double x) { return x == 0 ? 1.0 : 0.0; };
  KILN_FAIL("unary: unknown op '" << op << "'");
}

class RefUnary final : public Kernel {
 public:
  explicit RefUnary(std::string op) : op_(op), fn_(unary_fn(op)) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    int64_t n = volume(in[0].dims);
    for (int64_t i = 0; i < n; ++i) store_element(out[0], i, fn_(load_element(in[0], i)));
  }
  std::string name() const override { return "ref_" + op_; }

 private:
  std::string op_;
  Fn fn_;
};

}  // namespace

void register_unary_reference_kernel() {
  register_kernel("unary", Backend::kReference, [](const Layer& l) {
    return std::make_unique<RefUnary>(l.attrs.get_string("op", l.name));
  });
}

}  // namespace kiln
