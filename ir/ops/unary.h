#pragma once

#include <string>
#include <vector>

namespace kiln {

// The math functions the unary layer accepts, in the order of their kernel enum.
const std::vector<std::string>& unary_ops();

}  // namespace kiln
