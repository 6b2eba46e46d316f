// Reference activations, computed in double from their textbook definitions.
#include <algorithm>
#include <cmath>
#include <functional>

#include "kernels/reference/activation.h"

#include "core/error.h"
#include "kernels/kernel.h"
#include "kernels/kernels.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double softplus(double x, double beta, double threshold) {
  return beta * x > threshold ? x : std::log1p(std::exp(beta * x)) / beta;
}
double relu6(double x) { return std::min(std::max(x, 0.0), 6.0); }

}  // namespace

std::function<double(double)> activation_fn(const std::string& type, double alpha, double beta,
                                            double threshold) {
  if (type == "relu") return [](double x) { return x > 0 ? x : 0.0; };
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
  if (type == "clip") return [alpha, beta](double x) { return std::min(std::max(x, alpha), beta); };
  KILN_FAIL("activation: unknown type '" << type << "'");
}

void register_activation_reference_kernel() {
  register_kernel("activation", Backend::kReference, [](const Layer& l) {
    std::string type = l.attrs.get_string("type", l.name);
    bool clip = type == "clip";
    return std::make_unique<RefPointwise>(
        "ref_" + type, activation_fn(type,
                                     l.attrs.get_float("alpha", clip            ? 0.0
                                                                : type == "elu" ? 1.0
                                                                                : 0.01),
                                     l.attrs.get_float("beta", 1.0), l.attrs.get_float("threshold", 20.0)));
  });
}

}  // namespace kiln
