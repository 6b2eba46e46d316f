#include "lowering/kgraph.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "ir/error.h"

namespace kiln {

Arg Arg::of_bool(bool v) {
  Arg a;
  a.kind = Kind::kBool;
  a.b = v;
  a.i = v ? 1 : 0;
  return a;
}

Arg Arg::of_int(int64_t v) {
  Arg a;
  a.kind = Kind::kInt;
  a.i = v;
  return a;
}

Arg Arg::of_float(double v) {
  Arg a;
  a.kind = Kind::kFloat;
  a.f = v;
  return a;
}

Arg Arg::of_string(std::string v) {
  Arg a;
  a.kind = Kind::kString;
  a.s = std::move(v);
  return a;
}

Arg Arg::of_value(ValueId v) {
  Arg a;
  a.kind = Kind::kValue;
  a.value = v;
  return a;
}

Arg Arg::of_list(std::vector<Arg> v) {
  Arg a;
  a.kind = Kind::kList;
  a.list = std::move(v);
  return a;
}

bool Arg::is_int_list() const {
  if (kind != Kind::kList) return false;
  return std::all_of(list.begin(), list.end(), [](const Arg& e) { return e.kind == Kind::kInt; });
}

std::vector<int64_t> Arg::ints() const {
  KILN_CHECK(is_int_list(), "expected a list of ints, got " << describe());
  std::vector<int64_t> out;
  for (const Arg& e : list) out.push_back(e.i);
  return out;
}

double Arg::as_double() const {
  switch (kind) {
    case Kind::kBool:
    case Kind::kInt:
      return static_cast<double>(i);
    case Kind::kFloat:
      return f;
    default:
      KILN_FAIL("expected a number, got " << describe());
  }
}

std::string Arg::describe() const {
  std::ostringstream os;
  switch (kind) {
    case Kind::kNone:
      os << "None";
      break;
    case Kind::kBool:
      os << (b ? "True" : "False");
      break;
    case Kind::kInt:
      os << i;
      break;
    case Kind::kFloat:
      os << f;
      break;
    case Kind::kString:
      os << "'" << s << "'";
      break;
    case Kind::kValue:
      os << "%" << value;
      break;
    case Kind::kList:
      os << "[";
      for (size_t k = 0; k < list.size(); ++k) os << (k ? ", " : "") << list[k].describe();
      os << "]";
      break;
  }
  return os.str();
}

const Arg* KNode::find(const std::string& arg_name) const {
  for (const auto& [n, a] : args) {
    if (n == arg_name) return &a;
  }
  return nullptr;
}

const Arg& KNode::arg(const std::string& arg_name) const {
  const Arg* a = find(arg_name);
  KILN_CHECK(a != nullptr, describe() << ": no argument '" << arg_name << "'");
  return *a;
}

std::string KNode::describe() const { return name + " (" + target + ")"; }

void KGraph::check_value(ValueId v, const std::string& who) const {
  KILN_CHECK(v >= 0 && static_cast<size_t>(v) < values_.size(), who << ": unknown value id " << v);
}

ValueId KGraph::add_input(const std::string& name, DataType dtype, const Dims& dims) {
  ValueId id = add_value(name, dtype, dims, false);
  inputs_.push_back(id);
  return id;
}

ValueId KGraph::add_constant(const std::string& name, DataType dtype, const Dims& dims, const void* data,
                             size_t bytes, const std::string& weight) {
  KILN_CHECK(is_static(dims), "constant " << name << ": dims " << to_string(dims) << " must be static");
  KILN_CHECK(bytes == static_cast<size_t>(volume(dims)) * dtype_size(dtype),
             "constant " << name << ": " << bytes << " bytes do not match " << dtype_name(dtype) << " "
                         << to_string(dims));
  ValueId id = add_value(name, dtype, dims, false);
  auto buf = std::make_shared<std::vector<uint8_t>>(bytes);
  if (bytes) std::memcpy(buf->data(), data, bytes);
  values_[id].data = std::move(buf);
  values_[id].weight = weight;
  return id;
}

ValueId KGraph::add_value(const std::string& name, DataType dtype, const Dims& dims, bool host_scalar) {
  KILN_CHECK(!host_scalar || dims.empty(), "value " << name << ": a host scalar has rank 0");
  KValue v;
  v.id = static_cast<ValueId>(values_.size());
  v.name = name;
  v.dtype = dtype;
  v.dims = dims;
  v.host_scalar = host_scalar;
  values_.push_back(std::move(v));
  producer_.push_back(-1);
  return values_.back().id;
}

size_t KGraph::add_node(KNode node) {
  for (ValueId v : node_inputs(node)) {
    check_value(v, node.describe());
    KILN_CHECK(producer_[v] >= 0 || values_[v].is_constant() ||
                   std::find(inputs_.begin(), inputs_.end(), v) != inputs_.end(),
               node.describe() << ": reads value '" << values_[v].name << "' before it is produced");
  }
  size_t index = nodes_.size();
  for (ValueId v : node.outputs) {
    if (v == kNoValue) continue;
    check_value(v, node.describe());
    KILN_CHECK(producer_[v] < 0 && !values_[v].is_constant() &&
                   std::find(inputs_.begin(), inputs_.end(), v) == inputs_.end(),
               node.describe() << ": value '" << values_[v].name << "' already has a producer");
    producer_[v] = static_cast<int>(index);
  }
  nodes_.push_back(std::move(node));
  return index;
}

void KGraph::mark_output(ValueId v) {
  check_value(v, "graph output");
  outputs_.push_back(v);
}

const KValue& KGraph::value(ValueId v) const {
  check_value(v, "KGraph");
  return values_[v];
}

std::vector<ValueId> KGraph::node_inputs(const KNode& node) {
  std::vector<ValueId> out;
  auto visit = [&](const Arg& a, auto&& self) -> void {
    if (a.kind == Arg::Kind::kValue) {
      if (std::find(out.begin(), out.end(), a.value) == out.end()) out.push_back(a.value);
    } else if (a.kind == Arg::Kind::kList) {
      for (const Arg& e : a.list) self(e, self);
    }
  };
  for (const auto& [name, a] : node.args) visit(a, visit);
  return out;
}

std::vector<int> KGraph::producers() const { return producer_; }

bool KGraph::from_constants_only(ValueId v) const {
  check_value(v, "from_constants_only");
  std::vector<ValueId> pending{v};
  std::vector<bool> seen(values_.size(), false);
  while (!pending.empty()) {
    const ValueId u = pending.back();
    pending.pop_back();
    if (seen[u]) continue;
    seen[u] = true;
    const int p = producer_[u];
    if (p < 0) {
      if (!values_[u].is_constant()) return false;
      continue;
    }
    for (ValueId in : node_inputs(nodes_[p])) pending.push_back(in);
  }
  return true;
}

std::string KGraph::summary() const {
  std::ostringstream os;
  for (const KNode& n : nodes_) {
    os << n.name << " = " << n.target << "(";
    for (size_t k = 0; k < n.args.size(); ++k) {
      os << (k ? ", " : "") << n.args[k].first << "=" << n.args[k].second.describe();
    }
    os << ") ->";
    for (ValueId v : n.outputs) os << " %" << v;
    os << "\n";
  }
  return os.str();
}

}  // namespace kiln
