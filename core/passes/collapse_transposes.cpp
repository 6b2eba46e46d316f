// collapse_transposes: a transpose whose output, seen through the view layers before it, reads a
// tensor in that tensor's own row-major order is a reshape of that tensor (the transposes cancel):
//   transpose(reshape(transpose(y, [0, 3, 1, 2]), [N, K, Ho * Wo]), [0, 2, 1]) == reshape(y, ...)
// (patchify_convolutions' NHWC -> NCHW transpose against ViT's flatten(2).transpose(1, 2)).
// Static shapes only (ViewTracer). The layers it skipped are left to eliminate_dead_layers.
// With `compose` (the builder's second run, after assign_layouts) a transpose that reads, through
// views, another transpose's output in any order that permutes the first one's input becomes one
// transpose of that input (reshape, transpose, reshape): ConvNeXt's NHWC LayerNorm, the model's
// permute to NCHW and the layout pass's transpose back to NHWC cancel; its downsampling's NCHW
// permute and patch transpose become one.
// Also with `compose`, first: a split whose every output is read only by a transpose of one
// permutation becomes the transpose of the split's input, split along the permuted axis
// (transpose(split(x)) == split(transpose(x))): ShuffleNet's channel shuffle ends in an NCHW split
// whose halves the layout pass transposes back to NHWC; as one transpose of the shuffle's output,
// that transpose then composes with the shuffle's own into one (two copies and a split fewer).
// A matmul operand that is a 2-D transpose ([1, 0]) of another tensor reads that tensor with the
// matmul's transpose flag instead: torch's Linear is mm(x, t(W)), and when t(W) is too large to
// fold into a constant (VGG's 25088 x 4096 classifier), the matmul then reads W itself, a constant
// that fuse_gemm_epilogue turns into a fully_connected without copying anything at run time.
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/passes/strided_view.h"
#include "core/plan.h"
#include "ir/ops/shape.h"

namespace kiln {

namespace {

// `t` is made by view layers (reshape, flatten, squeeze, unsqueeze, transpose, slice) from another
// tensor, and one of them is a transpose that moves data.
bool after_a_moving_transpose(const Network& net, const std::vector<int>& producer, TensorId t) {
  for (int p = producer[t]; p >= 0; p = producer[t]) {
    const Layer& l = net.layers()[p];
    const bool view = l.op == "reshape" || l.op == "flatten" || l.op == "squeeze" || l.op == "unsqueeze" ||
                      l.op == "transpose" || l.op == "slice";
    if (!view || l.inputs.empty()) return false;
    if (l.op == "transpose" && !moves_only_unit_dims(net, l)) return true;
    t = l.inputs[0];
  }
  return false;
}

// split(x, axis) -> transposes of one permutation, each its output's only reader
//   -> split(transpose(x), perm^-1[axis]). True when some split changed.
bool transposes_above_splits(Network& net) {
  std::vector<int> uses(net.tensors().size(), 0), reader(net.tensors().size(), -1);
  for (size_t i = 0; i < net.layers().size(); ++i) {
    for (TensorId t : net.layers()[i].inputs) {
      ++uses[t];
      reader[t] = static_cast<int>(i);
    }
  }
  std::set<std::string> names;
  for (const auto& l : net.layers()) names.insert(l.name);
  std::vector<std::pair<int, std::vector<Layer>>> rewrites;  // split index -> transpose + split
  std::set<int> removed;                                     // the transposes after those splits
  for (size_t i = 0; i < net.layers().size(); ++i) {
    const Layer& split = net.layers()[i];
    if (split.op != "split" || split.inputs.size() != 1 || split.outputs.size() < 2) continue;
    const Dims& x = net.tensor(split.inputs[0]).dims;
    const auto rank = static_cast<int64_t>(x.size());
    std::vector<int64_t> perm;
    std::vector<int> transposes;
    for (TensorId out : split.outputs) {
      const int r = uses[out] == 1 && !net.is_output(out) ? reader[out] : -1;
      if (r < 0 || net.layers()[r].op != "transpose") break;
      const std::vector<int64_t> p = resolve_perm(net.layers()[r], rank);
      if (!perm.empty() && p != perm) break;
      perm = p;
      transposes.push_back(r);
    }
    // (Transposes of unit dims only are views already: nothing to gain.)
    if (transposes.size() != split.outputs.size() || !is_static(x) ||
        moves_only_unit_dims(net, net.layers()[transposes[0]]))
      continue;
    int64_t axis = split.attrs.get_int("axis", int64_t{0});
    if (axis < 0) axis += rank;
    Dims moved(x.size());
    int64_t new_axis = -1;
    for (int64_t d = 0; d < rank; ++d) {
      moved[static_cast<size_t>(d)] = x[static_cast<size_t>(perm[static_cast<size_t>(d)])];
      if (perm[static_cast<size_t>(d)] == axis) new_axis = d;
    }
    Layer transpose;
    transpose.name = unique_name(names, split.name + "/transposed");
    transpose.op = "transpose";
    transpose.inputs = split.inputs;
    transpose.attrs.set("perm", perm);
    const DataType dtype = net.tensor(split.inputs[0]).dtype;
    Layer moved_split = net.layers()[i];  // a copy, made before the tensor list grows
    transpose.outputs = {add_pass_tensor(net, transpose.name, dtype, moved)};
    moved_split.inputs = transpose.outputs;
    moved_split.attrs.set("axis", new_axis);
    for (size_t k = 0; k < transposes.size(); ++k) {
      moved_split.outputs[k] = net.layers()[transposes[k]].outputs[0];
      removed.insert(transposes[k]);
    }
    rewrites.emplace_back(static_cast<int>(i), std::vector<Layer>{transpose, moved_split});
  }
  if (rewrites.empty()) return false;
  std::vector<Layer> kept;
  auto& layers = net.mutable_layers();
  size_t next = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (next < rewrites.size() && rewrites[next].first == static_cast<int>(i)) {
      for (Layer& l : rewrites[next++].second) kept.push_back(std::move(l));
    } else if (!removed.count(static_cast<int>(i))) {
      kept.push_back(std::move(layers[i]));
    }
  }
  layers = std::move(kept);
  net.compact();
  return true;
}

}  // namespace

