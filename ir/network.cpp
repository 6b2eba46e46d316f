#include "ir/network.h"

#include <algorithm>
#include <cstring>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/utf8.h"

namespace kiln {
namespace {

void check_dims(const std::string& who, const Dims& dims, bool allow_dynamic) {
  KILN_CHECK(dims.size() <= static_cast<size_t>(kMaxRank),
             who << ": rank " << dims.size() << " exceeds the maximum of " << kMaxRank);
  for (int64_t d : dims) {
    KILN_CHECK(d >= 0 || (allow_dynamic && d == kDynamic),
               who << ": invalid dim " << d << " in " << to_string(dims)
                   << (allow_dynamic ? " (use -1 for a dynamic dim)" : " (constants must be static)"));
  }
}

}  // namespace

ShapeValues constant_values(DataType dtype, const Dims& dims, const std::vector<uint8_t>& data) {
  if (!is_integral(dtype) || !is_static(dims) || volume(dims) > kMaxShapeValues) return nullptr;
  const int64_t n = volume(dims);
  if (data.size() != static_cast<size_t>(n) * dtype_size(dtype)) return nullptr;
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* p = data.data() + i * dtype_size(dtype);
    switch (dtype) {
      case DataType::kInt64:
        std::memcpy(&v[i], p, 8);
        break;
      case DataType::kInt32: {
        int32_t x;
        std::memcpy(&x, p, 4);
        v[i] = x;
        break;
      }
      case DataType::kInt8:
        v[i] = static_cast<int8_t>(*p);
        break;
      default:
        v[i] = *p != 0;
        break;  // bool
    }
  }
  return make_values(std::move(v));
}

bool fully_known(const ShapeValues& v) {
  if (!v) return false;
  for (int64_t x : *v) {
    if (x == kUnknownValue) return false;
  }
  return true;
}

ShapeValues make_values(std::vector<int64_t> v) {
  return std::make_shared<const std::vector<int64_t>>(std::move(v));
}

TensorDesc Network::desc(TensorId id) const {
  const Tensor& t = tensor(id);
  return {t.dtype, t.dims, t.values};
}

TensorId Network::new_tensor(Tensor t) {
  KILN_CHECK(!t.name.empty(), "tensor names must not be empty");
  check_utf8(t.name, "tensor name");
  KILN_CHECK(by_name_.count(t.name) == 0, "tensor name '" << t.name << "' is already used");
  t.id = static_cast<TensorId>(tensors_.size());
  by_name_[t.name] = t.id;
  tensors_.push_back(std::move(t));
  return tensors_.back().id;
}

TensorId Network::add_input(const std::string& name, DataType dtype, const Dims& dims) {
  check_dims("input '" + name + "'", dims, /*allow_dynamic=*/true);
  Tensor t;
  t.name = name;
  t.dtype = dtype;
  t.dims = dims;
  t.kind = TensorKind::kInput;
  TensorId id = new_tensor(std::move(t));
  inputs_.push_back(id);
  return id;
}

TensorId Network::add_constant(const std::string& name, DataType dtype, const Dims& dims, const void* data,
                               size_t bytes) {
  auto buf = std::make_shared<std::vector<uint8_t>>(static_cast<const uint8_t*>(data),
                                                    static_cast<const uint8_t*>(data) + bytes);
  return add_constant(name, dtype, dims, std::move(buf));
}

TensorId Network::add_constant(const std::string& name, DataType dtype, const Dims& dims,
                               std::shared_ptr<const std::vector<uint8_t>> data) {
  std::string n = name.empty() ? "const_" + std::to_string(name_counter_++) : name;
  check_dims("constant '" + n + "'", dims, /*allow_dynamic=*/false);
  KILN_CHECK(data != nullptr, "constant '" << n << "': no data");
  const size_t expected = static_cast<size_t>(tensor_bytes(dims, dtype_size(dtype)));
  KILN_CHECK(data->size() == expected, "constant '" << n << "': " << data->size() << " bytes given, shape "
                                                    << to_string(dims) << " of " << dtype_name(dtype)
                                                    << " needs " << expected);
  Tensor t;
  t.name = n;
  t.dtype = dtype;
  t.dims = dims;
  t.kind = TensorKind::kConstant;
  t.data = std::move(data);
  t.values = constant_values(t.dtype, t.dims, *t.data);
  return new_tensor(std::move(t));
}

void Network::mark_weight(TensorId id, const std::string& source) {
  Tensor& t = tensor(id);
  KILN_CHECK(t.kind == TensorKind::kConstant, "mark_weight: '" << t.name << "' is not a constant");
  KILN_CHECK(!source.empty(), "mark_weight: '" << t.name << "': the weight needs a name");
  check_utf8(source, "weight name");
  t.lineage = source_lineage(source, t.dtype, t.dims);
}

std::string Network::unique_layer_name(const std::string& op) {
  std::string n;
  do {
    n = op + "_" + std::to_string(name_counter_++);
  } while (by_name_.count(n) != 0);
  return n;
}

