#pragma once

#include <string>
#include <vector>

#include "ir/attributes.h"

namespace kiln {

// The activation types the activation layer accepts, in the order of their kernel enum.
// selu: scale * (x > 0 ? x : alpha * (exp(x) - 1)) with torch's fixed kSeluAlpha and kSeluScale.
const std::vector<std::string>& activation_types();

// The activation op's default `alpha` for `type` (leaky_relu slope 0.01, elu 1, clip min 0).
double default_activation_alpha(const std::string& type);

// SELU's constants (Klambauer et al. 2017), as torch.nn.functional.selu uses them.
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;

// An activation's numeric parameters, read once from attributes (an activation layer's, or a
// fused epilogue's) with the defaults the activation op documents: alpha as above, beta 1 (clip
// max, softplus beta), threshold 20 (softplus). The one place those defaults live: kernels and
// passes read them through this. `prefix` names epilogue attributes ("activation_" reads
// activation_alpha, ... of a convolution).
struct ActivationAttrs {
  double alpha = 0.0, beta = 1.0, threshold = 20.0;
};
ActivationAttrs activation_attrs(const std::string& type, const Attributes& attrs,
                                 const std::string& prefix = "");

}  // namespace kiln
