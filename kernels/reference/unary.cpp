// Reference unary math, computed in double.
#include <cmath>
#include <functional>

#include "ir/error.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"
#include "kernels/reference/pointwise_math.h"

namespace kiln {

std::function<double(double)> unary_fn(const std::string& op) {
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
  if (op == "tan") return [](double x) { return std::tan(x); };
  if (op == "asin") return [](double x) { return std::asin(x); };
  if (op == "acos") return [](double x) { return std::acos(x); };
  if (op == "atan") return [](double x) { return std::atan(x); };
  if (op == "sinh") return [](double x) { return std::sinh(x); };
  if (op == "cosh") return [](double x) { return std::cosh(x); };
  if (op == "asinh") return [](double x) { return std::asinh(x); };
  if (op == "acosh") return [](double x) { return std::acosh(x); };
  if (op == "atanh") return [](double x) { return std::atanh(x); };
  if (op == "expm1") return [](double x) { return std::expm1(x); };
  if (op == "log1p") return [](double x) { return std::log1p(x); };
  if (op == "log2") return [](double x) { return std::log2(x); };
  if (op == "log10") return [](double x) { return std::log10(x); };
  KILN_FAIL("unary: unknown op '" << op << "'");
}

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("unary", Backend::kReference, [](const Layer& l) {
    std::string op = l.attrs.get_string("op", l.name);
    return std::make_unique<RefPointwise>("ref_" + op, unary_fn(op));
  });
});

}  // namespace kiln
