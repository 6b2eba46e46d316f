// concat_views_to_transposes: a concat whose inputs are strided views of one tensor that together
// read it as a permutation of its dims is that permutation: reshape, transpose, reshape. Swin's
// patch merging, cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1),
// is a space-to-depth of x [B, H, W, C]:
//   reshape(x, [B, H/2, 2, W/2, 2, C]) -> transpose [0, 1, 3, 4, 2, 5] -> reshape [B, H/2, W/2, 4C]
// one copy instead of six slices and a concat. The inputs must be views of equal dims (ViewTracer:
// reshapes, transposes, slices) whose offsets step through a grid of at most two strides; static
// shapes. The layers it bypasses are left to eliminate_dead_layers.
#include <algorithm>
#include <numeric>
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
    // Its atoms must be the root's row-major factorization in some order.
    std::vector<Atom> atoms;
    for (const auto& d : out.dims) atoms.insert(atoms.end(), d.begin(), d.end());
    std::vector<size_t> order(atoms.size());  // atoms by stride, outermost first
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return atoms[a].stride > atoms[b].stride; });
    int64_t expect = 1;
    for (size_t k = order.size(); k-- > 0 && ok;) {
      ok = atoms[order[k]].stride == expect;
      expect *= atoms[order[k]].size;
    }
    const Tensor& root = net.tensor(views[0].root);
    if (!ok || out.offset != 0 || expect != volume(root.dims) || root.dtype != y.dtype) continue;
    Dims factors;
    for (size_t k : order) factors.push_back(atoms[k].size);
    std::vector<int64_t> perm(atoms.size());  // output atom j reads factor perm[j]
    for (size_t j = 0; j < atoms.size(); ++j)
      perm[j] = std::find(order.begin(), order.end(), j) - order.begin();
    Dims permuted;
    for (int64_t p : perm) permuted.push_back(factors[static_cast<size_t>(p)]);

    auto tensor = [&](const std::string& suffix, const Dims& dims) {
      Tensor t;
      t.name = l.name + suffix;
      for (int n = 1; net.find_tensor(t.name) >= 0; ++n) t.name = l.name + suffix + std::to_string(n);
      t.dtype = y.dtype;
      t.dims = dims;
      return net.restore_tensor(t);
    };
    std::vector<Layer> added(3);
    added[0].name = l.name + "/factors";
    added[0].op = "reshape";
    added[0].inputs = {views[0].root};
    added[0].outputs = {tensor("/factors", factors)};
    added[0].attrs.set("shape", factors);
    added[1].name = l.name + "/order";
    added[1].op = "transpose";
    added[1].inputs = added[0].outputs;
    added[1].outputs = {tensor("/order", permuted)};
    added[1].attrs.set("perm", perm);
    added[2].name = l.name;
    added[2].op = "reshape";
    added[2].inputs = added[1].outputs;
    added[2].outputs = l.outputs;
    added[2].attrs.set("shape", y.dims);
    rewrites.emplace_back(static_cast<int>(i), std::move(added));
  }
  if (rewrites.empty()) return false;
  auto& layers = net.mutable_layers();
  for (auto r = rewrites.rbegin(); r != rewrites.rend(); ++r) {
    layers.erase(layers.begin() + r->first);
    layers.insert(layers.begin() + r->first, r->second.begin(), r->second.end());
  }
  net.reindex();
  eliminate_dead_layers(net);
  net.revalidate();
  return true;
}

}  // namespace kiln
