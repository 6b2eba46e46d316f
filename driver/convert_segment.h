// Converts one engine segment of a KGraph into a core::Network: one input binding per segment
// input and one output per segment output, both named after their KGraph values; nodes are
// converted in the segment's order by their registered converters.
#pragma once

#include "ir/network.h"
#include "partitioning/partition.h"

namespace kiln {

Network convert_segment(const KGraph& graph, const Segment& segment);

}  // namespace kiln
