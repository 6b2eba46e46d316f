// Lineage: how a constant's bytes were computed from the network's refittable weights, so that an
// engine can be refitted (new weight values, same engine) by replaying the computation instead of
// rebuilding.
//
// A refittable weight is a constant that a frontend marked as one (Network::mark_weight; the
// torch frontends mark float parameters and buffers by their qualified name): its lineage is a
// "source" node naming it. Every builder pass that computes a new constant from constants records
// the computation as a node over its inputs' lineages (core/weight_transforms.h: a named transform
// and its attributes); an input that derives from no weight is kept as a "literal" node with its
// bytes. A constant whose lineage is null derives from no weight and never changes at refit.
// A pass that folds a weight's value into the engine's structure or attributes (a scale read into
// a kernel parameter, say) records a node with `blocked` set: refit refuses it by name.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ir/attributes.h"
#include "ir/dims.h"
#include "ir/dtype.h"

namespace kiln {

struct Lineage;
using LineagePtr = std::shared_ptr<const Lineage>;

struct Lineage {
  // "source": the weight `name`; "literal": `literal`; otherwise a transform of
  // core/weight_transforms.h applied to `inputs` with `attrs` ("layer": the reference kernel of op
  // `name`, output `output`).
  std::string transform;
  std::string name;
  Attributes attrs;
  std::vector<LineagePtr> inputs;
  int64_t output = 0;
  DataType dtype = DataType::kFloat32;  // of the result
  Dims dims;
  std::shared_ptr<const std::vector<uint8_t>> literal;
  std::string blocked;  // non-empty: cannot be replayed, and why
};

inline LineagePtr source_lineage(const std::string& name, DataType dtype, const Dims& dims) {
  auto l = std::make_shared<Lineage>();
  l->transform = "source";
  l->name = name;
  l->dtype = dtype;
  l->dims = dims;
  return l;
}

}  // namespace kiln