bool collapse_transposes(Network& net, bool compose) {
  bool changed = compose && transposes_above_splits(net);
  const ViewTracer tracer(net);
  const std::vector<int> producers = net.producers();
  std::vector<std::pair<int, std::vector<Layer>>> rewrites;  // transpose index -> its replacement
  for (size_t i = 0; i < net.layers().size(); ++i) {
    Layer& l = net.mutable_layers()[i];
    // (A transpose of size-1 dims alone stays: the attention patterns match it, and alias_views
    // makes it a view in the end.)
    if (l.op != "transpose" || l.outputs.size() != 1 || moves_only_unit_dims(net, l)) continue;
    StridedView v;
    if (!tracer.trace(l.outputs[0], &v) || v.root == l.outputs[0]) continue;
    const Tensor& root = net.tensor(v.root);
    if (root.dtype != net.tensor(l.outputs[0]).dtype) continue;
    if (is_row_major(v, volume(root.dims))) {
      l.op = "reshape";
      l.inputs = {v.root};
      l.attrs = Attributes().set("shape", net.tensor(l.outputs[0]).dims);
      changed = true;
      continue;
    }
    Dims factors;
    std::vector<int64_t> perm;
    if (compose && after_a_moving_transpose(net, producers, l.inputs[0]) &&
        as_permutation(v, volume(root.dims), &factors, &perm)) {
      const TensorId from = v.root, out = l.outputs[0];
      const std::string name = l.name;
      rewrites.emplace_back(static_cast<int>(i), permutation_layers(net, name, from, factors, perm, out));
    }
  }
  if (!rewrites.empty()) {
    replace_layers(net, rewrites);
    changed = true;
  }
  // After assign_layouts no later pass collects what the rewrites bypassed.
  if (changed && compose) eliminate_dead_layers(net);
  const std::vector<int> producer = net.producers();
  for (auto& l : net.mutable_layers()) {
    if (l.op != "matmul") continue;
    for (int side = 0; side < 2; ++side) {
      const char* flag = side == 0 ? "transpose_a" : "transpose_b";
      const int p = producer[l.inputs[side]];
      if (p < 0 || l.attrs.get_int(flag, int64_t{0}) != 0) continue;
      const Layer& t = net.layers()[p];
      if (t.op != "transpose" || net.tensor(t.inputs[0]).dims.size() != 2 ||
          t.attrs.get_ints("perm", t.name) != std::vector<int64_t>{1, 0})
        continue;
      l.inputs[side] = t.inputs[0];
      l.attrs.set(flag, int64_t{1});
      changed = true;
    }
  }
  return changed;
}

}  // namespace kiln
