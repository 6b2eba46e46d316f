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
// A matmul operand that is a 2-D transpose ([1, 0]) of another tensor reads that tensor with the
// matmul's transpose flag instead: torch's Linear is mm(x, t(W)), and when t(W) is too large to
// fold into a constant (VGG's 25088 x 4096 classifier), the matmul then reads W itself, a constant
// that fuse_gemm_epilogue turns into a fully_connected without copying anything at run time.
#include <string>
#include <utility>
#include <vector>

#include "core/passes/passes.h"
#include "core/passes/strided_view.h"
#include "core/plan.h"

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

}  // namespace

bool collapse_transposes(Network& net, bool compose) {
  const ViewTracer tracer(net);
  const std::vector<int> producers = net.producers();
  bool changed = false;
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
    auto& layers = net.mutable_layers();
    for (auto r = rewrites.rbegin(); r != rewrites.rend(); ++r) {
      layers.erase(layers.begin() + r->first);
      layers.insert(layers.begin() + r->first, r->second.begin(), r->second.end());
    }
    net.reindex();
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