Layer& Network::add_layer(const std::string& op, const std::vector<TensorId>& inputs, Attributes attrs,
                          const std::string& name) {
  check_utf8(op, "op name");
  check_utf8(name, "layer name");
  Layer layer;
  layer.op = op;
  layer.name = name.empty() ? unique_layer_name(op) : name;
  layer.inputs = inputs;
  layer.attrs = std::move(attrs);
  for (const auto& l : layers_) {
    KILN_CHECK(l.name != layer.name, "layer name '" << layer.name << "' is already used");
  }
  std::vector<TensorDesc> in;
  for (TensorId t : inputs) {
    KILN_CHECK(t >= 0 && static_cast<size_t>(t) < tensors_.size(),
               describe(layer) << ": input tensor id " << t << " does not belong to this network");
    in.push_back(desc(t));
  }
  check_attributes(layer);
  std::vector<TensorDesc> out = infer_layer(layer, in);
  for (size_t i = 0; i < out.size(); ++i) {
    Tensor t;
    t.name = out.size() == 1 ? layer.name : layer.name + ":" + std::to_string(i);
    if (by_name_.count(t.name)) t.name = unique_layer_name(layer.name);
    t.dtype = out[i].dtype;
    t.dims = out[i].dims;
    t.values = out[i].values;
    t.kind = TensorKind::kActivation;
    layer.outputs.push_back(new_tensor(std::move(t)));
  }
  layers_.push_back(std::move(layer));
  return layers_.back();
}

Layer& Network::add_matmul(TensorId a, TensorId b, bool transpose_a, bool transpose_b,
                           const std::string& name) {
  Attributes attrs;
  attrs.set("transpose_a", int64_t{transpose_a}).set("transpose_b", int64_t{transpose_b});
  return add_layer("matmul", {a, b}, std::move(attrs), name);
}

Layer& Network::add_elementwise(TensorId a, TensorId b, const std::string& op, const std::string& name) {
  Attributes attrs;
  attrs.set("op", op);
  return add_layer("elementwise", {a, b}, std::move(attrs), name);
}

Layer& Network::add_activation(TensorId x, const std::string& type, std::optional<double> alpha,
                               const std::string& name) {
  Attributes attrs;
  attrs.set("type", type);
  if (alpha.has_value()) attrs.set("alpha", *alpha);
  return add_layer("activation", {x}, std::move(attrs), name);
}

Layer& Network::add_identity(TensorId x, const std::string& name) {
  return add_layer("identity", {x}, Attributes{}, name);
}

void Network::mark_output(TensorId t, const std::string& name) {
  KILN_CHECK(t >= 0 && static_cast<size_t>(t) < tensors_.size(),
             "mark_output: tensor id " << t << " does not belong to this network");
  // An input's name is its input binding, and engines bind outputs to memory their layers write:
  // an input cannot also be an output (it used to be renamed silently, and then not run).
  KILN_CHECK(tensors_[t].kind != TensorKind::kInput,
             "mark_output: '" << tensors_[t].name << "' is a network input; an output must be computed by a "
                              << "layer: mark add_identity of it instead");
  if (!name.empty() && name != tensors_[t].name) {
    check_utf8(name, "mark_output: output name");
    KILN_CHECK(by_name_.count(name) == 0,
               "mark_output: name '" << name << "' is already used by another tensor");
    by_name_.erase(tensors_[t].name);
    tensors_[t].name = name;
    by_name_[name] = t;
  }
  if (!is_output(t)) outputs_.push_back(t);
}

const Tensor& Network::tensor(TensorId id) const {
  KILN_CHECK(id >= 0 && static_cast<size_t>(id) < tensors_.size(), "tensor id " << id << " out of range");
  return tensors_[id];
}

Tensor& Network::tensor(TensorId id) {
  KILN_CHECK(id >= 0 && static_cast<size_t>(id) < tensors_.size(), "tensor id " << id << " out of range");
  return tensors_[id];
}

TensorId Network::find_tensor(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? -1 : it->second;
}

bool Network::is_output(TensorId t) const {
  return std::find(outputs_.begin(), outputs_.end(), t) != outputs_.end();
}

std::vector<int> Network::producers() const {
  std::vector<int> p(tensors_.size(), -1);
  for (size_t i = 0; i < layers_.size(); ++i) {
    for (TensorId t : layers_[i].outputs) p[t] = static_cast<int>(i);
  }
  return p;
}

