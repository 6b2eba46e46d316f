#include "partitioning/partition.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "converters/converter.h"
#include "ir/error.h"

namespace kiln {
namespace {

std::string where(const KNode& n) { return n.location.empty() ? "" : " at " + n.location; }

// Nodes that read no other node's output (only constants): a weight permute, say. They are
// scheduled just before their first consumer so they join its segment.
std::vector<bool> constant_only(const KGraph& graph) {
  const std::vector<int> producer = graph.producers();
  std::vector<bool> out;
  for (const KNode& n : graph.nodes()) {
    bool only = true;
    for (ValueId v : KGraph::node_inputs(n)) only &= producer[v] < 0 && graph.value(v).is_constant();
    out.push_back(only);
  }
  return out;
}

// A topological order that keeps runs of the same kind together: among the ready nodes it takes
// one of the current kind (engine or torch) while there is one, and switches kind only when none
// is left. Contiguous runs of this order are the segments, so they are acyclic by construction
// and independent torch nodes no longer split an engine segment.
std::vector<int> clustered_order(const KGraph& graph, const std::vector<bool>& engine) {
  const auto& nodes = graph.nodes();
  const std::vector<int> producer = graph.producers();
  const std::vector<bool> lazy = constant_only(graph);
  std::vector<int> pending(nodes.size(), 0);
  std::vector<std::vector<int>> users(nodes.size());
  std::vector<std::vector<int>> lazy_inputs(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    std::set<int> deps;
    for (ValueId v : KGraph::node_inputs(nodes[i])) {
      if (producer[v] < 0) continue;
      if (lazy[producer[v]]) {
        lazy_inputs[i].push_back(producer[v]);
      } else {
        deps.insert(producer[v]);
      }
    }
    pending[i] = static_cast<int>(deps.size());
    for (int d : deps) users[d].push_back(static_cast<int>(i));
  }
  std::set<int> ready;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (pending[i] == 0 && !lazy[i]) ready.insert(static_cast<int>(i));
  }
  std::vector<int> order;
  std::vector<bool> emitted(nodes.size(), false);
  auto emit = [&](int n) {
    emitted[n] = true;
    order.push_back(n);
  };
  bool kind = !ready.empty() && engine[*ready.begin()];
  while (!ready.empty()) {
    auto it = std::find_if(ready.begin(), ready.end(), [&](int i) { return engine[i] == kind; });
    if (it == ready.end()) {
      kind = !kind;
      continue;
    }
    int n = *it;
    ready.erase(it);
    for (int p : lazy_inputs[n]) {
      if (!emitted[p]) emit(p);
    }
    emit(n);
    for (int u : users[n]) {
      if (--pending[u] == 0) ready.insert(u);
    }
  }
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!emitted[i]) emit(static_cast<int>(i));  // constant-only nodes nobody reads
  }
  return order;
}

std::vector<Segment> form_segments(const KGraph& graph, const std::vector<bool>& engine) {
  std::vector<Segment> segments;
  for (int n : clustered_order(graph, engine)) {
    if (segments.empty() || segments.back().engine != engine[n]) {
      segments.emplace_back();
      segments.back().engine = engine[n];
    }
    segments.back().nodes.push_back(n);
  }
  // Boundaries: a value crosses when it is read outside the segment that produces it.
  std::vector<int> segment_of_value(graph.values().size(), -1);
  for (size_t s = 0; s < segments.size(); ++s) {
    for (int n : segments[s].nodes) {
      for (ValueId v : graph.nodes()[n].outputs) {
        if (v != kNoValue) segment_of_value[v] = static_cast<int>(s);
      }
    }
  }
  auto add_unique = [](std::vector<ValueId>& list, ValueId v) {
    if (std::find(list.begin(), list.end(), v) == list.end()) list.push_back(v);
  };
  for (size_t s = 0; s < segments.size(); ++s) {
    for (int n : segments[s].nodes) {
      for (ValueId v : KGraph::node_inputs(graph.nodes()[n])) {
        if (graph.value(v).is_constant() || segment_of_value[v] == static_cast<int>(s)) continue;
        add_unique(segments[s].inputs, v);
        if (segment_of_value[v] >= 0) add_unique(segments[segment_of_value[v]].outputs, v);
      }
    }
  }
  for (ValueId v : graph.outputs()) {
    if (segment_of_value[v] >= 0) add_unique(segments[segment_of_value[v]].outputs, v);
  }
  return segments;
}

