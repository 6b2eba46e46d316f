// Strided views for the passes that see through chains of view layers (reshape, flatten,
// squeeze, unsqueeze, transpose, slice, select by a constant index): a tensor as element strides over
// the row-major memory of the first tensor up its producers that no view layer made.
// Used by pack_attention_views, collapse_transposes, unflatten_batched_matmuls,
// concat_views_to_transposes and fold_attention_transposes. Static shapes only.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ir/network.h"

namespace kiln {

// Each dim is a list of (size, stride) atoms, outermost first, so that reshapes that merge dims of
// different strides (torch's view [S, B, E] -> [S, B * H, D] of a select from a packed
// projection) and later split them again stay exact: an element's offset is `offset` plus, per
// dim, the digits of its index in the mixed radix of the atom sizes times the atoms' strides.
// Size-1 atoms are dropped.
struct Atom {
  int64_t size = 1, stride = 0;
  bool operator==(const Atom& o) const { return size == o.size && stride == o.stride; }
};
struct StridedView {
  TensorId root = -1;
  int64_t offset = 0;
  std::vector<std::vector<Atom>> dims;
};

// `root` itself, of dims `dims`, as a view: row-major strides.
StridedView row_major(TensorId root, const Dims& dims);

// The stride of a dim of size > 1 whose atoms are contiguous with each other; false otherwise.
bool dim_stride(const std::vector<Atom>& atoms, int64_t* stride);

// `v` reads its root's elements in the root's own row-major order from offset 0 (whatever its
// dims): a reshape of the root would give the same tensor.
bool is_row_major(const StridedView& v, int64_t root_volume);

// `v` reshaped to `dims` (same element count, row-major order): the atoms regrouped, an atom split
// where a new dim boundary falls inside it. False when a boundary does not divide an atom.
bool reshape_view(const StridedView& v, const Dims& dims, StridedView* out);

// True when `a` and `b` read the same elements of the same root in the same order (atoms that are
// contiguous with each other compared as one).
bool same_view(const StridedView& a, const StridedView& b);

// `v` as one permutation of its root's dims: `factors` split the root's dims (row-major, outermost
// first) so that each atom of `v` is one factor, and `v` reads factor perm[j] as its j-th atom.
// Then reshape(root, factors) -> transpose(perm) -> reshape(v's dims) is `v`. False when `v` skips,
// repeats or offsets elements, or needs more than kMaxRank factors.
bool as_permutation(const StridedView& v, int64_t root_volume, Dims* factors, std::vector<int64_t>* perm);

// The layers that compute tensor `out` from `root` as as_permutation describes it: reshape to
// `factors`, transpose by `perm`, reshape to out's dims (named `name`, writing `out`); their
// intermediate tensors are added to `net`.
std::vector<Layer> permutation_layers(Network& net, const std::string& name, TensorId root,
                                      const Dims& factors, const std::vector<int64_t>& perm, TensorId out);

// Replaces each layer rewrites[k].first (ascending indices) by the layers rewrites[k].second
// (permutation_layers' output), then reindexes the network.
void replace_layers(Network& net, const std::vector<std::pair<int, std::vector<Layer>>>& rewrites);

// The end of a pass that rewrote layers so: replace_layers, then eliminate_dead_layers (what the
// rewrites bypassed) and revalidate. False, with the network untouched, when there is none.
bool apply_rewrites(Network& net, const std::vector<std::pair<int, std::vector<Layer>>>& rewrites);

class ViewTracer {
 public:
  explicit ViewTracer(const Network& net);
  // `t` as a strided view; false when `t` has dynamic dims.
  bool trace(TensorId t, StridedView* v) const;

 private:
  bool step(const Layer& l, TensorId out, StridedView* v) const;

  const Network& net_;
  std::vector<int> producer_;
};

}  // namespace kiln
