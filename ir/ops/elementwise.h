#pragma once

#include <string>
#include <vector>

namespace kiln {

// The binary ops the elementwise layer accepts, in the order of their kernel enum.
const std::vector<std::string>& elementwise_ops();

enum class ElementwiseKind { kArithmetic, kComparison, kLogical };
ElementwiseKind elementwise_kind(const std::string& op);

}  // namespace kiln
