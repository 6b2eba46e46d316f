// The compile driver: one KGraph and one CompileOptions in; the partition, one plan per engine
// segment and a report out. Both frontends call it — the export path through kiln._C
// (py/kiln/compiler.py), the TorchScript frontend in C++ (torchscript/compile.cpp) — so every
// option means the same on both paths and the report is built in one place. The frontends keep
// what only they can do: producing the KGraph and the segment inputs' shape ranges, and
// assembling a module that calls the engines.
//
// Pipeline: partition (partitioning/) -> per engine segment: convert (converters/, via
// convert_segment) -> Builder::build with the options and the segment's optimization profile.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/builder.h"
#include "core/plan.h"
#include "driver/compile_options.h"
#include "lowering/kgraph.h"
#include "partitioning/partition.h"

namespace kiln {

// "fp16" -> Precision::kFP16, ...: through core's one table of precision names (enable_precision).
Precision parse_precision(const std::string& name);
const char* precision_name(Precision p);  // "fp32", "fp16", "bf16", "tf32"

// The builder's view of the options: precisions, workspace, level, target, tactics, cache.
BuilderConfig builder_config(const CompileOptions& options);

struct CompileResult {
  Partition partition;
  CompileReport report;
  std::vector<Plan> plans;  // one per engine segment, in segment order (none with dry_run)
};

// The min/opt/max shapes of a segment input with dynamic dims, as the frontend knows them.
using InputRange = std::function<ShapeRange(ValueId)>;

// PartitionOptions from the compile options, plus the nodes a frontend keeps in PyTorch.
PartitionOptions partition_options(const CompileOptions& options,
                                   std::map<int, std::string> torch_nodes = {});

CompileReport make_report(const KGraph& graph, const Partition& partition);

// Partitions `graph` and (unless dry_run) builds every engine segment. `range` is asked for each
// engine-segment input whose dims are not all static. Errors throw kiln::Error naming the node.
CompileResult compile_graph(const KGraph& graph, const CompileOptions& options, const InputRange& range,
                            std::map<int, std::string> torch_nodes = {});

}  // namespace kiln
