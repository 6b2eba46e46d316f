#include "ir/op_schema.h"

#include <map>

#include "ir/error.h"

namespace kiln {
namespace {

std::map<std::string, OpSchema>& registry() {
  static std::map<std::string, OpSchema> r;
  return r;
}

const AttrSpec& declared(const std::string& op, const std::string& attr) {
  const OpSchema* schema = find_schema(op);
  KILN_CHECK(schema != nullptr, "unknown op '" << op << "'");
  const AttrSpec* spec = schema->attribute(attr);
  KILN_CHECK(spec != nullptr && spec->default_value.has_value(),
             "op '" << op << "' declares no default for attribute '" << attr << "'");
  return *spec;
}

}  // namespace

const char* attr_type_name(AttrType t) {
  switch (t) {
    case AttrType::kInt:
      return "int";
    case AttrType::kFloat:
      return "float";
    case AttrType::kInts:
      return "int list";
    case AttrType::kFloats:
      return "float list";
    case AttrType::kString:
      return "string";
  }
  return "?";
}

const AttrSpec* OpSchema::attribute(const std::string& attr) const {
  for (const AttrSpec& a : attributes) {
    if (a.name == attr) return &a;
  }
  return nullptr;
}

void register_schema(OpSchema schema) {
  KILN_CHECK(registry().count(schema.name) == 0, "op '" << schema.name << "' registered twice");
  std::string name = schema.name;
  registry().emplace(name, std::move(schema));
}

SchemaRegistration::SchemaRegistration(std::initializer_list<OpSchema> schemas) {
  for (const OpSchema& s : schemas) register_schema(s);
}

const OpSchema* find_schema(const std::string& op) {
  auto it = registry().find(op);
  return it == registry().end() ? nullptr : &it->second;
}

std::vector<std::string> registered_ops() {
  std::vector<std::string> names;
  for (const auto& kv : registry()) names.push_back(kv.first);
  return names;
}

bool has_trait(const std::string& op, OpTrait t) {
  const OpSchema* schema = find_schema(op);
  return schema != nullptr && (schema->traits & t) != 0;
}

double default_float(const std::string& op, const std::string& attr) {
  return std::get<double>(*declared(op, attr).default_value);
}

int64_t default_int(const std::string& op, const std::string& attr) {
  return std::get<int64_t>(*declared(op, attr).default_value);
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

bool is_alias_layer(const Layer& layer) {
  return layer.attrs.has("alias") && layer.attrs.get_int("alias", layer.name) != 0;
}

}  // namespace kiln
