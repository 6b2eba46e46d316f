// fold_channel_shuffles: a concat whose output is then read through a transpose that interleaves
// the concatenated inputs (ShuffleNet's channel shuffle after each unit's concat) is one concat
// along a new axis inside the old one:
//
//   c = concat(x_1..x_g; axis a)            each x_i of size m along a
//   t = transpose(view(c), ...) == reshape(c, [.., g, m, ..]) transposed to [.., m, g, ..]
//     -> t = reshape(concat(reshape(x_i, [.., m, 1, ..]) for each i; axis a + 1), t's dims)
//
// because element (.., j, i, ..) of the stack is element (.., i m + j, ..) of c. Two copies (the
// concat and the transpose) become one; the reshapes are views. The test is on memory order, not
// on the layers' shapes: t's output as a strided view of c (ViewTracer: the reshapes and the
// transpose between them, whatever dims they take on the way, as assign_layouts leaves them in
// channels-last plans) must read c's elements in the stack's row-major order. c and the views up
// to t must have no other reader (else nothing is saved); they are left to eliminate_dead_layers.
// Static shapes; exact (data movement only).
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/passes/strided_view.h"
#include "ir/op_schema.h"

namespace kiln {
namespace {

// The concat that tensor `t` is a chain of single-reader view layers of (t itself excluded from the
// reader check: it is the transpose's input), or nullptr.
const Layer* concat_behind_views(const Network& net, const std::vector<int>& producer,
                                 const std::vector<int>& readers, TensorId t) {
  for (int steps = 0; steps < 8; ++steps) {
    const int p = producer[static_cast<size_t>(t)];
    if (p < 0) return nullptr;
    const Layer& l = net.layers()[static_cast<size_t>(p)];
    if (l.outputs.size() != 1 || l.inputs.empty()) return nullptr;
    if (l.op == "concat") return &l;
    if (!has_trait(l.op, kView)) return nullptr;
    t = l.inputs[0];
    if (readers[static_cast<size_t>(t)] != 1 || net.is_output(t)) return nullptr;
  }
  return nullptr;
}

}  // namespace

bool fold_channel_shuffles(Network& net) {
  const ViewTracer tracer(net);
  const std::vector<int> readers = reader_counts(net);
  const std::vector<int> producer = net.producers();
  std::set<std::string> names = names_in_use(net);
  std::vector<std::pair<int, std::vector<Layer>>> rewrites;  // transpose index -> its replacement
  for (size_t i = 0; i < net.layers().size(); ++i) {
    const Layer& t = net.layers()[i];
    if (t.op != "transpose" || t.inputs.size() != 1 || t.outputs.size() != 1) continue;
    if (readers[static_cast<size_t>(t.inputs[0])] != 1 || net.is_output(t.inputs[0])) continue;
    const Layer* c = concat_behind_views(net, producer, readers, t.inputs[0]);
    if (!c || c->inputs.size() < 2 || net.is_output(c->outputs[0])) continue;
    // Copies: the tensors added below may move the network's tensor list.
    const Tensor y = net.tensor(c->outputs[0]);
    const Dims x = net.tensor(c->inputs[0]).dims;
    const Dims out_dims = net.tensor(t.outputs[0]).dims;
    if (!is_static(y.dims) || !is_static(x)) continue;
    const auto rank = static_cast<int64_t>(y.dims.size());
    int64_t axis = c->attrs.get_int("axis", int64_t{0});
    if (axis < 0) axis += rank;
    if (axis < 0 || axis >= rank) continue;
    bool same = true;
    for (TensorId in : c->inputs) same &= net.tensor(in).dims == x && net.tensor(in).dtype == y.dtype;
    const auto g = static_cast<int64_t>(c->inputs.size());
    const int64_t m = x[static_cast<size_t>(axis)];
    if (!same || m < 2) continue;  // m == 1: the concat alone already interleaves
    // The stack [.., m, g, ..] as a view of c; then read in t's dims.
    Dims stack(y.dims.begin(), y.dims.begin() + axis);
    stack.push_back(m);
    stack.push_back(g);
    stack.insert(stack.end(), y.dims.begin() + axis + 1, y.dims.end());
    int64_t inner = 1;
    for (int64_t d = axis + 1; d < rank; ++d) inner *= y.dims[static_cast<size_t>(d)];
    StridedView stacked = row_major(c->outputs[0], y.dims);
    stacked.dims.insert(stacked.dims.begin() + axis, std::vector<Atom>{});
    stacked.dims[static_cast<size_t>(axis)] = {{m, inner}};
    stacked.dims[static_cast<size_t>(axis) + 1] = {{g, m * inner}};
    StridedView seen, expected;
    if (!tracer.trace(t.outputs[0], &seen) || seen.root != c->outputs[0]) continue;
    if (!reshape_view(stacked, out_dims, &expected) || !same_view(seen, expected)) continue;

    // reshape(x_i, [.., m, 1, ..]) each, concat on axis + 1, reshape to t's dims.
    std::vector<Layer> added;
    Dims unit = x;
    unit.insert(unit.begin() + axis + 1, 1);
    Layer joined;
    joined.name = unique_name(names, t.name + "/interleave");
    joined.op = "concat";
    joined.attrs.set("axis", axis + 1).set("fused", fused_names(*c) + "," + fused_names(t));
    for (TensorId in : c->inputs) {
      Layer r;
      r.name = unique_name(names, joined.name + "/" + std::to_string(added.size()));
      r.op = "reshape";
      r.inputs = {in};
      r.outputs = {add_pass_tensor(net, r.name, y.dtype, unit)};
      r.attrs.set("shape", unit);
      joined.inputs.push_back(r.outputs[0]);
      added.push_back(std::move(r));
    }
    joined.outputs = {add_pass_tensor(net, joined.name, y.dtype, stack)};
    Layer back;
    back.name = unique_name(names, t.name + "/interleaved");
    back.op = "reshape";
    back.inputs = joined.outputs;
    back.outputs = t.outputs;  // the transpose's readers read the same tensor
    back.attrs.set("shape", out_dims);
    added.push_back(std::move(joined));
    added.push_back(std::move(back));
    rewrites.emplace_back(static_cast<int>(i), std::move(added));
  }
  return apply_rewrites(net, rewrites);
}

}  // namespace kiln
