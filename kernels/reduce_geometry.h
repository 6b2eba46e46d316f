// Index geometry of reductions, shared by the reference and CUDA kernels.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "ir/dims.h"

namespace kiln {

// A reduction over any set of axes of a row-major tensor, with size-1 dims dropped and adjacent
// dims of the same kind (both kept or both reduced) merged. Output element o sits at input offset
// offset(kept, o); its reduced elements r = 0..num_red-1 at offset(kept, o) + offset(red, r).
struct ReduceGeometry {
  struct Axes {
    int rank = 0;
    int64_t sizes[kMaxRank] = {};
    int64_t strides[kMaxRank] = {};  // input element strides
  };
  Axes kept, red;
  int64_t num_out = 1;
  int64_t num_red = 1;
  // The innermost (stride-1) input dim is reduced: a reduced row is contiguous in memory.
  bool inner_reduced = false;
};

inline ReduceGeometry make_reduce_geometry(const Dims& dims, const std::vector<bool>& mask) {
  ReduceGeometry g;
  int64_t stride = 1;
  int last_kind = -1;  // 0 kept, 1 reduced, of the dim merged last (walking from the innermost)
  bool first = true;
  // Walk from the innermost dim, merging each dim into the outermost entry of its kind when that
  // entry was the last one touched; entries are filled innermost first and reversed at the end.
  for (int i = static_cast<int>(dims.size()) - 1; i >= 0; --i) {
    int64_t size = dims[i];
    int kind = mask[i] ? 1 : 0;
    (kind ? g.num_red : g.num_out) *= size;
    if (size != 1) {
      ReduceGeometry::Axes& a = kind ? g.red : g.kept;
      if (first) g.inner_reduced = kind == 1 && stride == 1;
      first = false;
      if (last_kind == kind) {
        a.sizes[a.rank - 1] *= size;
      } else {
        a.sizes[a.rank] = size;
        a.strides[a.rank] = stride;
        ++a.rank;
      }
      last_kind = kind;
    }
    stride *= size;
  }
  for (ReduceGeometry::Axes* a : {&g.kept, &g.red}) {
    for (int i = 0, j = a->rank - 1; i < j; ++i, --j) {
      std::swap(a->sizes[i], a->sizes[j]);
      std::swap(a->strides[i], a->strides[j]);
    }
  }
  return g;
}

#ifdef __CUDACC__
#define KILN_HOST_DEVICE __host__ __device__
#else
#define KILN_HOST_DEVICE
#endif

// Input offset of element `i` (row-major over a.sizes) of an Axes.
KILN_HOST_DEVICE inline int64_t axes_offset(const ReduceGeometry::Axes& a, int64_t i) {
  int64_t off = 0;
  for (int d = a.rank - 1; d > 0; --d) {
    off += (i % a.sizes[d]) * a.strides[d];
    i /= a.sizes[d];
  }
  return a.rank > 0 ? off + i * a.strides[0] : off;
}

// The outer x n x inner view of a tensor around one axis (softmax, arg_reduce).
struct AxisGeometry {
  int64_t outer = 1, n = 1, inner = 1;
};

inline AxisGeometry make_axis_geometry(const Dims& dims, int axis) {
  AxisGeometry g;
  for (int i = 0; i < static_cast<int>(dims.size()); ++i) {
    (i < axis ? g.outer : i == axis ? g.n : g.inner) *= dims[i];
  }
  return g;
}

}  // namespace kiln
