#include <algorithm>
#include <map>
#include <vector>

#include "converters/converter.h"
#include "ir/error.h"

namespace kiln {
namespace {

std::map<std::string, Converter>& table() {
  static std::map<std::string, Converter> t;
  return t;
}

bool has_dynamic_dims(const KGraph& graph, const KNode& node) {
  auto dynamic = [&](ValueId v) { return v != kNoValue && !is_static(graph.value(v).dims); };
  for (ValueId v : KGraph::node_inputs(node)) {
    if (dynamic(v)) return true;
  }
  return std::any_of(node.outputs.begin(), node.outputs.end(), dynamic);
}

}  // namespace

void register_converter(Converter c) {
  KILN_CHECK(!c.target.empty() && c.convert && c.capability,
             "converter needs a target, capability and convert");
  KILN_CHECK(table().count(c.target) == 0, "converter for " << c.target << " registered twice");
  std::string target = c.target;
  table().emplace(std::move(target), std::move(c));
}

namespace {
// What each override replaced, innermost last (an empty target: there was none).
std::map<std::string, std::vector<Converter>>& replaced() {
  static std::map<std::string, std::vector<Converter>> r;
  return r;
}
}  // namespace

void override_converter(Converter c) {
  KILN_CHECK(!c.target.empty() && c.convert && c.capability,
             "converter needs a target, capability and convert");
  auto it = table().find(c.target);
  replaced()[c.target].push_back(it == table().end() ? Converter{} : std::move(it->second));
  std::string target = c.target;
  table()[target] = std::move(c);
}

void remove_override_converter(const std::string& target) {
  auto it = replaced().find(target);
  KILN_CHECK(it != replaced().end() && !it->second.empty(),
             "no converter for " << target << " was added at run time");
  Converter previous = std::move(it->second.back());
  it->second.pop_back();
  if (it->second.empty()) replaced().erase(it);
  if (previous.target.empty()) {
    table().erase(target);
  } else {
    table()[target] = std::move(previous);
  }
}

const Converter* find_converter(const std::string& target) {
  auto it = table().find(target);
  return it == table().end() ? nullptr : &it->second;
}

std::vector<const Converter*> registered_converters() {
  std::vector<const Converter*> out;
  for (const auto& [name, c] : table()) out.push_back(&c);
  return out;
}

std::string check_convertible(const KGraph& graph, const KNode& node) {
  const Converter* c = find_converter(node.target);
  if (c == nullptr) return "no converter for " + node.target;
  if (!c->dynamic_shapes && has_dynamic_dims(graph, node)) return "dynamic shapes are not supported";
  try {
    return c->capability(graph, node);
  } catch (const Error& e) {
    return e.what();
  }
}

TensorId ConversionContext::tensor(ValueId v) {
  auto it = tensors_.find(v);
  if (it != tensors_.end()) return it->second;
  const KValue& kv = graph_.value(v);
  KILN_CHECK(kv.is_constant(), "value '" << kv.name << "' is not available in this engine segment");
  TensorId t = net_.add_constant(kv.name, kv.dtype, kv.dims, kv.data);
  if (!kv.weight.empty()) net_.mark_weight(t, kv.weight);
  tensors_[v] = t;
  return t;
}

TensorId ConversionContext::tensor(const KNode& node, const std::string& arg_name) {
  const Arg& a = node.arg(arg_name);
  KILN_CHECK(a.is_value(), node.describe()
                               << ": argument '" << arg_name << "' must be a tensor, got " << a.describe());
  return tensor(a.value);
}

TensorId ConversionContext::scalar_or_tensor(const KNode& node, const std::string& arg_name, DataType dtype) {
  const Arg& a = node.arg(arg_name);
  if (a.is_value()) return tensor(a.value);
  KILN_CHECK(a.is_number(), node.describe()
                                << ": argument '" << arg_name << "' must be a tensor or a number");
  const std::string name = node.name + "/" + arg_name;
  const double d = a.as_double();
  switch (dtype) {
    case DataType::kFloat32: {
      float f = static_cast<float>(d);
      return net_.add_constant(name, dtype, {}, &f, sizeof f);
    }
    case DataType::kInt64: {
      int64_t i = a.kind == Arg::Kind::kFloat ? static_cast<int64_t>(d) : a.i;
      return net_.add_constant(name, dtype, {}, &i, sizeof i);
    }
    case DataType::kInt32: {
      int32_t i = static_cast<int32_t>(a.kind == Arg::Kind::kFloat ? static_cast<int64_t>(d) : a.i);
      return net_.add_constant(name, dtype, {}, &i, sizeof i);
    }
    default: {
      // float16 / bfloat16: a float32 constant cast to the dtype by the engine.
      float f = static_cast<float>(d);
      TensorId c = net_.add_constant(name, DataType::kFloat32, {}, &f, sizeof f);
      return add(node, "cast", {c}, Attributes().set("to", std::string(dtype_name(dtype))),
                 arg_name + "_cast")
          .outputs[0];
    }
  }
}

TensorId ConversionContext::constant_i64(const KNode& node, const std::vector<int64_t>& values,
                                         const Dims& dims, const std::string& suffix) {
  return net_.add_constant(node.name + "/" + suffix, DataType::kInt64, dims, values.data(),
                           values.size() * sizeof(int64_t));
}

TensorId ConversionContext::size_tensor(const KNode& node, const std::string& arg_name) {
  const Arg& a = node.arg(arg_name);
  KILN_CHECK(a.kind == Arg::Kind::kList, node.describe() << ": '" << arg_name << "' must be a list of sizes");
  if (a.is_int_list()) return -1;
  std::vector<TensorId> parts;
  for (size_t k = 0; k < a.list.size(); ++k) {
    const Arg& e = a.list[k];
    if (e.kind == Arg::Kind::kInt) {
      parts.push_back(constant_i64(node, {e.i}, {1}, arg_name + std::to_string(k)));
    } else {
      KILN_CHECK(e.is_value(), node.describe() << ": size entry " << k << " is " << e.describe());
      TensorId s = tensor(e.value);
      const Dims& d = net_.tensor(s).dims;
      if (d.empty()) {
        s = add(node, "unsqueeze", {s}, Attributes().set("axes", std::vector<int64_t>{0}),
                arg_name + std::to_string(k))
                .outputs[0];
      }
      parts.push_back(s);
    }
  }
  return add(node, "concat", parts, Attributes().set("axis", int64_t{0}), arg_name).outputs[0];
}

void ConversionContext::bind(ValueId v, TensorId t) { tensors_[v] = t; }

void ConversionContext::set_output(const KNode& node, size_t index, TensorId t) {
  KILN_CHECK(index < node.outputs.size(), node.describe() << ": no output " << index);
  if (node.outputs[index] != kNoValue) bind(node.outputs[index], t);
}

Layer& ConversionContext::add(const KNode& node, const std::string& op, const std::vector<TensorId>& inputs,
                              Attributes attrs, const std::string& suffix) {
  std::string base = suffix.empty() ? node.name : node.name + "/" + suffix;
  std::string name = base;
  for (int k = 1; !used_names_.insert(name).second; ++k) name = base + "#" + std::to_string(k);
  try {
    return net_.add_layer(op, inputs, std::move(attrs), name);
  } catch (const Error& e) {
    KILN_FAIL(node.describe() << (node.location.empty() ? "" : " at " + node.location) << ": " << e.what());
  }
}

}  // namespace kiln
