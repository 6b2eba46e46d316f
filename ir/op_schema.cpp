#include "ir/op_schema.h"

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "ir/error.h"
#include "ir/logging.h"
#include "ir/utf8.h"

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

// Levenshtein distance, ignoring case: "transpose_B" is 0 from "transpose_b".
size_t edit_distance(const std::string& a, const std::string& b) {
  const auto same = [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
  };
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (same(a[i - 1], b[j - 1]) ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// The declared attribute a misspelled `name` most likely meant: the nearest within a third of
// its length (at least one edit), or none.
const AttrSpec* closest_attribute(const OpSchema& schema, const std::string& name) {
  const AttrSpec* best = nullptr;
  size_t best_distance = std::max<size_t>(1, name.size() / 3) + 1;
  for (const auto* list : {&schema.attributes, &engine_attributes()}) {
    for (const AttrSpec& a : *list) {
      const size_t d = edit_distance(name, a.name);
      if (d < best_distance) {
        best = &a;
        best_distance = d;
      }
    }
  }
  return best;
}

std::string declared_names(const OpSchema& schema) {
  std::string s = schema.name + (schema.attributes.empty() ? " takes no attributes of its own" : " takes ");
  for (size_t i = 0; i < schema.attributes.size(); ++i) s += (i ? ", " : "") + schema.attributes[i].name;
  return s;
}

bool type_fits(AttrType type, const AttrValue& v) {
  switch (type) {
    case AttrType::kInt:
      return std::holds_alternative<int64_t>(v);
    case AttrType::kFloat:  // an int widens (Attributes::get_float)
      return std::holds_alternative<double>(v) || std::holds_alternative<int64_t>(v);
    case AttrType::kInts:
      return std::holds_alternative<std::vector<int64_t>>(v);
    case AttrType::kFloats:  // likewise; Python's [] arrives as an int list
      return std::holds_alternative<std::vector<double>>(v) ||
             std::holds_alternative<std::vector<int64_t>>(v);
    case AttrType::kString:
      return std::holds_alternative<std::string>(v);
  }
  return false;
}

const char* with_article(AttrType t) {
  switch (t) {
    case AttrType::kInt:
      return "an int";
    case AttrType::kFloat:
      return "a float";
    case AttrType::kInts:
      return "an int list";
    case AttrType::kFloats:
      return "a float list";
    case AttrType::kString:
      return "a string";
  }
  return "?";
}

// "a float (1.5)", "a string ("relu")": what a mistyped attribute holds, for the message.
std::string describe_value(const AttrValue& v) {
  std::ostringstream s;
  if (const auto* i = std::get_if<int64_t>(&v)) {
    s << "an int (" << *i << ")";
  } else if (const auto* f = std::get_if<double>(&v)) {
    s << "a float (" << *f << ")";
  } else if (const auto* str = std::get_if<std::string>(&v)) {
    s << "a string (\"" << printable(str->substr(0, 40)) << (str->size() > 40 ? "..." : "") << "\")";
  } else {
    const size_t n = std::visit(
        [](const auto& x) -> size_t {
          if constexpr (std::is_same_v<std::decay_t<decltype(x)>, std::vector<int64_t>> ||
                        std::is_same_v<std::decay_t<decltype(x)>, std::vector<double>>) {
            return x.size();
          } else {
            return 0;
          }
        },
        v);
    s << (std::holds_alternative<std::vector<int64_t>>(v) ? "an int list" : "a float list") << " of " << n;
  }
  return s.str();
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

const std::vector<AttrSpec>& engine_attributes() {
  static const std::vector<AttrSpec> attrs = {
      {"fused", AttrType::kString, std::nullopt,
       "informational: the original layer names the layer computes, comma-separated (fusion passes "
       "set it, kiln.inspect shows it); absent: the layer's own name"},
  };
  return attrs;
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

namespace {

// The libraries KILN_PLUGIN_LIBRARIES lists (colon-separated), loaded once, the first time a
// plugin op is looked up and not registered (core/plugin.h).
void load_env_plugin_libraries() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("KILN_PLUGIN_LIBRARIES");
    if (env == nullptr) return;
    std::stringstream list(env);
    std::string path;
    while (std::getline(list, path, ':')) {
      if (path.empty()) continue;
      if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
        const char* why = dlerror();
        KILN_LOG(kWarning,
                 "KILN_PLUGIN_LIBRARIES: cannot load " << path << ": " << (why ? why : "dlopen failed"));
      }
    }
  });
}

bool is_plugin_op(const std::string& op) { return op.rfind("plugin:", 0) == 0; }

// "layer 'x' (plugin:ns::name): ..." for a layer whose op is not registered.
std::string unknown_op(const Layer& layer) {
  std::ostringstream s;
  if (is_plugin_op(layer.op)) {
    std::string version;
    auto it = layer.attrs.values().find("plugin_version");
    if (it != layer.attrs.values().end() && std::holds_alternative<std::string>(it->second))
      version = std::get<std::string>(it->second);
    s << describe(layer) << ": plugin '" << layer.op.substr(7) << "'"
      << (version.empty() ? "" : " version '" + version + "'")
      << " is not loaded: load the library that defines it first (kiln.load_plugin_library(path) in "
         "Python, kiln::load_plugin_library in C++, or KILN_PLUGIN_LIBRARIES=path for any app)";
  } else if (layer.op == "torch_op") {  // defined by libkiln_runtime (runtime/runtime.cpp)
    s << describe(layer) << " runs a torch op inside the engine (torch_ops_in_engine): such engines need "
      << "torch and Kiln's torch runtime (libkiln_runtime, loaded by `import kiln` with torch, or linked as "
      << "Kiln::runtime in a C++ app)";
  } else {
    s << describe(layer) << ": unknown op '" << layer.op << "'";
  }
  return s.str();
}

}  // namespace

