// remove_noops: drops layers that compute y = x by pointing y's consumers at x: identity, and
// layers whose attributes make them copies: a pad of zeros, a slice that keeps every element
// (steps 1, static dims unchanged), a transpose by the identity permutation, a cast to the
// input's own dtype, a reshape or expand to the input's own static dims (torchvision's Swin pads
// each window grid by (size - W % size) % size, zero at 224 x 224, and slices it back).
// An expand that only pointwise readers read goes too: they broadcast its input themselves.
// A no-op whose output is a network output needs a buffer of its own, the binding's: there, when
// its input is the output of a computing layer (not a view) and no network input or output, that
// layer writes the binding itself and the input's other readers read it there, instead of a copy
// (transformers decoders return each layer's key and value as past_key_values: a full slice, a
// copy per layer).
#include <unordered_map>
#include <vector>

#include "core/passes/passes.h"
#include "ir/dims.h"
#include "ir/op_schema.h"
#include "ir/ops/shape.h"

namespace kiln {
namespace {

bool all_equal(const std::vector<int64_t>& v, int64_t value) {
  for (int64_t x : v) {
    if (x != value) return false;
  }
  return true;
}

bool is_noop(const Network& net, const Layer& l) {
  if (l.op == "identity") return true;
  if (l.inputs.size() != 1 || l.outputs.size() != 1) return false;
  const Tensor &x = net.tensor(l.inputs[0]), &y = net.tensor(l.outputs[0]);
  if (x.dtype != y.dtype) return false;
  if (l.op == "cast") return true;
  if (l.op == "pad") return all_equal(l.attrs.get_ints("pads", l.name), 0);
  if (x.dims != y.dims || !is_static(x.dims)) return false;
  if (l.op == "slice") return !l.attrs.has("steps") || all_equal(l.attrs.get_ints("steps", l.name), 1);
  if (l.op == "transpose") {
    const std::vector<int64_t> perm = resolve_perm(l, static_cast<int64_t>(x.dims.size()));
    for (size_t d = 0; d < perm.size(); ++d) {
      if (perm[d] != static_cast<int64_t>(d)) return false;
    }
    return true;
  }
  return l.op == "reshape" || l.op == "expand";
}

// `l` is an expand whose every reader is a pointwise op that gives the same output from the
// expand's input, broadcasting it itself (torch's F.normalize: x / norm.expand_as(x)).
bool broadcast_by_its_readers(const Network& net, const Layer& l,
                              const std::vector<std::vector<int>>& readers, int index) {
  if (l.op != "expand" || l.inputs.size() != 1 || l.outputs.size() != 1 || readers[index].empty())
    return false;
  const TensorId in = l.inputs[0], out = l.outputs[0];
  for (int r : readers[index]) {
    const Layer& reader = net.layers()[r];
    if (!has_trait(reader.op, kPointwise) || reader.outputs.size() != 1) return false;
    Dims dims;
    bool first = true;
    for (TensorId t : reader.inputs) {
      const Dims& d = net.tensor(t == out ? in : t).dims;
      if (first) {
        dims = d;
        first = false;
      } else if (!broadcast_shapes(Dims(dims), d, &dims)) {
        return false;
      }
    }
    if (dims != net.tensor(reader.outputs[0]).dims || !is_static(dims)) return false;
  }
  return true;
}

// No-op copies into network outputs whose input's producer can write the output itself.
bool write_outputs_in_place(Network& net) {
  const std::vector<int> producer = net.producers();
  std::unordered_map<TensorId, TensorId> rename;  // x -> the output its producer now writes
  std::vector<bool> dropped(net.layers().size(), false);
  for (size_t i = 0; i < net.layers().size(); ++i) {
    const Layer& l = net.layers()[i];
    if (l.inputs.size() != 1 || l.outputs.size() != 1 || !net.is_output(l.outputs[0]) || !is_noop(net, l))
      continue;
    const TensorId x = l.inputs[0], y = l.outputs[0];
    const int p = producer[x];
    if (p < 0 || net.is_output(x) || rename.count(x) || net.tensor(x).dims != net.tensor(y).dims ||
        has_trait(net.layers()[p].op, kView))
      continue;
    rename[x] = y;
    dropped[i] = true;
  }
  if (rename.empty()) return false;
  std::vector<Layer> kept;
  auto& all = net.mutable_layers();
  for (size_t i = 0; i < all.size(); ++i) {
    if (dropped[i]) continue;
    for (TensorId& t : all[i].inputs) {
      auto it = rename.find(t);
      if (it != rename.end()) t = it->second;
    }
    for (TensorId& t : all[i].outputs) {
      auto it = rename.find(t);
      if (it != rename.end()) t = it->second;
    }
    kept.push_back(std::move(all[i]));
  }
  all = std::move(kept);
  return true;
}

}  // namespace

bool remove_noops(Network& net) {
  std::unordered_map<TensorId, TensorId> replace;  // y -> x
  std::vector<Layer> kept;
  const std::vector<int> producer = net.producers();
  std::vector<std::vector<int>> readers(net.layers().size());
  for (size_t j = 0; j < net.layers().size(); ++j) {
    for (TensorId t : net.layers()[j].inputs) {
      if (producer[t] >= 0) readers[producer[t]].push_back(static_cast<int>(j));
    }
  }
  std::vector<bool> broadcast(net.layers().size());
  for (size_t j = 0; j < net.layers().size(); ++j) {
    broadcast[j] = !net.is_output(net.layers()[j].outputs[0]) &&
                   broadcast_by_its_readers(net, net.layers()[j], readers, static_cast<int>(j));
  }
  int index = 0;
  for (auto& l : net.mutable_layers()) {
    const bool by_readers = broadcast[index++];
    for (TensorId& t : l.inputs) {
      auto it = replace.find(t);
      if (it != replace.end()) t = it->second;
    }
    if (by_readers || (!net.is_output(l.outputs[0]) && is_noop(net, l))) {
      replace[l.outputs[0]] = l.inputs[0];
      continue;
    }
    kept.push_back(std::move(l));
  }
  net.mutable_layers() = std::move(kept);
  const bool in_place = write_outputs_in_place(net);
  if (replace.empty() && !in_place) return false;
  net.compact();
  return true;
}

}  // namespace kiln
