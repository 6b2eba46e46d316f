// fuse_pointwise: replaces each connected group of >= 2 pointwise layers (elementwise,
// activation, unary, cast, where) by one fused_pointwise layer whose program replays them in
// order, so a chain runs as one generated kernel and its intermediates never touch memory.
//
// Safe because every instruction keeps its layer's semantics (see ir/ops/fused_pointwise.h).
// Grouping rules:
//   - a layer joins a group through a producer -> consumer edge; groups only merge when the
//     result stays acyclic (no path leaves the merged group and comes back into it);
//   - all members have the same output dims, so the kernel's iteration space is one output's shape;
//   - only float32/float16/bfloat16/int32/bool tensors, and no tracked shape values (shape
//     arithmetic stays unfused so later shape inference keeps its host-known values);
//   - a member output that a non-member or a network output uses becomes a fused layer output;
//   - at most kMaxFusedInputs external inputs and kMaxFusedOutputs outputs per group.
// One-element constants are inlined into the program when that does not change a shape.
// The builder runs it after assign_precision: the casts and dtypes that pass chose are then part
// of the graph and go into the program as they are.
#include <algorithm>
#include <map>
#include <numeric>
#include <queue>
#include <set>

#include "core/passes/passes.h"
#include "core/weight_transforms.h"
#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/fused_pointwise.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

bool is_candidate(const Network& net, const Layer& l) {
  if (!has_trait(l.op, kPointwise) || l.outputs.size() != 1) return false;
  for (TensorId t : l.inputs) {
    const Tensor& x = net.tensor(t);
    if (!fusable_pointwise_dtype(x.dtype)) return false;
    if (x.values && x.kind != TensorKind::kConstant) return false;
  }
  const Tensor& y = net.tensor(l.outputs[0]);
  return fusable_pointwise_dtype(y.dtype) && !y.values;
}

class Grouper {
 public:
  explicit Grouper(const Network& net) : net_(net), layers_(net.layers()) {
    const int n = static_cast<int>(layers_.size());
    parent_.resize(n);
    std::iota(parent_.begin(), parent_.end(), 0);
    members_.resize(n);
    for (int i = 0; i < n; ++i) members_[i] = {i};
    producer_ = net.producers();
    consumers_.resize(net.tensors().size());
    for (int i = 0; i < n; ++i) {
      for (TensorId t : layers_[i].inputs) consumers_[t].push_back(i);
    }
    candidate_.resize(n);
    for (int i = 0; i < n; ++i) candidate_[i] = is_candidate(net, layers_[i]);
  }

  // Groups (member indices in order) of at least two layers.
  std::vector<std::vector<int>> run() {
    for (int i = 0; i < static_cast<int>(layers_.size()); ++i) {
      if (!candidate_[i]) continue;
      for (TensorId t : layers_[i].inputs) {
        int p = producer_[t];
        if (p < 0 || !candidate_[p]) continue;
        int a = find(p), b = find(i);
        if (a != b && same_dims(a, b) && fits(a, b) && acyclic(a, b)) unite(a, b);
      }
    }
    std::vector<std::vector<int>> groups;
    for (int i = 0; i < static_cast<int>(layers_.size()); ++i) {
      if (find(i) == i && members_[i].size() >= 2) groups.push_back(members_[i]);
    }
    return groups;
  }

  bool in_group(int layer, int root) const { return find(layer) == root; }
  const std::vector<std::vector<int>>& consumers() const { return consumers_; }

 private:
  int find(int i) const {
    while (parent_[i] != i) i = parent_[i];
    return i;
  }
  void unite(int a, int b) {
    if (members_[a].size() < members_[b].size()) std::swap(a, b);
    parent_[b] = a;
    members_[a].insert(members_[a].end(), members_[b].begin(), members_[b].end());
    std::sort(members_[a].begin(), members_[a].end());
    members_[b].clear();
  }
  bool same_dims(int a, int b) const {
    return net_.tensor(layers_[a].outputs[0]).dims == net_.tensor(layers_[b].outputs[0]).dims;
  }
  bool member(int layer, int a, int b) const {
    int r = find(layer);
    return r == a || r == b;
  }

