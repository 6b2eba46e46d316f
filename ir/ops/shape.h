#pragma once

#include <cstdint>
#include <vector>

#include "ir/network.h"

namespace kiln {

// A slice layer resolved against an input shape (build-time dims may be dynamic).
struct SliceSpec {
  Dims out;                    // output dims; dynamic where a sliced input dim is dynamic
  std::vector<int64_t> start;  // per input dim: first element taken (0 where not sliced)
  std::vector<int64_t> step;   // per input dim: stride in elements of that dim (1 where not sliced)
};
// Validates the slice attributes (axes, starts, ends, steps) of `layer` and resolves them with
// Python slice semantics: negative indices count from the end, out-of-range values clamp.
SliceSpec resolve_slice(const Layer& layer, const Dims& in);

// The `perm` of a transpose layer, validated as a permutation of 0..rank-1, negatives normalized.
std::vector<int64_t> resolve_perm(const Layer& layer, int64_t rank);

}  // namespace kiln
