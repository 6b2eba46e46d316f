// Small helpers for the pattern passes (fuse_gelu, fuse_rms_norm): walking from a tensor to the
// layer that produced it and checking ops, constants and single use. A pattern matches only when
// every op, attribute and constant is exactly the expected one.
#pragma once

#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln {

// A cast from a floating dtype to a floating dtype: the quantization passes look through it
// (assign_precision keeps a float32 quantization layer between casts in a float16 network).
inline bool is_float_cast(const Network& net, const Layer& l) {
  return l.op == "cast" && is_floating(net.tensor(l.inputs[0]).dtype) &&
         is_floating(net.tensor(l.outputs[0]).dtype);
}

class PatternMatcher {
 public:
  explicit PatternMatcher(const Network& net);

  // The layer producing `t`, or nullptr for inputs and constants.
  const Layer* producer(TensorId t) const;
  // `t` is used by exactly one layer and is not a network output: the pattern may absorb it.
  bool single_use(TensorId t) const;
  // `t` is a one-element constant equal to `value` as stored in `t`'s dtype.
  bool is_constant(TensorId t, double value) const;
  // The value of a one-element floating constant (false when `t` is not one).
  bool constant_value(TensorId t, double* value) const;

  // `t` = elementwise `op`(a, b) with single-use `t`, or nullptr.
  const Layer* elementwise(TensorId t, const std::string& op) const;
  // `t` = `op`(x, constant `value`) or `op`(constant, x) for commutative ops (add, mul); sets
  // `*x`. For other ops only `op`(x, constant).
  bool with_constant(TensorId t, const std::string& op, double value, TensorId* x) const;
  // `t` = mul/add(a, b) in either order where one side satisfies `first`; sets the other side.
  template <typename F>
  bool either(const Layer* l, F first, TensorId* other) const {
    if (!l) return false;
    if (first(l->inputs[0])) {
      *other = l->inputs[1];
      return true;
    }
    if (first(l->inputs[1])) {
      *other = l->inputs[0];
      return true;
    }
    return false;
  }
  // `t` = a single-use layer of `op` with attribute `key` == `value` (a string attribute).
  const Layer* layer_with(TensorId t, const std::string& op, const std::string& key,
                          const std::string& value) const;

 private:
  const Network& net_;
  std::vector<int> producer_;
  std::vector<int> uses_;
};

// Replaces layer `index` by `op`(inputs, attrs), keeping its name and its output tensor, then
// drops the layers that only fed it. The pattern passes call it after a match.
void replace_layer(Network& net, int index, const std::string& op, const std::vector<TensorId>& inputs,
                   Attributes attrs);

}  // namespace kiln
