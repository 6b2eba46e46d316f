// pack_qkv_attention: attention reads q, k and v straight out of the fused QKV projection:
//
//   (q, k, v) = split(y, [N, N, N], axis = -1)            y = fused QKV GEMM output [..., 3N]
//   attention(reshape*(q), reshape*(k), reshape*(v); layout = "bshd"),  each -> [B, S, H, D]
//     -> packed_attention(reshape(y, [B, S, 3, H, D]))
//
// Why it is exact: a chain of reshapes keeps the row-major element order, and H * D == N means
// each [B, S] position of the reshaped q is one row of q, i.e. the first N entries of one row of
// y; the reshape of y to [B, S, 3, H, D] puts q, k and v of that row at index 0, 1, 2 of dim 2.
// The split and the reshapes (two copies of the projection's output) go.
// When it fires: bshd attention (after fold_attention_transposes) whose q, k, v come, through
// reshapes only used there, from outputs 0, 1, 2 of one three-way equal split along y's last dim;
// q, k and v of one shape with static H and D; the three last reshapes sharing one target (static
// dims, or the same `shape` attribute or the same shape tensor). The new target is the last reshape's with 3
// inserted before H: with an attribute [b, s, h, d] it is [b, s, 3, H, D] (a -1 in b or s infers
// the same size, the element count having tripled with the rest); with a shape tensor it is
// concat(slice(shape, 0:2), [3, H, D]), so dynamic B and S keep following the tracked shape.
// After fuse_parallel_gemms (which creates the split) and fold_attention_transposes (which makes
// the layout bshd).
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "ir/ops/attention.h"

namespace kiln {
namespace {

// A q/k/v operand traced back to the split: the split layer, which of its outputs, the reshape
// chain (layer indices, the one next to the attention first).
struct Trace {
  int split = -1;
  int output = -1;
  std::vector<int> chain;
};

class Matcher {
 public:
  explicit Matcher(const Network& net) : net_(net), producer_(net.producers()), uses_(reader_counts(net)) {}

  bool single_use(TensorId t) const { return uses_[t] == 1 && !net_.is_output(t); }

  // Follows `t` through single-use reshapes to a split; false when something else comes first.
  bool trace(TensorId t, Trace* out) const {
    while (true) {
      if (!single_use(t)) return false;
      const int p = producer_[t];
      if (p < 0) return false;
      const Layer& l = net_.layers()[p];
      if (l.op == "split") {
        out->split = p;
        for (size_t o = 0; o < l.outputs.size(); ++o) {
          if (l.outputs[o] == t) out->output = static_cast<int>(o);
        }
        return !out->chain.empty();
      }
      if (l.op != "reshape") return false;
      out->chain.push_back(p);
      t = l.inputs[0];
    }
  }

