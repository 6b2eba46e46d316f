// collapse_transposes: a transpose whose output, seen through the view layers before it, reads a
// tensor in that tensor's own row-major order is a reshape of that tensor (the transposes cancel):
//   transpose(reshape(transpose(y, [0, 3, 1, 2]), [N, K, Ho * Wo]), [0, 2, 1]) == reshape(y, ...)
// (patchify_convolutions' NHWC -> NCHW transpose against ViT's flatten(2).transpose(1, 2)).
// Static shapes only (ViewTracer). The layers it skipped are left to eliminate_dead_layers.
// A matmul operand that is a 2-D transpose ([1, 0]) of another tensor reads that tensor with the
// matmul's transpose flag instead: torch's Linear is mm(x, t(W)), and when t(W) is too large to
// fold into a constant (VGG's 25088 x 4096 classifier), the matmul then reads W itself, a constant
// that fuse_gemm_epilogue turns into a fully_connected without copying anything at run time.
#include "core/passes/passes.h"
#include "core/passes/strided_view.h"
#include "core/plan.h"

namespace kiln {

bool collapse_transposes(Network& net) {
  const ViewTracer tracer(net);
  bool changed = false;
  for (auto& l : net.mutable_layers()) {
    // (A transpose of size-1 dims alone stays: the attention patterns match it, and alias_views
    // makes it a view in the end.)
    if (l.op != "transpose" || l.outputs.size() != 1 || moves_only_unit_dims(net, l)) continue;
    StridedView v;
    if (!tracer.trace(l.outputs[0], &v) || v.root == l.outputs[0]) continue;
    const Tensor& root = net.tensor(v.root);
    if (root.dtype != net.tensor(l.outputs[0]).dtype || !is_row_major(v, volume(root.dims))) continue;
    l.op = "reshape";
    l.inputs = {v.root};
    l.attrs = Attributes().set("shape", net.tensor(l.outputs[0]).dims);
    changed = true;
  }
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
