#pragma once

#include <string>
#include <vector>

namespace kiln {

// The activation types the activation layer accepts, in the order of their kernel enum.
const std::vector<std::string>& activation_types();

}  // namespace kiln
