// The reference math of the pointwise ops, shared by their own kernels and by fused_pointwise
// (which must compute exactly what the unfused layers compute).
#pragma once

#include <functional>
#include <string>

namespace kiln {

// elementwise: `op` on two values read with load_element; `integral` for integer operands.
double elementwise_reference(const std::string& op, double a, double b, bool integral);
// activation `type` with its parameters filled in (see activation_params in fused_pointwise.h).
std::function<double(double)> activation_fn(const std::string& type, double alpha, double beta,
                                            double threshold);
std::function<double(double)> unary_fn(const std::string& op);

}  // namespace kiln
