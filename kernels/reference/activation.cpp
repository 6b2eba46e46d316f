// Reference activations, computed in double from their textbook definitions. NaN propagates
// through every one, as in torch: the piecewise ones select with comparisons that are false for
// NaN, so NaN takes the identity branch (std::min/std::max would keep NaN or drop it depending on
// the operand order).
#include <cmath>
#include <functional>

#include "ir/error.h"
#include "ir/ops/activation.h"
#include "kernels/kernel.h"
#include "kernels/reference/activation_fn.h"
#include "kernels/reference/host_access.h"
#include "kernels/reference/pointwise_math.h"

namespace kiln {
namespace {

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double softplus(double x, double beta, double threshold) {
  return beta * x > threshold ? x : std::log1p(std::exp(beta * x)) / beta;
}
// torch.clamp: NaN passes through; lo <= hi.
double clamp_nan(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }
double relu6(double x) { return clamp_nan(x, 0.0, 6.0); }

}  // namespace

std::function<double(double)> activation_fn(const std::string& type, double alpha, double beta,
                                            double threshold) {
  if (type == "relu") return [](double x) { return x < 0 ? 0.0 : x; };
  if (type == "sigmoid") return sigmoid;
  if (type == "tanh") return [](double x) { return std::tanh(x); };
  if (type == "leaky_relu") return [alpha](double x) { return x >= 0 ? x : alpha * x; };
  if (type == "gelu") return [](double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); };
  if (type == "gelu_tanh") {
    return [](double x) {
      const double k = std::sqrt(2.0 / M_PI);
      return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
    };
  }
  if (type == "silu") return [](double x) { return x * sigmoid(x); };
  if (type == "hardswish") return [](double x) { return x * relu6(x + 3.0) / 6.0; };
  if (type == "hardsigmoid") return [](double x) { return relu6(x + 3.0) / 6.0; };
  if (type == "elu") return [alpha](double x) { return x > 0 ? x : alpha * (std::exp(x) - 1.0); };
  if (type == "softplus") return [beta, threshold](double x) { return softplus(x, beta, threshold); };
  if (type == "mish") return [](double x) { return x * std::tanh(softplus(x, 1.0, 20.0)); };
  if (type == "selu") {
    return [](double x) { return kSeluScale * (x > 0 ? x : kSeluAlpha * (std::exp(x) - 1.0)); };
  }
  if (type == "clip") return [alpha, beta](double x) { return clamp_nan(x, alpha, beta); };
  KILN_FAIL("activation: unknown type '" << type << "'");
}

std::function<double(double)> reference_activation(const std::string& type, const Attributes& attrs) {
  const ActivationAttrs a = activation_attrs(type, attrs);
  return activation_fn(type, a.alpha, a.beta, a.threshold);
}

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("activation", Backend::kReference, [](const Layer& l) {
    std::string type = l.attrs.get_string("type", l.name);
    return std::make_unique<RefPointwise>("ref_" + type, reference_activation(type, l.attrs));
  });
});

}  // namespace kiln
