// Refit: new values for an engine's refittable weights, without a rebuild. Every constant that
// derives from weights (ir/lineage.h) is recomputed by replaying the weight transforms the
// builder applied (core/weight_transforms.h), so a refitted engine holds the bytes a fresh build
// with the new weights would hold (the same layers and tactics: bit-identical outputs when the
// fresh build chose the same tactics).
#pragma once

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/plan.h"
#include "core/weight_transforms.h"
#include "ir/network.h"

namespace kiln {

struct WeightSpec {
  std::string name;
  DataType dtype = DataType::kFloat32;
  Dims dims;
};

// The refittable weights the constants of `net` derive from, sorted by name. Throws when one name
// appears with two shapes or dtypes (a corrupt plan).
std::vector<WeightSpec> refittable_weights(const Network& net);

// The constants of `net` recomputed from `weights` (each weight of refittable_weights(net) by name,
// with its dtype and dims, and nothing else): (tensor id, bytes) per weight-derived constant.
// Refuses, naming them, missing, unknown and reshaped weights, and a constant whose weights a pass
// folded into the engine's structure (a blocked lineage).
std::vector<std::pair<TensorId, Bytes>> replay_weights(const Network& net,
                                                       const std::map<std::string, ConstantValue>& weights);

// The same where the weights named in `on_device` are held elsewhere (on the engine's GPU): they
// count as given, and each constant that is one of them unchanged (lineage "source") is listed in
// *direct (tensor id, weight name) instead of recomputed. A transform reading one of them is an
// error: such weights must be in `weights` (host_read_weights says which).
std::vector<std::pair<TensorId, Bytes>> replay_weights(const Network& net,
                                                       const std::map<std::string, ConstantValue>& weights,
                                                       const std::set<std::string>& on_device,
                                                       std::vector<std::pair<TensorId, std::string>>* direct);

// The weights some constant of `net` computes from (a transform: folding, a layout, a dtype):
// refit needs their values on the host. The others are constants as they are.
std::set<std::string> host_read_weights(const Network& net);

// Sets the weight-derived constants of `plan` from `weights` (replay_weights): a plan saved with
// strip_weights gets its constants back; any other plan gets new values.
void refit_plan(Plan& plan, const std::map<std::string, ConstantValue>& weights);

}  // namespace kiln