  // External inputs and outputs of the merged group stay within the kernel's limits.
  bool fits(int a, int b) const {
    std::set<TensorId> inputs;
    int outputs = 0, instructions = 0;
    for (int g : {a, b}) {
      for (int m : members_[g]) {
        instructions += 1 + static_cast<int>(layers_[m].inputs.size());
        for (TensorId t : layers_[m].inputs) {
          if (producer_[t] < 0 || !member(producer_[t], a, b)) inputs.insert(t);
        }
        TensorId y = layers_[m].outputs[0];
        bool external = net_.is_output(y);
        for (int c : consumers_[y]) external |= !member(c, a, b);
        outputs += external;
      }
    }
    return static_cast<int>(inputs.size()) <= kMaxFusedInputs && outputs <= kMaxFusedOutputs &&
           instructions <= kMaxFusedInstructions;
  }

  // No path from the merged group through other layers or groups back into it. Other groups
  // count as one node each (they will be one layer). Layers are in topological order, so a
  // path back can only pass through groups that start before the merged group's last member.
  bool acyclic(int a, int b) const {
    const int last = std::max(members_[a].back(), members_[b].back());
    std::vector<char> seen(layers_.size(), 0);
    std::vector<int> stack;
    bool back_edge = false;
    auto visit = [&](int root) {
      for (int m : members_[root]) {
        for (TensorId t : layers_[m].outputs) {
          for (int c : consumers_[t]) {
            int r = find(c);
            if (r == a || r == b) {
              back_edge |= root != a && root != b;
            } else if (!seen[r] && members_[r].front() < last) {
              seen[r] = 1;
              stack.push_back(r);
            }
          }
        }
      }
    };
    visit(a);
    visit(b);
    while (!stack.empty() && !back_edge) {
      int r = stack.back();
      stack.pop_back();
      visit(r);
    }
    return !back_edge;
  }

  const Network& net_;
  const std::vector<Layer>& layers_;
  std::vector<int> parent_;
  std::vector<std::vector<int>> members_;
  std::vector<int> producer_;
  std::vector<std::vector<int>> consumers_;
  std::vector<char> candidate_;
};

// A one-element constant can become a `const` instruction when, at every use, another input of
// the using layer has at least its rank (so broadcasting against a scalar gives the same shape).
bool inlinable(const Network& net, TensorId t, const std::vector<int>& uses) {
  const Tensor& c = net.tensor(t);
  if (c.kind != TensorKind::kConstant || !is_static(c.dims) || volume(c.dims) != 1) return false;
  if (derives_from_weight(c)) return false;  // a refit may change it: it stays an input
  for (int u : uses) {
    size_t rank = 0;
    for (TensorId x : net.layers()[u].inputs) {
      if (x != t) rank = std::max(rank, net.tensor(x).dims.size());
    }
    if (c.dims.size() > rank) return false;
  }
  return true;
}

PointwiseInstr instruction_for(const Layer& l) {
  PointwiseInstr ins;
  ins.kind = l.op;
  if (l.op == "elementwise" || l.op == "unary") {
    ins.op = l.attrs.get_string("op", describe(l));
  } else if (l.op == "activation") {
    ins.op = l.attrs.get_string("type", describe(l));
    activation_params(l, &ins.alpha, &ins.beta, &ins.threshold);
  } else if (l.op == "cast") {
    ins.op = l.attrs.get_string("to", describe(l));
  }
  return ins;
}

