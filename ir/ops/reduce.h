#pragma once

#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln {

// The reductions the reduce layer accepts, in the order of their kernel enum.
const std::vector<std::string>& reduce_ops();
// The reductions the arg_reduce layer accepts, in the order of their kernel enum.
const std::vector<std::string>& arg_reduce_ops();

// Which of `rank` axes a reduce layer reduces: its `axes` attribute with negative axes resolved;
// an empty or missing list means every axis. Throws a kiln::Error naming the layer when an axis is
// out of range or repeated.
std::vector<bool> reduced_axes(const Layer& layer, int rank);

// The one axis of an arg_reduce / softmax layer's `axis` attribute, resolved against `rank`
// (`fallback` when the attribute is missing). Throws naming the layer when out of range.
int resolve_axis(const Layer& layer, int rank, int64_t fallback);

}  // namespace kiln
