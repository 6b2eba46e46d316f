// alias_views: marks reshape, flatten, squeeze and unsqueeze layers as views (`alias` = 1) so
// they cost nothing at run time: the output is the input's memory under another shape (see
// is_alias_layer in core/plan.h). Exact because every tensor of a network is dense row-major;
// channels-last layouts never reach a view (assign_layouts transposes back before one).
// A gather of one leading slab (select(0, i) of [3, S, B, E]: torch's MultiheadAttention picks q,
// k and v so) is a view too, at a byte offset (slab_view_offset in core/plan.h), and so is a
// transpose that moves only size-1 dims ([1, S, E] -> [S, 1, E]). A view that
// writes a network output stays a copy: the output lives in the caller's buffer.
// The builder runs this last, after tactics and right before memory planning.
#include "core/passes/passes.h"

namespace kiln {

bool alias_views(Network& net) {
  bool changed = false;
  for (auto& l : net.mutable_layers()) {
    if (!can_be_view(net, l) || is_alias_layer(l) || l.outputs.size() != 1 || net.is_output(l.outputs[0]))
      continue;
    if (net.tensor(l.inputs[0]).dtype != net.tensor(l.outputs[0]).dtype) continue;
    l.attrs.set("alias", int64_t{1});
    changed = true;
  }
  return changed;
}

}  // namespace kiln
