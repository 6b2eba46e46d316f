// unflatten_batched_matmuls: a matmul whose operands are views that flatten the batch dims of other
// tensors multiplies those tensors themselves, their batch dims kept, an operand that the views
// transpose read through the matmul's transpose flag. einsum's decomposition writes attention so
// (MaxViT: q, k [1, 64, 2, 49, 32] -> unsqueeze / permute / view -> [128, 49, 32] and [128, 32, 49]):
//   matmul(view(q, [128, 49, 32]), view(transpose(k), [128, 32, 49]))
//     -> reshape(matmul(q, k, transpose_b = 1), [128, 49, 49])
// Then a chain of layout-preserving views (reshape, flatten, squeeze, unsqueeze, a transpose of
// size-1 dims) that ends in the dims of the tensor it starts from is that tensor: its readers read
// the tensor itself. Together they leave such attention as matmul / add / softmax / matmul on the
// model's own tensors, which fuse_attention matches, and drop the transposes that only served the
// flattening. Static shapes, batch dims equal on both sides (no broadcast). The layers it
// bypasses are left to eliminate_dead_layers, which it runs when it changed something.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "core/passes/passes.h"
#include "core/passes/strided_view.h"
#include "ir/ops/shape.h"

namespace kiln {
namespace {

bool reshaping_op(const std::string& op) {
  return op == "reshape" || op == "flatten" || op == "squeeze" || op == "unsqueeze";
}

// A tensor that a matmul operand is a batch-flattening view of.
struct Source {
  TensorId tensor = -1;
  bool transposed = false;  // the operand is the source with its last two dims swapped
  Dims batch;               // the source's batch dims
};

class Sources {
 public:
  explicit Sources(const Network& net) : net_(net), tracer_(net), producer_(net.producers()) {}

  // The tensors up `operand`'s chain of view layers (itself first) that it is a batch-flattening
  // view of, plainly or transposed.
  std::vector<Source> of(TensorId operand) const {
    std::vector<Source> found;
    const Tensor& x = net_.tensor(operand);
    StridedView vx;
    if (x.dims.size() < 3 || !tracer_.trace(operand, &vx)) return found;
    const auto rank = x.dims.size();
    const int64_t batch = volume(Dims(x.dims.begin(), x.dims.end() - 2));
    for (TensorId c = operand;;) {
      const Tensor& t = net_.tensor(c);
      StridedView vc;
      if (t.dtype == x.dtype && t.dims.size() >= 3 && tracer_.trace(c, &vc)) {
        const Dims cb(t.dims.begin(), t.dims.end() - 2);
        const int64_t m = t.dims[t.dims.size() - 2], n = t.dims.back();
        if (volume(cb) == batch) {
          for (bool transposed : {false, true}) {
            Dims flat(x.dims.begin(), x.dims.end() - 2);
            flat.push_back(transposed ? x.dims[rank - 1] : x.dims[rank - 2]);
            flat.push_back(transposed ? x.dims[rank - 2] : x.dims[rank - 1]);
            if (flat[rank - 2] != m || flat[rank - 1] != n) continue;
            StridedView v;
            if (!reshape_view(vc, flat, &v)) continue;
            if (transposed) std::swap(v.dims[rank - 2], v.dims[rank - 1]);
            if (same_view(v, vx)) found.push_back({c, transposed, cb});
          }
        }
      }
      const int p = producer_[c];
      if (p < 0) break;
      const Layer& l = net_.layers()[p];
      if ((!reshaping_op(l.op) && l.op != "transpose") || l.outputs.size() != 1) break;
      c = l.inputs[0];
    }
    return found;
  }

