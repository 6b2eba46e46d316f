// Helpers the indexing ops (core/ops/indexing.cpp) share with their kernels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::indexing {

// The pad layer's `mode` values, in the order of their kernel codes.
const std::vector<std::string>& pad_modes();

// `axis` in [-rank, rank) as a non-negative axis; refuses others with a message naming `who`.
int64_t normalize_axis(int64_t axis, int64_t rank, const std::string& who);

// torch.nn.functional.pad's `pads` (last dim first, (before, after) pairs, possibly fewer dims
// than the rank) as (before, after) per dim in dim order: 2 * rank entries, 0 where not given.
std::vector<int64_t> resolve_pads(const std::vector<int64_t>& pads, int64_t rank);

}  // namespace kiln::indexing
