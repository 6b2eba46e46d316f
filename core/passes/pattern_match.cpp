#include "core/passes/pattern_match.h"

#include "core/passes/fused_names.h"
#include "core/weight_transforms.h"

#include "kernels/reference/host_access.h"

namespace kiln {

PatternMatcher::PatternMatcher(const Network& net)
    : net_(net), producer_(net.producers()), uses_(reader_counts(net)) {}

const Layer* PatternMatcher::producer(TensorId t) const {
  int p = producer_[t];
  return p < 0 ? nullptr : &net_.layers()[p];
}

bool PatternMatcher::single_use(TensorId t) const { return uses_[t] == 1 && !net_.is_output(t); }

bool PatternMatcher::constant_value(TensorId t, double* value) const {
  const Tensor& c = net_.tensor(t);
  if (c.kind != TensorKind::kConstant || !is_floating(c.dtype) || !is_static(c.dims) || volume(c.dims) != 1)
    return false;
  if (derives_from_weight(c)) return false;  // a refittable weight's value may change
  *value = load_element(TensorView{const_cast<uint8_t*>(c.data->data()), c.dtype, c.dims}, 0);
  return true;
}

bool PatternMatcher::is_constant(TensorId t, double value) const {
  double v = 0;
  if (!constant_value(t, &v)) return false;
  // The expected value as the constant's dtype stores it.
  uint8_t bytes[8] = {};
  TensorView view{bytes, net_.tensor(t).dtype, {}};
  store_element(view, 0, value);
  return load_element(view, 0) == v;
}

const Layer* PatternMatcher::elementwise(TensorId t, const std::string& op) const {
  return layer_with(t, "elementwise", "op", op);
}

const Layer* PatternMatcher::layer_with(TensorId t, const std::string& op, const std::string& key,
                                        const std::string& value) const {
  const Layer* l = producer(t);
  if (!l || l->op != op || !single_use(t)) return nullptr;
  auto it = l->attrs.values().find(key);
  if (it == l->attrs.values().end()) return nullptr;
  const std::string* s = std::get_if<std::string>(&it->second);
  return s && *s == value ? l : nullptr;
}

bool PatternMatcher::with_constant(TensorId t, const std::string& op, double value, TensorId* x) const {
  const Layer* l = elementwise(t, op);
  if (!l) return false;
  auto is_c = [&](TensorId c) { return is_constant(c, value); };
  if (op == "add" || op == "mul") return either(l, is_c, x);
  if (!is_c(l->inputs[1])) return false;
  *x = l->inputs[0];
  return true;
}

void replace_layer(Network& net, int index, const std::string& op, const std::vector<TensorId>& inputs,
                   Attributes attrs) {
  Layer& l = net.mutable_layers()[index];
  l.op = op;
  l.inputs = inputs;
  l.attrs = std::move(attrs);
}

}  // namespace kiln
