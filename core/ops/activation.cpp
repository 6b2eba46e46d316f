// activation: y = f(x), elementwise, for the activation functions of the core set.
// Attributes: `type`; `alpha` (leaky_relu slope, elu alpha, clip min), `beta` (clip max,
// softplus beta), `threshold` (softplus: linear above beta*x > threshold, default 20).
#include "core/ops/activation.h"

#include <algorithm>

#include "core/error.h"
#include "core/op_schema.h"
#include "core/ops/ops.h"

namespace kiln {

const std::vector<std::string>& activation_types() {
  static const std::vector<std::string> types = {"relu",      "sigmoid", "tanh",      "leaky_relu",  "gelu",
                                                 "gelu_tanh", "silu",    "hardswish", "hardsigmoid", "elu",
                                                 "softplus",  "mish",    "clip"};
  return types;
}

namespace {

std::vector<TensorDesc> infer_activation(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  std::string type = layer.attrs.get_string("type", who);
  const auto& types = activation_types();
  KILN_CHECK(std::find(types.begin(), types.end(), type) != types.end(),
             who << ": unknown activation '" << type << "'");
  KILN_CHECK(is_floating(in[0].dtype),
             who << ": input must be floating point, got " << dtype_name(in[0].dtype));
  if (type == "clip") {
    KILN_CHECK(layer.attrs.get_float("alpha", 0.0) <= layer.attrs.get_float("beta", 0.0),
               who << ": clip needs alpha (min) <= beta (max)");
  }
  if (type == "softplus") {
    KILN_CHECK(layer.attrs.get_float("beta", 1.0) != 0.0, who << ": softplus beta must not be 0");
  }
  return {in[0]};
}

}  // namespace

void register_activation_schema() { register_schema({"activation", 1, 1, infer_activation}); }

}  // namespace kiln
