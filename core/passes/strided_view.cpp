#include "core/passes/strided_view.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "ir/ops/shape.h"

namespace kiln {
namespace {

// The value of a one-element int32/int64 constant.
bool constant_index(const Tensor& t, int64_t* value) {
  if (t.kind != TensorKind::kConstant || volume(t.dims) != 1 || !t.data) return false;
  if (t.dtype == DataType::kInt64) {
    std::memcpy(value, t.data->data(), sizeof(int64_t));
    return true;
  }
  if (t.dtype == DataType::kInt32) {
    int32_t v = 0;
    std::memcpy(&v, t.data->data(), sizeof(int32_t));
    *value = v;
    return true;
  }
  return false;
}

}  // namespace

StridedView row_major(TensorId root, const Dims& dims) {
  StridedView v;
  v.root = root;
  int64_t stride = 1;
  v.dims.resize(dims.size());
  for (size_t i = dims.size(); i-- > 0;) {
    if (dims[i] != 1) v.dims[i].push_back({dims[i], stride});
    stride *= dims[i];
  }
  return v;
}

bool reshape_view(const StridedView& v, const Dims& dims, StridedView* out) {
  std::vector<Atom> atoms;
  for (const auto& d : v.dims) atoms.insert(atoms.end(), d.begin(), d.end());
  *out = {v.root, v.offset, std::vector<std::vector<Atom>>(dims.size())};
  size_t next = 0;
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t need = dims[i];
    while (need > 1) {
      if (next >= atoms.size()) return false;
      Atom& a = atoms[next];
      if (a.size <= need) {
        if (need % a.size != 0) return false;
        out->dims[i].push_back(a);
        need /= a.size;
        ++next;
      } else {
        if (a.size % need != 0) return false;
        out->dims[i].push_back({need, a.stride * (a.size / need)});  // the outer part
        a.size /= need;
        need = 1;
      }
    }
  }
  return next == atoms.size();
}

bool same_view(const StridedView& a, const StridedView& b) {
  if (a.root != b.root || a.offset != b.offset || a.dims.size() != b.dims.size()) return false;
  auto merged = [](const std::vector<Atom>& atoms) {
    std::vector<Atom> out;
    for (const Atom& x : atoms) {
      if (!out.empty() && out.back().stride == x.size * x.stride) {
        out.back() = {out.back().size * x.size, x.stride};
      } else {
        out.push_back(x);
      }
    }
    return out;
  };
  for (size_t d = 0; d < a.dims.size(); ++d) {
    const std::vector<Atom> x = merged(a.dims[d]), y = merged(b.dims[d]);
    if (x.size() != y.size()) return false;
    for (size_t k = 0; k < x.size(); ++k) {
      if (x[k].size != y[k].size || x[k].stride != y[k].stride) return false;
    }
  }
  return true;
}

bool as_permutation(const StridedView& v, int64_t root_volume, Dims* factors, std::vector<int64_t>* perm) {
  if (v.offset != 0) return false;
  std::vector<Atom> atoms;
  for (const auto& d : v.dims) atoms.insert(atoms.end(), d.begin(), d.end());
  if (atoms.size() > static_cast<size_t>(kMaxRank)) return false;  // the transpose's rank limit
  std::vector<size_t> order(atoms.size());                         // atoms by stride, outermost first
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return atoms[a].stride > atoms[b].stride; });
  int64_t expect = 1;
  for (size_t k = order.size(); k-- > 0;) {
    if (atoms[order[k]].stride != expect) return false;
    expect *= atoms[order[k]].size;
  }
  if (expect != root_volume) return false;
  factors->clear();
  for (size_t k : order) factors->push_back(atoms[k].size);
  perm->assign(atoms.size(), 0);
  for (size_t k = 0; k < order.size(); ++k) (*perm)[order[k]] = static_cast<int64_t>(k);
  return true;
}

std::vector<Layer> permutation_layers(Network& net, const std::string& name, TensorId root,
                                      const Dims& factors, const std::vector<int64_t>& perm, TensorId out) {
  const DataType dtype = net.tensor(out).dtype;
  const Dims out_dims = net.tensor(out).dims;
  Dims permuted;
  for (int64_t p : perm) permuted.push_back(factors[static_cast<size_t>(p)]);
  auto tensor = [&](const std::string& suffix, const Dims& dims) {
    return add_pass_tensor(net, name + suffix, dtype, dims);
  };
  std::vector<Layer> layers(3);
  layers[0].name = name + "/factors";
  layers[0].op = "reshape";
  layers[0].inputs = {root};
  layers[0].outputs = {tensor("/factors", factors)};
  layers[0].attrs.set("shape", factors);
  layers[1].name = name + "/order";
  layers[1].op = "transpose";
  layers[1].inputs = layers[0].outputs;
  layers[1].outputs = {tensor("/order", permuted)};
  layers[1].attrs.set("perm", perm);
  layers[2].name = name;
  layers[2].op = "reshape";
  layers[2].inputs = layers[1].outputs;
  layers[2].outputs = {out};
  layers[2].attrs.set("shape", out_dims);
  return layers;
}