 private:
  const Network& net_;
  std::vector<int> producer_;
  std::vector<int> uses_;
};

// The three last reshapes have one target: the same static output dims (however each states
// them), or else the same shape tensor or `shape` attribute.
bool same_target(const Network& net, const Layer& a, const Layer& b) {
  const Dims& da = net.tensor(a.outputs[0]).dims;
  if (is_static(da) && da == net.tensor(b.outputs[0]).dims) return true;
  if (a.inputs.size() != b.inputs.size()) return false;
  if (a.inputs.size() == 2) return a.inputs[1] == b.inputs[1];
  return a.attrs.get_ints("shape", a.name) == b.attrs.get_ints("shape", b.name);
}

// Bytes of an int32/int64 constant holding `v`.
std::vector<uint8_t> int_bytes(DataType dtype, const std::vector<int64_t>& v) {
  std::vector<uint8_t> bytes(v.size() * dtype_size(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DataType::kInt32) {
      const auto x = static_cast<int32_t>(v[i]);
      std::memcpy(bytes.data() + i * 4, &x, 4);
    } else {
      std::memcpy(bytes.data() + i * 8, &v[i], 8);
    }
  }
  return bytes;
}

}  // namespace

bool pack_qkv_attention(Network& net) {
  const Matcher m(net);
  std::set<std::string> names;
  for (const auto& l : net.layers()) names.insert(l.name);
  std::map<int, std::vector<Layer>> before;  // attention index -> layers inserted before it
  std::set<int> removed;
  for (size_t i = 0; i < net.layers().size(); ++i) {
    const Layer& att = net.layers()[i];
    if (att.op != "attention" || attention_attrs(att).layout != AttentionLayout::kBSHD) continue;
    Trace tr[3];
    bool ok = true;
    for (int j = 0; j < 3 && ok; ++j) ok = m.trace(att.inputs[j], &tr[j]) && tr[j].output == j;
    if (!ok || tr[1].split != tr[0].split || tr[2].split != tr[0].split) continue;
    if (removed.count(tr[0].split)) continue;
    const Layer& split = net.layers()[tr[0].split];
    const Dims y = net.tensor(split.inputs[0]).dims;
    const int64_t rank = static_cast<int64_t>(y.size());
    const std::vector<int64_t> sizes = split.attrs.get_ints("sizes", split.name);
    int64_t axis = split.attrs.get_int("axis", int64_t{0});
    if (axis < 0) axis += rank;
    if (split.outputs.size() != 3 || axis != rank - 1 || sizes[0] != sizes[1] || sizes[0] != sizes[2])
      continue;
    const Dims q = net.tensor(att.inputs[0]).dims;
    if (q.size() != 4 || net.tensor(att.inputs[1]).dims != q || net.tensor(att.inputs[2]).dims != q) continue;
    const int64_t heads = q[2], head_dim = q[3];
    if (heads <= 0 || head_dim <= 0 || heads * head_dim != sizes[0]) continue;  // static H, D; rows kept
    const Layer &rq = net.layers()[tr[0].chain[0]], &rk = net.layers()[tr[1].chain[0]],
                &rv = net.layers()[tr[2].chain[0]];
    if (!same_target(net, rq, rk) || !same_target(net, rq, rv)) continue;

    // The target [b, s, 3, H, D] and the reshape of y to it.
    std::vector<Layer> added;
    const std::string base = att.name + "_qkv";
    std::vector<TensorId> reshape_inputs = {split.inputs[0]};
    Attributes reshape_attrs;
    if (rq.inputs.size() == 2) {
      const TensorId shape = rq.inputs[1];
      const DataType it = net.tensor(shape).dtype;
      const Layer& lead = net.add_layer("slice", {shape},
                                        Attributes()
                                            .set("axes", std::vector<int64_t>{0})
                                            .set("starts", std::vector<int64_t>{0})
                                            .set("ends", std::vector<int64_t>{2}),
                                        unique_name(names, base + "_lead"));
      added.push_back(lead);
      const std::vector<uint8_t> tail = int_bytes(it, {3, heads, head_dim});
      std::string tail_name = base + ".tail";
      for (int k = 1; net.find_tensor(tail_name) >= 0; ++k) tail_name = base + ".tail_" + std::to_string(k);
      const TensorId tail_t = net.add_constant(tail_name, it, {3}, tail.data(), tail.size());
      const Layer& target =
          net.add_layer("concat", {added.back().outputs[0], tail_t}, Attributes().set("axis", int64_t{0}),
                        unique_name(names, base + "_shape"));
      added.push_back(target);
      reshape_inputs.push_back(added.back().outputs[0]);
    } else {
      std::vector<int64_t> t = rq.attrs.get_ints("shape", rq.name);
      reshape_attrs.set("shape", std::vector<int64_t>{t[0], t[1], 3, heads, head_dim});
    }
    added.push_back(net.add_layer("reshape", reshape_inputs, reshape_attrs, unique_name(names, base)));
    const TensorId packed = added.back().outputs[0];
    net.mutable_layers().resize(net.mutable_layers().size() - added.size());  // moved to their place below

    Layer& l = net.mutable_layers()[i];
    Attributes attrs;
    for (const char* key : {"causal", "scale", "fused"}) {
      auto it = l.attrs.values().find(key);
      if (it != l.attrs.values().end()) attrs.set(key, it->second);
    }
    std::vector<TensorId> inputs = {packed};
    if (l.inputs.size() == 4) inputs.push_back(l.inputs[3]);
    l.op = "packed_attention";
    l.inputs = std::move(inputs);
    l.attrs = std::move(attrs);
    before[static_cast<int>(i)] = std::move(added);
    removed.insert(tr[0].split);
    for (const Trace& t : tr) removed.insert(t.chain.begin(), t.chain.end());
  }
  if (before.empty()) return false;

  std::vector<Layer> kept;
  auto& layers = net.mutable_layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    auto it = before.find(static_cast<int>(i));
    if (it != before.end()) {
      for (auto& l : it->second) kept.push_back(std::move(l));
    }
    if (!removed.count(static_cast<int>(i))) kept.push_back(std::move(layers[i]));
  }
  layers = std::move(kept);
  net.compact();
  return true;
}

}  // namespace kiln