void Network::compact() {
  std::vector<bool> used(tensors_.size(), false);
  for (TensorId t : inputs_) used[t] = true;
  for (TensorId t : outputs_) used[t] = true;
  for (const auto& l : layers_) {
    for (TensorId t : l.inputs) used[t] = true;
    for (TensorId t : l.outputs) used[t] = true;
  }
  std::vector<TensorId> remap(tensors_.size(), -1);
  std::vector<Tensor> kept;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (!used[i]) continue;
    remap[i] = static_cast<TensorId>(kept.size());
    kept.push_back(std::move(tensors_[i]));
    kept.back().id = remap[i];
  }
  tensors_ = std::move(kept);
  auto fix = [&](std::vector<TensorId>& ids) {
    for (auto& t : ids) t = remap[t];
  };
  fix(inputs_);
  fix(outputs_);
  for (auto& l : layers_) {
    fix(l.inputs);
    fix(l.outputs);
  }
  reindex();
}

void Network::reindex() {
  by_name_.clear();
  for (const auto& t : tensors_) {
    KILN_CHECK(by_name_.count(t.name) == 0, "tensor name '" << t.name << "' appears twice");
    by_name_[t.name] = t.id;
  }
}

void Network::revalidate() {
  const size_t n = tensors_.size();
  std::vector<bool> defined(n, false);
  for (const auto& t : tensors_) check_utf8(t.name, "tensor name");
  for (const auto& t : tensors_) {
    if (t.kind == TensorKind::kConstant) {
      check_dims("constant '" + t.name + "'", t.dims, false);
      // A weight-derived constant of a plan saved without its weights has none until a refit.
      KILN_CHECK(t.data || t.lineage, "constant '" << t.name << "' has no data");
      KILN_CHECK(!t.data || t.data->size() == static_cast<size_t>(tensor_bytes(t.dims, dtype_size(t.dtype))),
                 "constant '" << t.name << "': data size does not match its shape");
      tensors_[t.id].values = t.data ? constant_values(t.dtype, t.dims, *t.data) : nullptr;
      defined[t.id] = true;
    }
  }
  for (TensorId t : inputs_) {
    KILN_CHECK(t >= 0 && static_cast<size_t>(t) < n, "network input id " << t << " out of range");
    KILN_CHECK(tensors_[t].kind == TensorKind::kInput,
               "tensor '" << tensors_[t].name << "' is listed as an input but is not one");
    check_dims("input '" + tensors_[t].name + "'", tensors_[t].dims, true);
    defined[t] = true;
  }
  for (const auto& t : tensors_) {
    KILN_CHECK(t.kind != TensorKind::kInput || defined[t.id],
               "input tensor '" << t.name << "' is not listed among the network inputs");
  }
  for (const auto& l : layers_) {
    check_utf8(l.op, "op name");
    check_utf8(l.name, "layer name");
    check_attributes(l);
    std::vector<TensorDesc> in;
    for (TensorId t : l.inputs) {
      KILN_CHECK(t >= 0 && static_cast<size_t>(t) < n, describe(l) << ": input id " << t << " out of range");
      KILN_CHECK(defined[t], describe(l)
                                 << ": input '" << tensors_[t].name << "' is used before it is produced");
      in.push_back(desc(t));
    }
    std::vector<TensorDesc> out = infer_layer(l, in);
    KILN_CHECK(out.size() == l.outputs.size(),
               describe(l) << ": has " << l.outputs.size() << " outputs, its op produces " << out.size());
    for (size_t i = 0; i < out.size(); ++i) {
      TensorId t = l.outputs[i];
      KILN_CHECK(t >= 0 && static_cast<size_t>(t) < n, describe(l) << ": output id " << t << " out of range");
      KILN_CHECK(!defined[t], describe(l) << ": output '" << tensors_[t].name << "' is produced twice");
      KILN_CHECK(tensors_[t].kind == TensorKind::kActivation,
                 describe(l) << ": output '" << tensors_[t].name << "' is not an activation");
      KILN_CHECK(tensors_[t].dtype == out[i].dtype && tensors_[t].dims == out[i].dims,
                 describe(l) << ": output '" << tensors_[t].name << "' is recorded as "
                             << dtype_name(tensors_[t].dtype) << to_string(tensors_[t].dims)
                             << " but infers as " << dtype_name(out[i].dtype) << to_string(out[i].dims));
      tensors_[t].values = out[i].values;
      defined[t] = true;
    }
  }
  KILN_CHECK(!outputs_.empty(), "the network has no outputs: call mark_output on at least one tensor");
  for (TensorId t : outputs_) {
    KILN_CHECK(t >= 0 && static_cast<size_t>(t) < n, "network output id " << t << " out of range");
    KILN_CHECK(defined[t], "network output '" << tensors_[t].name << "' is never produced");
  }
  reindex();
}

TensorId Network::restore_tensor(Tensor t) {
  t.id = static_cast<TensorId>(tensors_.size());
  tensors_.push_back(std::move(t));
  return tensors_.back().id;
}

void Network::restore_layer(Layer l) { layers_.push_back(std::move(l)); }

void Network::restore_io(std::vector<TensorId> inputs, std::vector<TensorId> outputs) {
  inputs_ = std::move(inputs);
  outputs_ = std::move(outputs);
}

}  // namespace kiln
