// The op registry: one OpSchema per IR op, with the function that validates a layer and infers
// its outputs. Validation errors name the layer. Called with dynamic dims (-1) at build time and
// with concrete dims at run time, so a schema must accept both.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/network.h"

namespace kiln {

struct OpSchema {
  std::string name;
  int min_inputs = 1;
  int max_inputs = 1;
  std::function<std::vector<TensorDesc>(const Layer&, const std::vector<TensorDesc>&)> infer;
};

void register_schema(OpSchema schema);
const OpSchema* find_schema(const std::string& op);  // nullptr when unknown
std::vector<std::string> registered_ops();

// Validates `layer` against its schema and returns its output descriptions.
std::vector<TensorDesc> infer_layer(const Layer& layer, const std::vector<TensorDesc>& inputs);

// A short "layer 'fc1' (matmul)" for messages.
std::string describe(const Layer& layer);

}  // namespace kiln