Layer build_fused_layer(const Network& net, const std::vector<int>& group,
                        const std::vector<std::vector<int>>& consumers) {
  const auto& layers = net.layers();
  std::set<int> members(group.begin(), group.end());
  std::map<TensorId, int> reg;  // tensor -> register
  std::vector<PointwiseInstr> code;
  Layer fused;
  fused.op = "fused_pointwise";
  fused.name = "fused:" + layers[group.back()].name;
  std::string names;
  for (int m : group) {
    const Layer& l = layers[m];
    names += (names.empty() ? "" : ",") + l.name;
    PointwiseInstr ins = instruction_for(l);
    for (TensorId t : l.inputs) {
      if (!reg.count(t)) {
        std::vector<int> uses;
        for (int c : consumers[t]) {
          if (members.count(c)) uses.push_back(c);
        }
        PointwiseInstr load;
        if (inlinable(net, t, uses)) {
          const Tensor& c = net.tensor(t);
          load.kind = "const";
          load.op = dtype_name(c.dtype);
          load.value = load_element(TensorView{const_cast<uint8_t*>(c.data->data()), c.dtype, c.dims}, 0);
        } else {
          load.kind = "input";
          load.op = dtype_name(net.tensor(t).dtype);
          load.input = static_cast<int>(fused.inputs.size());
          fused.inputs.push_back(t);
        }
        reg[t] = static_cast<int>(code.size());
        code.push_back(load);
      }
      ins.args.push_back(reg.at(t));
    }
    TensorId y = l.outputs[0];
    reg[y] = static_cast<int>(code.size());
    code.push_back(ins);
    bool external = net.is_output(y);
    for (int c : consumers[y]) external |= !members.count(c);
    if (external) fused.outputs.push_back(y);
  }
  std::vector<int64_t> outs;
  for (TensorId y : fused.outputs) outs.push_back(reg.at(y));
  fused.attrs.set("program", format_pointwise_program(code)).set("outputs", outs).set("fused", names);
  return fused;
}

// Orders layers topologically, keeping each at its `position` where dependencies allow.
std::vector<Layer> stable_topological_order(const Network& net, std::vector<Layer> layers,
                                            const std::vector<int>& position) {
  std::map<TensorId, int> producer;
  for (int i = 0; i < static_cast<int>(layers.size()); ++i) {
    for (TensorId t : layers[i].outputs) producer[t] = i;
  }
  std::vector<int> pending(layers.size(), 0);
  std::vector<std::vector<int>> users(layers.size());
  for (int i = 0; i < static_cast<int>(layers.size()); ++i) {
    std::set<int> deps;
    for (TensorId t : layers[i].inputs) {
      auto it = producer.find(t);
      if (it != producer.end()) deps.insert(it->second);
    }
    pending[i] = static_cast<int>(deps.size());
    for (int d : deps) users[d].push_back(i);
  }
  using Item = std::pair<int, int>;  // (position, index)
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> ready;
  for (int i = 0; i < static_cast<int>(layers.size()); ++i) {
    if (pending[i] == 0) ready.push({position[i], i});
  }
  std::vector<Layer> out;
  while (!ready.empty()) {
    int i = ready.top().second;
    ready.pop();
    out.push_back(std::move(layers[i]));
    for (int u : users[i]) {
      if (--pending[u] == 0) ready.push({position[u], u});
    }
  }
  KILN_CHECK(out.size() == layers.size(), "fuse_pointwise: the fused network has a cycle (a Kiln bug)");
  return out;
}

}  // namespace

bool fuse_pointwise(Network& net) {
  Grouper grouper(net);
  std::vector<std::vector<int>> groups = grouper.run();
  if (groups.empty()) return false;
  const auto& layers = net.layers();
  std::vector<int> group_of(layers.size(), -1);
  for (int g = 0; g < static_cast<int>(groups.size()); ++g) {
    for (int m : groups[g]) group_of[m] = g;
  }
  std::vector<Layer> rewritten;
  std::vector<int> position;
  for (int i = 0; i < static_cast<int>(layers.size()); ++i) {
    int g = group_of[i];
    if (g < 0) {
      rewritten.push_back(layers[i]);
      position.push_back(i);
    } else if (groups[g].back() == i) {
      rewritten.push_back(build_fused_layer(net, groups[g], grouper.consumers()));
      position.push_back(i);
    }
  }
  net.mutable_layers() = stable_topological_order(net, std::move(rewritten), position);
  net.compact();
  net.revalidate();
  return true;
}

}  // namespace kiln
