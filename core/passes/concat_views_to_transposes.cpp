// concat_views_to_transposes: a concat whose inputs are strided views of one tensor that together
// read it as a permutation of its dims is that permutation: reshape, transpose, reshape. Swin's
// patch merging, cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1),
// is a space-to-depth of x [B, H, W, C]:
//   reshape(x, [B, H/2, 2, W/2, 2, C]) -> transpose [0, 1, 3, 4, 2, 5] -> reshape [B, H/2, W/2, 4C]
// one copy instead of six slices and a concat. The inputs must be views of equal dims (ViewTracer:
// reshapes, transposes, slices) whose offsets step through a grid of at most two strides; static
// shapes. The layers it bypasses are left to eliminate_dead_layers.
#include <algorithm>
#include <string>
#include <vector>

#include "core/passes/passes.h"
#include "core/passes/strided_view.h"

namespace kiln {
namespace {

// Atoms (outer first) whose mixed-radix digits of i = 0..n-1 give offsets[i] - offsets[0]: one
// atom (an arithmetic progression) or two (a grid, outer count a, inner n / a).
bool offset_atoms(const std::vector<int64_t>& offsets, std::vector<Atom>* atoms) {
  const auto n = static_cast<int64_t>(offsets.size());
  auto fits = [&](const std::vector<Atom>& trial) {
    for (int64_t i = 0; i < n; ++i) {
      int64_t rest = i, off = offsets[0];
      for (size_t k = trial.size(); k-- > 0;) {
        off += (rest % trial[k].size) * trial[k].stride;
        rest /= trial[k].size;
      }
      if (off != offsets[i]) return false;
    }
    return true;
  };
  if (n < 2) return false;
  if (fits({{n, offsets[1] - offsets[0]}})) {
    *atoms = {{n, offsets[1] - offsets[0]}};
    return true;
  }
  for (int64_t a = 2; a < n; ++a) {
    if (n % a != 0) continue;
    const int64_t b = n / a;
    std::vector<Atom> trial = {{a, offsets[b] - offsets[0]}, {b, offsets[1] - offsets[0]}};
    if (fits(trial)) {
      *atoms = trial;
      return true;
    }
  }
  return false;
}

}  // namespace

bool concat_views_to_transposes(Network& net) {
  const ViewTracer tracer(net);
  std::vector<std::pair<int, std::vector<Layer>>> rewrites;  // concat index -> its replacement
  for (size_t i = 0; i < net.layers().size(); ++i) {
    const Layer& l = net.layers()[i];
    if (l.op != "concat" || l.inputs.size() < 2 || l.outputs.size() != 1) continue;
    const Tensor& y = net.tensor(l.outputs[0]);
    if (!is_static(y.dims)) continue;
    const auto rank = static_cast<int64_t>(y.dims.size());
    int64_t axis = l.attrs.get_int("axis", int64_t{0});
    if (axis < 0) axis += rank;
    if (axis < 0 || axis >= rank) continue;
    std::vector<StridedView> views(l.inputs.size());
    bool ok = true;
    for (size_t k = 0; k < l.inputs.size() && ok; ++k) {
      ok = net.tensor(l.inputs[k]).dims == net.tensor(l.inputs[0]).dims &&
           net.tensor(l.inputs[k]).dtype == y.dtype && tracer.trace(l.inputs[k], &views[k]) &&
           views[k].root == views[0].root && views[k].dims == views[0].dims;
    }
    if (!ok || views[0].root == l.inputs[0]) continue;
    std::vector<int64_t> offsets;
    for (const StridedView& v : views) offsets.push_back(v.offset);
    std::vector<Atom> grid;
    if (!offset_atoms(offsets, &grid)) continue;
    // The concat's output as a view of the root: the grid outside the axis' own atoms.
    StridedView out = views[0];
    out.offset = offsets[0];
    out.dims[axis].insert(out.dims[axis].begin(), grid.begin(), grid.end());
    const Tensor& root = net.tensor(views[0].root);
    Dims factors;
    std::vector<int64_t> perm;
    if (root.dtype != y.dtype || !as_permutation(out, volume(root.dims), &factors, &perm)) continue;
    const std::string name = l.name;
    const TensorId y_id = l.outputs[0], root_id = views[0].root;
    std::vector<Layer> added = permutation_layers(net, name, root_id, factors, perm, y_id);
    rewrites.emplace_back(static_cast<int>(i), std::move(added));
  }
  return apply_rewrites(net, rewrites);
}

}  // namespace kiln
