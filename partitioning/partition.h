// Partitioning: KGraph -> ordered segments, each run either by one Kiln engine (every node
// convertible) or by PyTorch. The partitioner asks the converter registry whether a node converts
// and knows no op by name.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "lowering/kgraph.h"

namespace kiln {

struct PartitionOptions {
  int64_t min_block_size = 5;                   // smaller engine segments run in PyTorch
  std::vector<std::string> torch_executed_ops;  // op overloads ("aten.gelu.default") forced to PyTorch
  bool require_full_compilation = false;        // unsupported nodes are an error listing them all
  // Nodes a frontend keeps in PyTorch whatever the converters say (index -> reason), e.g. the
  // TorchScript nodes that read or return lists, objects or dtypes Kiln does not hold.
  std::map<int, std::string> torch_nodes;
  // Op overloads whose nodes convert only to join engine nodes (automatic torch ops inside
  // engines): such a node stays in its engine segment only where it reads from an engine node and
  // an engine node reads it there (through other such nodes too); elsewhere it runs in PyTorch.
  std::set<std::string> joining_ops;
};

struct Segment {
  bool engine = false;
  std::vector<int> nodes;        // node indices, in an order valid for execution
  std::vector<ValueId> inputs;   // values read from earlier segments or graph inputs (no constants)
  std::vector<ValueId> outputs;  // values read by later segments or by the graph's outputs
  // Engine segments: nodes of other segments that compute symbolic sizes (host scalars) this
  // segment reads, in execution order. They are converted again at the start of this segment
  // from tensors it receives (their tensor arguments are in `inputs`), because engines take and
  // give device tensors only: a size is recomputed rather than handed over.
  std::vector<int> recompute;
};

struct Fallback {
  int node = -1;
  std::string reason;
};

struct Partition {
  std::vector<Segment> segments;    // in execution order; segment i reads only graph inputs,
                                    // constants and outputs of segments before it
  std::vector<Fallback> fallbacks;  // every node running in PyTorch, with the reason
};

Partition partition_graph(const KGraph& graph, const PartitionOptions& options);

// A human-readable report: the segments (kind, node count, ops) and every fallback with its reason
// and source location.
std::string describe_partition(const KGraph& graph, const Partition& partition);

}  // namespace kiln
