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

// A space_to_depth layer over input dims [N, C, H, W] (static C, H, W; checked by its schema):
// output element (n, (dy * 2 + dx) * channels + c, i, j) (nchw) or (n, i, j, ...) (nhwc) reads
// input (n, c, 2i + dy - top, 2j + dx - left) where that lies inside the input and c < C, else 0.
struct SpaceToDepth {
  int64_t n = 0, c = 0, h = 0, w = 0;  // input dims
  int64_t channels = 0;                // C' >= C
  int64_t top = 0, left = 0;           // zero rows / columns before the input
  int64_t hs = 0, ws = 0;              // output rows and columns
  bool nhwc = false;
  // output_inv_scale: y is int8, clamp(rint(v * inv_scale), quant_min, quant_max) (NaN: quant_min).
  bool quantized = false;
  float inv_scale = 1.f;
  int64_t quant_min = -128, quant_max = 127;
};
SpaceToDepth resolve_space_to_depth(const Layer& layer, const Dims& in);

}  // namespace kiln
