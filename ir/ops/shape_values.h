// Helpers for schemas that propagate tracked shape values (ShapeValues, ir/network.h): the
// host-side twin of what the op's kernel computes on a small integer tensor. Every helper returns
// nullptr (untracked) when an operand is untracked or the result is too large to track, and an
// entry kUnknownValue wherever an operand entry it depends on is unknown.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ir/dims.h"
#include "ir/error.h"
#include "ir/network.h"

namespace kiln {

// True when a tensor of `dims` may carry tracked values: static, at most kMaxShapeValues elements.
inline bool trackable(const Dims& dims) { return is_static(dims) && volume(dims) <= kMaxShapeValues; }

// The value an integer `v` takes once stored as integer/bool dtype `t` (two's-complement wrap,
// bool is v != 0).
inline int64_t stored_int(int64_t v, DataType t) {
  switch (t) {
    case DataType::kBool:
      return v != 0;
    case DataType::kInt8:
      return static_cast<int8_t>(v);
    case DataType::kInt32:
      return static_cast<int32_t>(v);
    default:
      return v;
  }
}

// Row-major element strides of a static shape.
inline std::vector<int64_t> row_major_strides(const Dims& dims) {
  std::vector<int64_t> s(dims.size(), 1);
  for (int i = static_cast<int>(dims.size()) - 2; i >= 0; --i) s[i] = s[i + 1] * dims[i + 1];
  return s;
}

// Axis `axis` of a rank-`rank` tensor, negative counting from the end; refused when out of range.
inline int64_t normalize_axis(int64_t axis, int64_t rank, const std::string& who, const char* what = "axis") {
  KILN_CHECK(axis >= -rank && axis < rank, who << ": " << what << " " << axis << " is out of range for rank "
                                               << rank << " (use " << -rank << ".." << rank - 1 << ")");
  return axis < 0 ? axis + rank : axis;
}

// "[2, ?, 4]": a list of tracked values or attribute ints, unknown entries as '?'.
inline std::string values_string(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    s += (i ? ", " : "") + (v[i] == kUnknownValue ? std::string("?") : std::to_string(v[i]));
  }
  return s + "]";
}

// Values of a tensor holding the same elements in the same order as `in` (reshape, flatten,
// squeeze, unsqueeze).
inline ShapeValues same_values(const ShapeValues& in, const Dims& out_dims) {
  return in && trackable(out_dims) ? in : nullptr;
}

// Values of an output of `out_dims` whose element i (row-major) is element src(index) of `in`,
// where index is the output multi-index (transpose, slice, expand, split, ...).
template <typename F>
ShapeValues gather_values(const ShapeValues& in, const Dims& out_dims, F&& src) {
  if (!in || !trackable(out_dims)) return nullptr;
  const int64_t n = volume(out_dims);
  std::vector<int64_t> out(static_cast<size_t>(n));
  std::vector<int64_t> index(out_dims.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t rem = i;
    for (int d = static_cast<int>(out_dims.size()) - 1; d >= 0; --d) {
      index[d] = rem % out_dims[d];
      rem /= out_dims[d];
    }
    out[i] = (*in)[static_cast<size_t>(src(index))];
  }
  return make_values(std::move(out));
}

// Values of a NumPy-broadcast binary op: f(a, b) on known entries (f itself may answer
// kUnknownValue, e.g. on overflow); an unknown operand entry gives an unknown result entry.
template <typename F>
ShapeValues broadcast_values(const TensorDesc& a, const TensorDesc& b, const Dims& out_dims, F&& f) {
  if (!a.values || !b.values || !trackable(out_dims) || !is_static(a.dims) || !is_static(b.dims))
    return nullptr;
  const int rank = static_cast<int>(out_dims.size());
  auto source = [&](const Dims& dims, const std::vector<int64_t>& index) {
    const int offset = rank - static_cast<int>(dims.size());
    int64_t flat = 0;
    for (int d = offset; d < rank; ++d)
      flat = flat * dims[d - offset] + (dims[d - offset] == 1 ? 0 : index[d]);
    return flat;
  };
  const int64_t n = volume(out_dims);
  std::vector<int64_t> out(static_cast<size_t>(n));
  std::vector<int64_t> index(static_cast<size_t>(rank), 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t rem = i;
    for (int d = rank - 1; d >= 0; --d) {
      index[d] = rem % out_dims[d];
      rem /= out_dims[d];
    }
    int64_t x = (*a.values)[static_cast<size_t>(source(a.dims, index))];
    int64_t y = (*b.values)[static_cast<size_t>(source(b.dims, index))];
    out[i] = x == kUnknownValue || y == kUnknownValue ? kUnknownValue : f(x, y);
  }
  return make_values(std::move(out));
}

}  // namespace kiln
