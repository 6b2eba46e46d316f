// Converts one engine segment of a KGraph into a core::Network: one input binding per segment
// input and one output per segment output, both named after their KGraph values; nodes are
// converted in the segment's order by their registered converters.
#pragma once

#include <string>
#include <utility>

#include "ir/error.h"
#include "ir/network.h"
#include "partitioning/partition.h"

namespace kiln {

// A node's converter failed (a layer it added was refused, e.g. operand dtypes the engine op does
// not take): `node` is its index in the KGraph and `reason` the refusal, so the driver can run
// that node in PyTorch and partition again.
class NodeConversionError : public Error {
 public:
  NodeConversionError(int node, std::string reason, const std::string& what)
      : Error(what), node(node), reason(std::move(reason)) {}
  int node;
  std::string reason;
};

// Throws NodeConversionError when a converter fails.
Network convert_segment(const KGraph& graph, const Segment& segment);

}  // namespace kiln