// The nodes that compute host scalar `v` from tensors (through other host scalars), in graph
// order, when all of them convert, there are at most kMaxRecompute, and every tensor they read is
// a graph input or already an input of `segment`; otherwise empty. An engine that reads `v`
// converts these nodes again instead of receiving `v` (a symbolic size is computed from shapes,
// so recomputing it costs no device work). Graph inputs carry profile ranges for their dims; a
// size of a tensor PyTorch computed (nonzero's count) may not, so such tensors are not pulled in.
constexpr size_t kMaxRecompute = 16;

std::vector<int> recompute_chain(const KGraph& graph, const std::vector<int>& producer,
                                 const std::vector<bool>& convertible, const Segment& segment, ValueId v) {
  auto available = [&](ValueId t) {
    const auto& in = graph.inputs();
    return graph.value(t).is_constant() || std::find(in.begin(), in.end(), t) != in.end() ||
           std::find(segment.inputs.begin(), segment.inputs.end(), t) != segment.inputs.end();
  };
  std::set<int> chain;
  std::vector<ValueId> todo = {v};
  while (!todo.empty()) {
    ValueId u = todo.back();
    todo.pop_back();
    const int p = producer[u];
    if (p < 0 || !convertible[p]) return {};
    if (!chain.insert(p).second) continue;
    if (chain.size() > kMaxRecompute) return {};
    for (ValueId in : KGraph::node_inputs(graph.nodes()[p])) {
      if (graph.value(in).host_scalar) {
        todo.push_back(in);
      } else if (!available(in)) {
        return {};
      }
    }
  }
  return {chain.begin(), chain.end()};  // node indices are a topological order
}

// Gives each engine segment the chains of the symbolic sizes it reads from outside: the sizes
// leave its inputs, the tensors the chains read join them (and the outputs of the segments that
// produce those tensors).
void recompute_symbolic_sizes(const KGraph& graph, const std::vector<bool>& convertible,
                              std::vector<Segment>& segments) {
  const std::vector<int> producer = graph.producers();
  std::vector<int> segment_of_node(graph.nodes().size(), -1);
  for (size_t s = 0; s < segments.size(); ++s) {
    for (int n : segments[s].nodes) segment_of_node[n] = static_cast<int>(s);
  }
  auto add_unique = [](std::vector<ValueId>& list, ValueId v) {
    if (std::find(list.begin(), list.end(), v) == list.end()) list.push_back(v);
  };
  for (size_t s = 0; s < segments.size(); ++s) {
    Segment& seg = segments[s];
    if (!seg.engine) continue;
    std::set<int> nodes;
    std::vector<ValueId> inputs;
    for (ValueId v : seg.inputs) {
      if (!graph.value(v).host_scalar) {
        inputs.push_back(v);
        continue;
      }
      for (int n : recompute_chain(graph, producer, convertible, seg, v)) nodes.insert(n);
    }
    for (int n : nodes) {
      for (ValueId in : KGraph::node_inputs(graph.nodes()[n])) {
        const KValue& kv = graph.value(in);
        if (kv.host_scalar || kv.is_constant()) continue;
        add_unique(inputs, in);
        if (producer[in] >= 0) add_unique(segments[segment_of_node[producer[in]]].outputs, in);
      }
    }
    seg.inputs = inputs;
    seg.recompute.assign(nodes.begin(), nodes.end());
  }
  // Engine readers recompute and PyTorch readers never read an engine's size (the loop moved
  // those producers), so no engine hands a size over.
  for (Segment& seg : segments) {
    if (!seg.engine) continue;
    auto host = [&](ValueId v) { return graph.value(v).host_scalar; };
    seg.outputs.erase(std::remove_if(seg.outputs.begin(), seg.outputs.end(), host), seg.outputs.end());
  }
}

// True when node `n` of a joining op (PartitionOptions::joining_ops) reads a value computed by
// another kind of node of its own segment and another kind of node of its segment reads one of
// its outputs, looking through joining nodes on both sides: leaving it out would split the engine.
bool joins_engine_nodes(const KGraph& graph, int n, const std::vector<int>& producer,
                        const std::vector<std::vector<int>>& readers, const std::vector<int>& segment_of_node,
                        const PartitionOptions& options) {
  const auto& nodes = graph.nodes();
  const int seg = segment_of_node[n];
  auto joining = [&](int m) { return options.joining_ops.count(nodes[m].target) > 0; };
  // Upstream: producers of n's inputs.
  std::set<int> seen{n};
  std::vector<int> stack{n};
  bool up = false;
  while (!stack.empty() && !up) {
    const int m = stack.back();
    stack.pop_back();
    for (ValueId v : KGraph::node_inputs(nodes[m])) {
      const int p = producer[v];
      if (p < 0 || segment_of_node[p] != seg || !seen.insert(p).second) continue;
      if (!joining(p)) up = true;
      stack.push_back(p);
    }
  }
  if (!up) return false;
  // Downstream: readers of n's outputs.
  seen = {n};
  stack = {n};
  while (!stack.empty()) {
    const int m = stack.back();
    stack.pop_back();
    for (int r : readers[m]) {
      if (segment_of_node[r] != seg || !seen.insert(r).second) continue;
      if (!joining(r)) return true;
      stack.push_back(r);
    }
  }
  return false;
}

}  // namespace