const OpSchema* find_schema(const std::string& op) {
  auto it = registry().find(op);
  if (it == registry().end() && is_plugin_op(op)) {
    load_env_plugin_libraries();
    it = registry().find(op);
  }
  return it == registry().end() ? nullptr : &it->second;
}

std::vector<std::string> registered_ops() {
  std::vector<std::string> names;
  for (const auto& kv : registry()) {
    // Plugins' ops, and torch_op (libkiln_runtime's, registered when torch is there): not built in.
    if (!is_plugin_op(kv.first) && kv.first != "torch_op") names.push_back(kv.first);
  }
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
  KILN_CHECK(schema != nullptr, unknown_op(layer));
  int n = static_cast<int>(inputs.size());
  KILN_CHECK(n >= schema->min_inputs && n <= schema->max_inputs,
             describe(layer) << ": takes " << schema->min_inputs
                             << (schema->max_inputs != schema->min_inputs
                                     ? " to " + std::to_string(schema->max_inputs)
                                     : std::string())
                             << " inputs, got " << n);
  for (const TensorDesc& t : inputs) {
    KILN_CHECK(dims_product_fits(t.dims), describe(layer) << ": input shape " << to_string(t.dims)
                                                          << " is too large (its dims multiply past 2^62)");
  }
  std::vector<TensorDesc> out = schema->infer(layer, inputs);
  for (const TensorDesc& t : out) {
    KILN_CHECK(dims_product_fits(t.dims), describe(layer) << ": output shape " << to_string(t.dims)
                                                          << " is too large (its dims multiply past 2^62)");
  }
  return out;
}

void check_attributes(const Layer& layer) {
  const OpSchema* schema = find_schema(layer.op);
  KILN_CHECK(schema != nullptr, unknown_op(layer));
  for (const auto& [name, value] : layer.attrs.values()) {
    check_utf8(name, describe(layer) + ": attribute name");
    const AttrSpec* spec = schema->attribute(name);
    for (const AttrSpec& a : engine_attributes()) {
      if (spec == nullptr && a.name == name) spec = &a;
    }
    if (spec == nullptr) {
      const AttrSpec* closest = closest_attribute(*schema, name);
      KILN_FAIL(describe(layer) << ": unknown attribute '" << name << "'"
                                << (closest ? " (did you mean '" + closest->name + "'?)" : std::string())
                                << "; " << declared_names(*schema) << " (docs/ops.md)");
    }
    KILN_CHECK(type_fits(spec->type, value),
               describe(layer) << ": attribute '" << name << "' must be " << with_article(spec->type)
                               << (spec->doc.empty() ? std::string() : " (" + spec->doc + ")") << ", got "
                               << describe_value(value));
    if (const auto* text = std::get_if<std::string>(&value)) {
      check_utf8(*text, describe(layer) + ": the value of attribute '" + name + "'");
    }
  }
}

bool is_alias_layer(const Layer& layer) {
  return layer.attrs.has("alias") && layer.attrs.get_int("alias", layer.name) != 0;
}

LayerCost layer_cost(const Layer& layer, const std::vector<TensorDesc>& in,
                     const std::vector<TensorDesc>& out) {
  LayerCost c;
  if (is_alias_layer(layer)) return c;
  double elements = 0.0;
  for (const auto* list : {&in, &out}) {
    for (const TensorDesc& d : *list) {
      if (!is_static(d.dims)) continue;
      c.bytes += static_cast<double>(tensor_bytes(d.dims, dtype_size(d.dtype)));
    }
  }
  for (const TensorDesc& d : out) {
    if (is_static(d.dims)) elements += static_cast<double>(volume(d.dims));
  }
  const OpSchema* schema = find_schema(layer.op);
  c.flops = schema && schema->flops ? schema->flops(layer, in, out) : elements;
  return c;
}

}  // namespace kiln
