// Builder passes. Each rewrites the network in place and returns whether it changed anything;
// each has its own file, header comment and test (tests/cpp/test_passes.cpp).
#pragma once

#include <vector>

#include "core/builder.h"
#include "core/network.h"
#include "core/plan.h"

namespace kiln {

// Refuses a network that cannot be built: re-runs validation and shape inference of every layer
// and checks the profiles against the inputs.
void validate_network(Network& net, const std::vector<OptimizationProfile>& profiles);
bool fold_constants(Network& net);
bool remove_noops(Network& net);
bool eliminate_dead_layers(Network& net);
bool assign_precision(Network& net, const PrecisionConfig& config);
bool fold_batch_norm(Network& net);
bool fuse_conv_epilogue(Network& net);
bool assign_layouts(Network& net);
MemoryPlan plan_memory(const Network& net, const std::vector<OptimizationProfile>& profiles);

}  // namespace kiln