Partition partition_graph(const KGraph& graph, const PartitionOptions& options) {
  const auto& nodes = graph.nodes();
  const std::set<std::string> forced(options.torch_executed_ops.begin(), options.torch_executed_ops.end());
  std::vector<std::string> reason(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    auto own = options.torch_nodes.find(static_cast<int>(i));
    reason[i] = forced.count(nodes[i].target)      ? "listed in torch_executed_ops"
                : own != options.torch_nodes.end() ? own->second
                                                   : check_convertible(graph, nodes[i]);
    if (!reason[i].empty() && options.joining_ops.count(nodes[i].target) &&
        own == options.torch_nodes.end() && !forced.count(nodes[i].target))
      reason[i] =
          "no converter for " + nodes[i].target + " (nor as a torch op inside an engine: " + reason[i] + ")";
  }

  if (options.require_full_compilation) {
    std::ostringstream os;
    int count = 0;
    for (size_t i = 0; i < nodes.size(); ++i) {
      if (reason[i].empty()) continue;
      ++count;
      os << "\n  " << nodes[i].describe() << where(nodes[i]) << ": " << reason[i];
    }
    KILN_CHECK(count == 0,
               "require_full_compilation: " << count << " node" << (count == 1 ? "" : "s")
                                            << " cannot run in a Kiln engine:" << os.str()
                                            << "\nRemove these ops from the model, or compile with "
                                               "require_full_compilation=False to run them in PyTorch.");
  }

  // Segments are formed, then nodes that cannot stay in an engine move to PyTorch, until stable:
  //  - engine segments below min_block_size;
  //  - a symbolic size (host scalar) crossing between an engine and another segment: engines
  //    take and give device tensors only. An engine reader recomputes the size from tensors
  //    (recompute_chain) when it can, otherwise it moves to PyTorch; for PyTorch readers the
  //    producer moves to PyTorch.
  std::vector<bool> engine(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) engine[i] = reason[i].empty();
  const std::vector<bool> convertible = engine;
  const std::vector<int> producer = graph.producers();
  // readers[i]: the nodes that read an output of node i, each once, in node order.
  std::vector<std::vector<int>> readers(nodes.size());
  for (size_t j = 0; j < nodes.size(); ++j) {
    for (ValueId v : KGraph::node_inputs(nodes[j])) {
      const int p = producer[v];
      if (p >= 0 && (readers[p].empty() || readers[p].back() != static_cast<int>(j)))
        readers[p].push_back(static_cast<int>(j));
    }
  }
  std::vector<Segment> segments;
  for (bool changed = true; changed;) {
    changed = false;
    segments = form_segments(graph, engine);
    std::vector<int> segment_of_node(nodes.size(), -1);
    for (size_t s = 0; s < segments.size(); ++s) {
      for (int n : segments[s].nodes) segment_of_node[n] = static_cast<int>(s);
    }
    auto move = [&](int n, const std::string& why) {
      if (!engine[n]) return;
      engine[n] = false;
      reason[n] = why;
      changed = true;
    };
    for (size_t s = 0; s < segments.size(); ++s) {
      const Segment& seg = segments[s];
      for (ValueId v : seg.inputs) {
        if (!graph.value(v).host_scalar || producer[v] < 0) continue;
        if (seg.engine) {
          if (!recompute_chain(graph, producer, convertible, seg, v).empty()) continue;
          for (int n : seg.nodes) {
            auto in = KGraph::node_inputs(nodes[n]);
            if (std::find(in.begin(), in.end(), v) != in.end()) {
              move(n,
                   "reads symbolic size '" + graph.value(v).name + "' computed outside its engine segment");
            }
          }
        } else {
          move(producer[v], "its symbolic size is used by PyTorch code");
        }
      }
      for (ValueId v : graph.outputs()) {
        if (graph.value(v).host_scalar && producer[v] >= 0 && segments[segment_of_node[producer[v]]].engine) {
          move(producer[v], "its symbolic size is a graph output");
        }
      }
    }
    // A constant-only node follows its readers: it is not worth an engine boundary. One read by
    // no node (a graph output only, as a model returning a constant cache entry) stays in an
    // engine when the graph has other engine nodes, rather than becoming a PyTorch segment.
    const std::vector<bool> lazy = constant_only(graph);
    bool any_engine = false;
    for (size_t i = 0; i < nodes.size(); ++i) any_engine |= engine[i] && !lazy[i];
    for (size_t i = 0; i < nodes.size(); ++i) {
      if (!lazy[i] || !engine[i]) continue;
      bool engine_reader = false, torch_reader = false;
      for (int j : readers[i]) (engine[j] ? engine_reader : torch_reader) = true;
      if (!engine_reader && (torch_reader || !any_engine))
        move(static_cast<int>(i), "reads only constants and only PyTorch code reads it");
    }
    for (const Segment& seg : segments) {
      // With require_full_compilation every node that can stays in an engine.
      if (!seg.engine || options.joining_ops.empty() || options.require_full_compilation) continue;
      for (int n : seg.nodes) {
        if (options.joining_ops.count(nodes[n].target) &&
            !joins_engine_nodes(graph, n, producer, readers, segment_of_node, options))
          move(n, "no converter for " + nodes[n].target +
                      " (as a torch op inside an engine it would join no engine nodes here)");
      }
    }
    if (changed) continue;
    for (const Segment& seg : segments) {
      // require_full_compilation asks for engines whatever their size (as torch_tensorrt does).
      if (!seg.engine || options.require_full_compilation ||
          static_cast<int64_t>(seg.nodes.size()) >= options.min_block_size)
        continue;
      for (int n : seg.nodes) {
        move(n, "in an engine segment of " + std::to_string(seg.nodes.size()) +
                    " nodes, below min_block_size " + std::to_string(options.min_block_size));
      }
    }
  }

  recompute_symbolic_sizes(graph, convertible, segments);
  Partition p;
  p.segments = std::move(segments);
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!engine[i]) p.fallbacks.push_back({static_cast<int>(i), reason[i]});
  }
  return p;
}

