// activation: y = f(x), elementwise, for the activation functions of the core set.
// Attributes: `type`; `alpha` (leaky_relu slope, elu alpha, clip min), `beta` (clip max,
// softplus beta), `threshold` (softplus: linear above beta*x > threshold, default 20).
#include "ir/ops/activation.h"

#include <algorithm>

#include "ir/error.h"
#include "ir/op_schema.h"

namespace kiln {

const std::vector<std::string>& activation_types() {
  static const std::vector<std::string> types = {"relu",      "sigmoid", "tanh",      "leaky_relu",  "gelu",
                                                 "gelu_tanh", "silu",    "hardswish", "hardsigmoid", "elu",
                                                 "softplus",  "mish",    "clip",      "selu"};
  return types;
}

double default_activation_alpha(const std::string& type) {
  return type == "clip" ? 0.0 : type == "elu" ? 1.0 : 0.01;
}

ActivationAttrs activation_attrs(const std::string& type, const Attributes& attrs,
                                 const std::string& prefix) {
  ActivationAttrs a;
  a.alpha = attrs.get_float(prefix + "alpha", default_activation_alpha(type));
  a.beta = attrs.get_float(prefix + "beta", a.beta);
  a.threshold = attrs.get_float(prefix + "threshold", a.threshold);
  return a;
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
    const ActivationAttrs a = activation_attrs(type, layer.attrs);
    KILN_CHECK(a.alpha <= a.beta, who << ": clip needs alpha (min) <= beta (max)");
  }
  if (type == "softplus") {
    KILN_CHECK(activation_attrs(type, layer.attrs).beta != 0.0, who << ": softplus beta must not be 0");
  }
  return {in[0]};
}

}  // namespace

namespace {

const ActivationAttrs kActivationDefaults{};

const std::vector<AttrSpec> kActivationAttributes = {
    {"type", AttrType::kString, std::nullopt, "required: relu, sigmoid, ... (activation_types())"},
    {"alpha", AttrType::kFloat, std::nullopt,
     "leaky_relu slope, elu alpha, clip min; absent: depends on `type` (default_activation_alpha: "
     "0.01, elu 1, clip 0)"},
    {"beta", AttrType::kFloat, AttrValue{kActivationDefaults.beta}, "clip max, softplus beta"},
    {"threshold", AttrType::kFloat, AttrValue{kActivationDefaults.threshold},
     "softplus: linear above beta * x > threshold"},
};

const SchemaRegistration kRegistered{
    {"activation", 1, 1, infer_activation, kActivationAttributes, kPointwise | kLayoutTransparent},
};

}  // namespace

}  // namespace kiln
