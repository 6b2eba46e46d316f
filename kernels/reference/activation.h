// The reference activation functions, shared by the activation op and the fused epilogue of
// convolution layers so both compute the same result.
#pragma once

#include <functional>
#include <string>

namespace kiln {

// f(x) in double for activation `type` (one of activation_types()) with its parameters.
std::function<double(double)> activation_fn(const std::string& type, double alpha, double beta,
                                            double threshold);

}  // namespace kiln