std::string describe_partition(const KGraph& graph, const Partition& partition) {
  std::ostringstream os;
  int engines = 0;
  for (const Segment& s : partition.segments) engines += s.engine ? 1 : 0;
  os << graph.nodes().size() << " nodes: " << engines << " engine segment" << (engines == 1 ? "" : "s")
     << ", " << partition.segments.size() - engines << " PyTorch segment"
     << (partition.segments.size() - engines == 1 ? "" : "s") << ", " << partition.fallbacks.size() << " node"
     << (partition.fallbacks.size() == 1 ? "" : "s") << " in PyTorch\n";
  for (size_t s = 0; s < partition.segments.size(); ++s) {
    const Segment& seg = partition.segments[s];
    std::map<std::string, int> ops;
    for (int n : seg.nodes) ops[graph.nodes()[n].target]++;
    os << "  segment " << s << " (" << (seg.engine ? "kiln engine" : "pytorch") << "): " << seg.nodes.size()
       << " node" << (seg.nodes.size() == 1 ? "" : "s") << ", " << seg.inputs.size() << " in, "
       << seg.outputs.size() << " out:";
    for (const auto& [op, count] : ops) os << " " << op << (count > 1 ? " x" + std::to_string(count) : "");
    os << "\n";
  }
  // Fallbacks grouped by op and reason (in order of first appearance), with the count and the
  // first node's source line: a model with 200 identical fallbacks reads as one line.
  std::vector<std::pair<const Fallback*, int>> groups;
  std::map<std::pair<std::string, std::string>, size_t> group_of;
  for (const Fallback& f : partition.fallbacks) {
    auto key = std::make_pair(graph.nodes()[f.node].target, f.reason);
    auto [it, added] = group_of.emplace(key, groups.size());
    if (added) groups.emplace_back(&f, 0);
    ++groups[it->second].second;
  }
  for (const auto& [f, count] : groups) {
    const KNode& n = graph.nodes()[f->node];
    if (count == 1) {
      os << "  pytorch: " << n.describe() << where(n) << ": " << f->reason << "\n";
    } else {
      os << "  pytorch: " << n.target << " x" << count << " (first: " << n.name << where(n)
         << "): " << f->reason << "\n";
    }
  }
  return os.str();
}

}  // namespace kiln
