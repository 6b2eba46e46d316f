// fold_batch_norm: a convolution, deconvolution or fully_connected layer followed by an inference
// batch_norm with constant parameters becomes that one layer with new constant weights and bias.
// Per output channel k, with s = scale / sqrt(var + eps):
//   bn(conv(x, w) + b) = (conv(x, w) + b - mean) * s + bn_bias
//                      = conv(x, w * s[k]) + ((b - mean) * s + bn_bias)
// Safe when the producer's output feeds only the batch_norm (and is no network output), its
// weight and bias are constants, and it has no fused epilogue yet (an activation or residual would
// sit between the two). fully_connected only with a rank-2 output, whose dim 1 is batch_norm's
// channel dim. Channels-last convolutions are left alone (the pass runs before layouts anyway).
// Math in double; the folded constants take the weight's dtype. The layer keeps its name and
// lists the batch_norm in its `fused` attribute.
//
// batch_norm_to_scale_shift: an inference batch_norm with constant parameters that no producer
// absorbed (DenseNet's and pre-activation ResNets' BN after a concat or a residual add) becomes
// x * s + shift, two elementwise layers with [1, C, 1, ...] constants. Those are layout
// transparent (assign_layouts keeps them channels last between NHWC convolutions, where a
// batch_norm needed NCHW and two transposes) and fuse with the activation after them into one
// generated kernel (fuse_pointwise).
#include <cmath>
#include <set>
#include <string>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/weight_transforms.h"
#include "ir/op_schema.h"
#include "ir/ops/convolution.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

bool has_epilogue(const Layer& l) {
  return (l.attrs.has("activation") && l.attrs.get_string("activation", l.name) != "none") ||
         l.attrs.get_int("residual", int64_t{0}) != 0;
}

bool all_constant(const Network& net, const std::vector<TensorId>& ids) {
  for (TensorId t : ids) {
    if (net.tensor(t).kind != TensorKind::kConstant) return false;
  }
  return true;
}

// The attributes of the batch_norm transforms (core/weight_transforms.h) for `bn`.
Attributes batch_norm_attrs(const Layer& bn, DataType dtype) {
  Attributes a;
  a.set("eps", bn.attrs.get_float("eps", default_float("batch_norm", "eps")));
  a.set("dtype", static_cast<int64_t>(dtype));
  return a;
}

}  // namespace

bool fold_batch_norm(Network& net) {
  std::vector<int> uses = reader_counts(net);
  const std::vector<int> producer_of = net.producers();
  auto& layers = net.mutable_layers();
  std::vector<bool> removed(layers.size(), false);
  bool changed = false;
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& bn = layers[i];
    if (bn.op != "batch_norm") continue;
    const TensorId x = bn.inputs[0];
    const int pi = producer_of[x];
    if (pi < 0 || uses[x] != 1 || net.is_output(x)) continue;
    Layer& p = layers[static_cast<size_t>(pi)];
    if (p.op != "convolution" && p.op != "deconvolution" && p.op != "fully_connected") continue;
    if (has_epilogue(p) || (p.op == "convolution" && channels_last(p))) continue;
    if (p.op == "fully_connected" && net.tensor(x).dims.size() != 2) continue;
    if (p.inputs.size() > 3) continue;
    std::vector<TensorId> params(bn.inputs.begin() + 1, bn.inputs.end());
    std::vector<TensorId> weights(p.inputs.begin() + 1, p.inputs.end());
    if (!all_constant(net, params) || !all_constant(net, weights)) continue;

    // bn(conv + b) = conv * s + (b * s + shift), computed by the weight transforms.
    const Tensor& w = net.tensor(p.inputs[1]);
    const DataType dtype = w.dtype;
    Attributes wa = batch_norm_attrs(bn, dtype);
    wa.set("producer", p.op);
    wa.set("groups", p.attrs.get_int("groups", int64_t{1}));
    std::vector<TensorId> bias_inputs = params;  // gamma, beta, mean, var[, b]
    if (p.inputs.size() == 3) bias_inputs.push_back(p.inputs[2]);
    std::vector<TensorId> weight_inputs = {p.inputs[1]};
    weight_inputs.insert(weight_inputs.end(), params.begin(), params.end());
    const std::string wname = unique_tensor_name(net, p.name + "/weight_bn_folded");
    const std::string bname = unique_tensor_name(net, p.name + "/bias_bn_folded");
    const TensorId new_w = add_derived_constant(net, wname, "bn_fold_weight", wa, weight_inputs);
    const TensorId new_b =
        add_derived_constant(net, bname, "bn_fold_bias", batch_norm_attrs(bn, dtype), bias_inputs);
    p.inputs[1] = new_w;
    if (p.inputs.size() == 3)
      p.inputs[2] = new_b;
    else
      p.inputs.push_back(new_b);
    p.outputs[0] = bn.outputs[0];
    add_fused_name(p, bn.name);
    removed[i] = true;
    changed = true;
  }
  if (!changed) return false;
  std::vector<Layer> kept;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!removed[i]) kept.push_back(std::move(layers[i]));
  }
  layers = std::move(kept);
  net.compact();
  return true;
}

bool batch_norm_to_scale_shift(Network& net, const std::set<std::string>& pinned) {
  std::vector<Layer> old = std::move(net.mutable_layers());
  net.mutable_layers().clear();
  std::set<std::string> used;
  for (const auto& l : old) used.insert(l.name);
  for (const auto& t : net.tensors()) used.insert(t.name);
  bool changed = false;
  for (Layer& bn : old) {
    const bool convertible = bn.op == "batch_norm" && !pinned.count(bn.name) &&
                             all_constant(net, std::vector<TensorId>(bn.inputs.begin() + 1, bn.inputs.end()));
    if (!convertible) {
      net.mutable_layers().push_back(std::move(bn));
      continue;
    }
    Dims dims(net.tensor(bn.inputs[0]).dims.size(), 1);
    dims[1] = net.tensor(bn.inputs[1]).dims.at(0);
    // In x's dtype (elementwise operands share one; batch_norm allows float32 parameters with a
    // float16 x).
    Attributes a = batch_norm_attrs(bn, net.tensor(bn.inputs[0]).dtype);
    a.set("dims", dims);
    const std::vector<TensorId> params(bn.inputs.begin() + 1, bn.inputs.end());
    const TensorId s_id =
        add_derived_constant(net, unique_name(used, bn.name + "/scale_folded"), "bn_scale", a, params);
    const TensorId t_id =
        add_derived_constant(net, unique_name(used, bn.name + "/shift_folded"), "bn_shift", a, params);
    const TensorId scaled =
        net.add_elementwise(bn.inputs[0], s_id, "mul", unique_name(used, bn.name + "/scale")).outputs[0];
    Layer& add = net.add_elementwise(scaled, t_id, "add", unique_name(used, bn.name + "/shift"));
    add.outputs[0] = bn.outputs[0];
    add_fused_name(add, bn.name);
    changed = true;
  }
  if (changed) net.compact();
  return changed;
}

}  // namespace kiln
