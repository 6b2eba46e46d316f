// Helpers the indexing ops (ir/ops/indexing.cpp) share with their kernels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/ops/shape_values.h"

namespace kiln::indexing {

// The pad layer's `mode` values, in the order of their kernel codes.
const std::vector<std::string>& pad_modes();

// Whether a negative index of `layer` (gather, gather_elements or embedding) counts from the end
// of the axis (wraps once, -1 is the last element): the `wrap` attribute of gather and
// gather_elements (default 1: ONNX Gather / numpy.take), never for embedding (torch's
// F.embedding refuses negative indices). An index outside [0, n) after that is out of range.
bool wraps_negative_indices(const Layer& layer);

// Index `i` of an axis of size `n` as an element position: i + n for a negative i when `wrap`;
// -1 when it is out of range. Shared by the schema's build-time check and the kernels.
inline int64_t resolve_index(int64_t i, int64_t n, bool wrap) {
  const int64_t w = wrap && i < 0 ? i + n : i;
  return w >= 0 && w < n ? w : -1;
}

using ::kiln::normalize_axis;  // ir/ops/shape_values.h

// A tensor seen as [outer, n, inner] around `axis`.
struct AxisView {
  int64_t outer = 1, n = 1, inner = 1;
};

inline AxisView axis_view(const Dims& dims, int64_t axis) {
  AxisView v;
  for (int64_t d = 0; d < axis; ++d) v.outer *= dims[d];
  v.n = dims[axis];
  for (size_t d = axis + 1; d < dims.size(); ++d) v.inner *= dims[d];
  return v;
}

// torch.nn.functional.pad's `pads` (last dim first, (before, after) pairs, possibly fewer dims
// than the rank) as (before, after) per dim in dim order: 2 * rank entries, 0 where not given.
std::vector<int64_t> resolve_pads(const std::vector<int64_t>& pads, int64_t rank);

}  // namespace kiln::indexing
