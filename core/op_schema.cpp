#include "core/op_schema.h"

#include <map>
#include <mutex>

#include "core/error.h"
#include "core/ops/ops.h"

namespace kiln {
namespace {

std::map<std::string, OpSchema>& registry() {
  static std::map<std::string, OpSchema> r;
  return r;
}

std::once_flag g_builtin_once;

void ensure_builtins() {
  std::call_once(g_builtin_once, [] {
    // The core op set, one function per op family (core/ops/<op>.cpp).
    register_identity_schema();
    register_matmul_schema();
    register_elementwise_schema();
    register_activation_schema();
    register_unary_schema();
    register_attention_schema();
    register_cast_schema();
    register_where_schema();
    register_generate_schema();
    register_resize_schema();
    register_indexing_schema();
    register_convolution_schema();
    register_pooling_schema();
    register_shape_schema();
    register_reduce_schema();
    register_normalization_schema();
    register_fused_pointwise_schema();
  });
}

}  // namespace

void register_schema(OpSchema schema) {
  KILN_CHECK(registry().count(schema.name) == 0, "op '" << schema.name << "' registered twice");
  std::string name = schema.name;
  registry().emplace(name, std::move(schema));
}

const OpSchema* find_schema(const std::string& op) {
  ensure_builtins();
  auto it = registry().find(op);
  return it == registry().end() ? nullptr : &it->second;
}

std::vector<std::string> registered_ops() {
  ensure_builtins();
  std::vector<std::string> names;
  for (const auto& kv : registry()) names.push_back(kv.first);
  return names;
}

std::string describe(const Layer& layer) { return "layer '" + layer.name + "' (" + layer.op + ")"; }

std::vector<TensorDesc> infer_layer(const Layer& layer, const std::vector<TensorDesc>& inputs) {
  const OpSchema* schema = find_schema(layer.op);
  KILN_CHECK(schema != nullptr, describe(layer) << ": unknown op '" << layer.op << "'");
  int n = static_cast<int>(inputs.size());
  KILN_CHECK(n >= schema->min_inputs && n <= schema->max_inputs,
             describe(layer) << ": takes " << schema->min_inputs
                             << (schema->max_inputs != schema->min_inputs
                                     ? " to " + std::to_string(schema->max_inputs)
                                     : std::string())
                             << " inputs, got " << n);
  return schema->infer(layer, inputs);
}

}  // namespace kiln