void replace_layers(Network& net, const std::vector<std::pair<int, std::vector<Layer>>>& rewrites) {
  auto& layers = net.mutable_layers();
  for (auto r = rewrites.rbegin(); r != rewrites.rend(); ++r) {  // back to front: indices stay valid
    layers.erase(layers.begin() + r->first);
    layers.insert(layers.begin() + r->first, r->second.begin(), r->second.end());
  }
  net.reindex();
}

bool apply_rewrites(Network& net, const std::vector<std::pair<int, std::vector<Layer>>>& rewrites) {
  if (rewrites.empty()) return false;
  replace_layers(net, rewrites);
  eliminate_dead_layers(net);
  net.revalidate();
  return true;
}

bool dim_stride(const std::vector<Atom>& atoms, int64_t* stride) {
  if (atoms.empty()) return false;
  for (size_t k = 0; k + 1 < atoms.size(); ++k) {
    if (atoms[k].stride != atoms[k + 1].size * atoms[k + 1].stride) return false;
  }
  *stride = atoms.back().stride;
  return true;
}

bool is_row_major(const StridedView& v, int64_t root_volume) {
  if (v.offset != 0) return false;
  int64_t expect = 1, count = 1;  // the next atom's stride in row-major order; elements so far
  for (size_t d = v.dims.size(); d-- > 0;) {
    for (size_t k = v.dims[d].size(); k-- > 0;) {
      const Atom& a = v.dims[d][k];
      if (a.stride != expect) return false;
      expect *= a.size;
      count *= a.size;
    }
  }
  return count == root_volume;
}

ViewTracer::ViewTracer(const Network& net) : net_(net), producer_(net.producers()) {}

bool ViewTracer::trace(TensorId t, StridedView* v) const {
  const Tensor& x = net_.tensor(t);
  // An empty tensor is no view of anything worth tracing (and its zero-size dims would divide
  // the atom arithmetic by zero).
  if (!is_static(x.dims) || std::find(x.dims.begin(), x.dims.end(), int64_t{0}) != x.dims.end()) return false;
  const int p = t < static_cast<TensorId>(producer_.size()) ? producer_[t] : -1;
  if (p >= 0 && step(net_.layers()[p], t, v)) return true;
  *v = row_major(t, x.dims);
  return true;
}

// `out` (the output of view layer `l`) as a view of what l's input is a view of.
bool ViewTracer::step(const Layer& l, TensorId out, StridedView* v) const {
  const bool reshaping = l.op == "reshape" || l.op == "flatten" || l.op == "squeeze" || l.op == "unsqueeze";
  if (!reshaping && l.op != "transpose" && l.op != "gather" && l.op != "slice") return false;
  if (l.outputs.size() != 1 || net_.tensor(l.inputs[0]).dtype != net_.tensor(out).dtype) return false;
  StridedView in;
  if (!trace(l.inputs[0], &in)) return false;
  const Dims& in_dims = net_.tensor(l.inputs[0]).dims;
  const Dims& dims = net_.tensor(out).dims;
  const auto rank = static_cast<int64_t>(in_dims.size());
  if (reshaping) return reshape_view(in, dims, v);
  if (l.op == "slice") {
    // Each sliced dim of one atom (n, stride) becomes (its new size, stride * step) from
    // start * stride on; a dim of several atoms is traced only when the slice keeps it whole.
    if (l.inputs.size() != 1) return false;
    const SliceSpec spec = resolve_slice(l, in_dims);
    *v = in;
    for (int64_t d = 0; d < rank; ++d) {
      if (spec.out[d] == in_dims[d] && spec.start[d] == 0 && spec.step[d] == 1) continue;
      std::vector<Atom>& atoms = v->dims[d];
      if (atoms.size() != 1) return false;
      v->offset += spec.start[d] * atoms[0].stride;
      if (spec.out[d] == 1) {
        atoms.clear();
      } else {
        atoms[0] = {spec.out[d], atoms[0].stride * spec.step[d]};
      }
    }
    return true;
  }
  if (l.op == "transpose") {
    const std::vector<int64_t> perm = resolve_perm(l, rank);
    *v = {in.root, in.offset, {}};
    for (int64_t d = 0; d < rank; ++d) v->dims.push_back(in.dims[perm[d]]);
    return true;
  }
  // gather of one constant index: select (the axis goes) or a one-element index list (it stays).
  int64_t index = 0;
  if (l.inputs.size() != 2 || !constant_index(net_.tensor(l.inputs[1]), &index)) return false;
  int64_t axis = l.attrs.has("axis") ? l.attrs.get_int("axis", l.name) : 0;
  if (axis < 0) axis += rank;
  if (axis < 0 || axis >= rank) return false;
  if (index < 0) index += in_dims[axis];
  if (index < 0 || index >= in_dims[axis]) return false;
  *v = in;
  const std::vector<Atom>& atoms = in.dims[axis];
  for (size_t k = atoms.size(); k-- > 0;) {  // the index's mixed-radix digits, innermost first
    v->offset += (index % atoms[k].size) * atoms[k].stride;
    index /= atoms[k].size;
  }
  if (static_cast<int64_t>(dims.size()) == rank - 1) {
    v->dims.erase(v->dims.begin() + axis);
  } else if (static_cast<int64_t>(dims.size()) == rank) {
    v->dims[axis].clear();
  } else {
    return false;
  }
  return true;
}

}  // namespace kiln