 private:
  const Network& net_;
  ViewTracer tracer_;
  std::vector<int> producer_;
};

bool unflatten_matmuls(Network& net) {
  auto sources = std::make_unique<Sources>(net);  // renewed after each insertion (producers move)
  bool changed = false;
  for (int i = 0; i < static_cast<int>(net.layers().size()); ++i) {
    const Layer mm = net.layers()[i];  // a copy: a layer is inserted below
    if (mm.op != "matmul" || mm.inputs.size() != 2 || mm.attrs.get_int("transpose_a", int64_t{0}) ||
        mm.attrs.get_int("transpose_b", int64_t{0}))
      continue;
    const Dims &a = net.tensor(mm.inputs[0]).dims, &b = net.tensor(mm.inputs[1]).dims;
    if (a.size() < 3 || a.size() != b.size() || !is_static(a) || !is_static(b) ||
        !std::equal(a.begin(), a.end() - 2, b.begin()))
      continue;
    // The farthest sources with equal batch dims (the most layers bypassed).
    const std::vector<Source> as = sources->of(mm.inputs[0]), bs = sources->of(mm.inputs[1]);
    const Source *sa = nullptr, *sb = nullptr;
    for (auto x = as.rbegin(); x != as.rend() && !sa; ++x) {
      for (auto y = bs.rbegin(); y != bs.rend(); ++y) {
        if (x->batch == y->batch) {
          sa = &*x;
          sb = &*y;
          break;
        }
      }
    }
    if (!sa || (sa->tensor == mm.inputs[0] && sb->tensor == mm.inputs[1])) continue;
    const Tensor& out = net.tensor(mm.outputs[0]);
    Tensor batched;
    batched.name = out.name + "/batched";
    for (int n = 1; net.find_tensor(batched.name) >= 0; ++n)
      batched.name = out.name + "/batched" + std::to_string(n);
    batched.dtype = out.dtype;
    batched.dims = sa->batch;
    batched.dims.push_back(out.dims[out.dims.size() - 2]);
    batched.dims.push_back(out.dims.back());
    const TensorId id = net.restore_tensor(batched);
    Layer matmul = mm;
    matmul.name = mm.name + "/batched";
    matmul.inputs = {sa->tensor, sb->tensor};
    matmul.outputs = {id};
    if (sa->transposed) matmul.attrs.set("transpose_a", int64_t{1});
    if (sb->transposed) matmul.attrs.set("transpose_b", int64_t{1});
    Layer& old = net.mutable_layers()[i];
    old.op = "reshape";
    old.inputs = {id};
    old.attrs = Attributes().set("shape", out.dims);
    net.mutable_layers().insert(net.mutable_layers().begin() + i, matmul);
    ++i;
    changed = true;
    net.reindex();
    sources = std::make_unique<Sources>(net);
  }
  return changed;
}

// Readers of a view chain's end that has the dims of the chain's start read the start.
bool skip_identity_view_chains(Network& net) {
  const std::vector<int> producer = net.producers();
  auto layout_view = [&](const Layer& l) {
    return l.outputs.size() == 1 && l.inputs.size() >= 1 &&
           (reshaping_op(l.op) || moves_only_unit_dims(net, l)) &&
           net.tensor(l.inputs[0]).dtype == net.tensor(l.outputs[0]).dtype;
  };
  std::vector<TensorId> replace(net.tensors().size(), -1);
  for (const Layer& l : net.layers()) {
    if (!layout_view(l) || net.is_output(l.outputs[0]) || !is_static(net.tensor(l.outputs[0]).dims)) continue;
    TensorId start = l.inputs[0];
    for (int p = producer[start]; p >= 0 && layout_view(net.layers()[p]); p = producer[start])
      start = net.layers()[p].inputs[0];
    if (net.tensor(start).dims == net.tensor(l.outputs[0]).dims) replace[l.outputs[0]] = start;
  }
  bool changed = false;
  for (Layer& l : net.mutable_layers()) {
    for (TensorId& t : l.inputs) {
      if (replace[t] >= 0) {
        t = replace[t];
        changed = true;
      }
    }
  }
  return changed;
}

}  // namespace

bool unflatten_batched_matmuls(Network& net) {
  bool changed = unflatten_matmuls(net);
  changed |= skip_identity_view_chains(net);
  if (changed) {
    eliminate_dead_layers(net);
    net.revalidate();
  }
  return changed;
}

}  // namespace kiln
