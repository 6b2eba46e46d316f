// Strided copies: the one data movement behind transpose, slice, expand, concat and split.
// dst[dst_offset + sum_d i_d * dst_strides[d]] = src[src_offset + sum_d i_d * src_strides[d]] for every
// index (i_0..i_rank-1) of `dims`, in elements. Builders coalesce the description (size-1 dims
// dropped, dims that are contiguous on both sides merged) so kernels do fewer divisions and a
// plain contiguous copy is recognised as one.
#pragma once

#include <cstdint>
#include <vector>

#include "ir/dims.h"
#include "ir/ops/shape.h"

namespace kiln {

struct StridedCopy {
  int rank = 0;  // 0: a single element
  int64_t dims[kMaxRank] = {};
  int64_t src_strides[kMaxRank] = {};
  int64_t dst_strides[kMaxRank] = {};
  int64_t src_offset = 0;
  int64_t dst_offset = 0;
};

inline int64_t copy_count(const StridedCopy& c) {
  int64_t n = 1;
  for (int d = 0; d < c.rank; ++d) n *= c.dims[d];
  return n;
}

// True when the copy is one contiguous run of copy_count(c) elements on both sides.
inline bool is_contiguous_copy(const StridedCopy& c) {
  return c.rank == 0 || (c.rank == 1 && c.src_strides[0] == 1 && c.dst_strides[0] == 1);
}

inline StridedCopy make_strided_copy(const Dims& dims, const std::vector<int64_t>& src_strides,
                                     const std::vector<int64_t>& dst_strides, int64_t src_offset,
                                     int64_t dst_offset) {
  StridedCopy c;
  c.src_offset = src_offset;
  c.dst_offset = dst_offset;
  for (size_t d = 0; d < dims.size(); ++d) {
    if (dims[d] == 0) {  // nothing to copy
      c.rank = 1;
      c.dims[0] = 0;
      c.src_strides[0] = c.dst_strides[0] = 1;
      return c;
    }
    if (dims[d] == 1) continue;  // contributes no offset
    // Merge into the previous (outer) dim when both sides step over this dim contiguously:
    // i_outer * (n * s) + i * s == (i_outer * n + i) * s.
    if (c.rank > 0 && c.src_strides[c.rank - 1] == src_strides[d] * dims[d] &&
        c.dst_strides[c.rank - 1] == dst_strides[d] * dims[d]) {
      c.dims[c.rank - 1] *= dims[d];
      c.src_strides[c.rank - 1] = src_strides[d];
      c.dst_strides[c.rank - 1] = dst_strides[d];
      continue;
    }
    c.dims[c.rank] = dims[d];
    c.src_strides[c.rank] = src_strides[d];
    c.dst_strides[c.rank] = dst_strides[d];
    ++c.rank;
  }
  return c;
}

// Row-major strides. An empty tensor (a zero dim) addresses no element, and the product of its
// other dims is bounded by nothing (volume [0, 2^62, 2] is 0): its strides are all 0.
inline std::vector<int64_t> contiguous_strides(const Dims& dims) {
  for (int64_t d : dims) {
    if (d == 0) return std::vector<int64_t>(dims.size(), 0);
  }
  std::vector<int64_t> s(dims.size(), 1);
  for (int i = static_cast<int>(dims.size()) - 2; i >= 0; --i) s[i] = s[i + 1] * dims[i + 1];
  return s;
}

// y = x.permute(perm): output dim d walks input dim perm[d].
inline StridedCopy transpose_copy(const Dims& in, const std::vector<int64_t>& perm) {
  std::vector<int64_t> in_strides = contiguous_strides(in);
  Dims out(in.size());
  std::vector<int64_t> src(in.size());
  for (size_t d = 0; d < in.size(); ++d) {
    out[d] = in[perm[d]];
    src[d] = in_strides[perm[d]];
  }
  return make_strided_copy(out, src, contiguous_strides(out), 0, 0);
}

// y = x[start::step, ...] per dim; `s` resolved against the concrete input shape.
inline StridedCopy slice_copy(const Dims& in, const SliceSpec& s) {
  std::vector<int64_t> in_strides = contiguous_strides(in);
  std::vector<int64_t> src(in.size());
  int64_t offset = 0;
  for (size_t d = 0; d < in.size(); ++d) {
    // A dim sliced to one element is never stepped: its step may be any size (the product would
    // overflow), else step < the dim and the product stays within the input's volume.
    src[d] = s.out[d] == 1 ? 0 : in_strides[d] * s.step[d];
    offset += s.start[d] * in_strides[d];
  }
  return make_strided_copy(s.out, src, contiguous_strides(s.out), offset, 0);
}

// y = x broadcast to `out` (right-aligned; size-1 input dims repeat with stride 0).
inline StridedCopy expand_copy(const Dims& in, const Dims& out) {
  std::vector<int64_t> in_strides = contiguous_strides(in);
  std::vector<int64_t> src(out.size(), 0);
  const size_t lead = out.size() - in.size();
  for (size_t d = lead; d < out.size(); ++d) src[d] = in[d - lead] == 1 ? 0 : in_strides[d - lead];
  return make_strided_copy(out, src, contiguous_strides(out), 0, 0);
}

// The part of concat's output written by one input starting at `offset` along `axis`, or the part of
// split's input read into one output: `part` is that input's / output's shape, `whole` the other side.
inline StridedCopy part_copy(const Dims& part, const Dims& whole, int64_t axis, int64_t offset,
                             bool part_is_dst) {
  std::vector<int64_t> part_strides = contiguous_strides(part);
  std::vector<int64_t> whole_strides = contiguous_strides(whole);
  int64_t whole_offset = offset * whole_strides[axis];
  return part_is_dst ? make_strided_copy(part, whole_strides, part_strides, whole_offset, 0)
                     : make_strided_copy(part, part_strides, whole_strides, 0, whole_offset);
}

}  // namespace kiln
