// alias_views: marks reshape, flatten, squeeze and unsqueeze layers as views (`alias` = 1) so
// they cost nothing at run time: the output is the input's memory under another shape (see
// is_alias_layer in core/plan.h). Exact because every tensor of a network is dense row-major;
// channels-last layouts never reach a view (assign_layouts transposes back before one).
// A view that writes a network output stays a copy: the output lives in the caller's buffer.
// The builder runs this last, after tactics and right before memory planning.
#include "core/passes/passes.h"

namespace kiln {

bool alias_views(Network& net) {
  bool changed = false;
  for (auto& l : net.mutable_layers()) {
    bool view_op = l.op == "reshape" || l.op == "flatten" || l.op == "squeeze" || l.op == "unsqueeze";
    if (!view_op || is_alias_layer(l) || l.outputs.size() != 1 || net.is_output(l.outputs[0])) continue;
    if (net.tensor(l.inputs[0]).dtype != net.tensor(l.outputs[0]).dtype) continue;
    l.attrs.set("alias", int64_t{1});
    changed = true;
  }
  return changed;
}

}  // namespace kiln
