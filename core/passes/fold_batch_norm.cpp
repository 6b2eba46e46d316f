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
#include <map>
#include <optional>
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

// Where a convolution's input comes from a batch norm with constant parameters, directly or
// through a relu: that batch norm's gamma and beta, whose output mean they give.
struct InputBatchNorm {
  TensorId gamma = -1, beta = -1;
  bool relu = false;
};

std::optional<InputBatchNorm> input_batch_norm(const Network& net, const std::vector<int>& producer_of,
                                               TensorId x) {
  auto batch_norm_of = [&](TensorId t) -> const Layer* {
    const int q = producer_of[t];
    if (q < 0) return nullptr;
    const Layer& l = net.layers()[static_cast<size_t>(q)];
    if (l.op != "batch_norm" || l.inputs.size() < 5) return nullptr;
    return all_constant(net, {l.inputs[1], l.inputs[2]}) ? &l : nullptr;
  };
  if (const Layer* bn = batch_norm_of(x)) return InputBatchNorm{bn->inputs[1], bn->inputs[2], false};
  const int q = producer_of[x];
  if (q < 0) return std::nullopt;
  const Layer& act = net.layers()[static_cast<size_t>(q)];
  if (act.op != "activation" || !act.attrs.has("type") || act.attrs.get_string("type", act.name) != "relu")
    return std::nullopt;
  if (const Layer* bn = batch_norm_of(act.inputs[0]))
    return InputBatchNorm{bn->inputs[1], bn->inputs[2], true};
  return std::nullopt;
}

}  // namespace

bool fold_batch_norm(Network& net) {
  std::vector<int> uses = reader_counts(net);
  const std::vector<int> producer_of = net.producers();
  // Found before any fold rewrites a producer (a folded batch norm's output is its convolution's).
  std::map<size_t, InputBatchNorm> input_bn;
  for (size_t i = 0; i < net.layers().size(); ++i) {
    const Layer& l = net.layers()[i];
    if (l.op != "convolution" || l.inputs.size() < 2) continue;
    if (auto found = input_batch_norm(net, producer_of, l.inputs[0])) input_bn[i] = *found;
  }
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
    const int64_t groups = p.attrs.get_int("groups", int64_t{1});
    const int64_t in_channels = w.dims.size() >= 2 ? w.dims[1] * groups : -1;  // before w may move
    Attributes wa = batch_norm_attrs(bn, dtype);
    wa.set("producer", p.op);
    wa.set("groups", groups);
    std::vector<TensorId> bias_inputs = params;  // gamma, beta, mean, var[, b]
    if (p.inputs.size() == 3) bias_inputs.push_back(p.inputs[2]);
    std::vector<TensorId> weight_inputs = {p.inputs[1]};
    weight_inputs.insert(weight_inputs.end(), params.begin(), params.end());
    const std::string wname = unique_tensor_name(net, p.name + "/weight_bn_folded");
    const std::string bname = unique_tensor_name(net, p.name + "/bias_bn_folded");
    const TensorId new_w = add_derived_constant(net, wname, "bn_fold_weight", wa, weight_inputs);
    // A 16-bit convolution's folded weight rounds to 16 bits; where its input's mean is known (a
    // batch norm before it, through a relu or not), what that rounding adds on average comes off
    // the bias (the "bias correction" of data-free quantization, for float16). Measured
    // in a CPU emulation of regnet_x_3_2gf in float16 with cuDNN's plain grouped engines (which
    // round the product before the bias): cosine against FP32 0.999022 -> 0.999114.
    Attributes ba = batch_norm_attrs(bn, dtype);
    const auto in_bn = input_bn.find(static_cast<size_t>(pi));
    if (p.op == "convolution" && (dtype == DataType::kFloat16 || dtype == DataType::kBFloat16) &&
        in_bn != input_bn.end() && net.tensor(in_bn->second.gamma).dims == Dims{in_channels}) {
      ba = wa;  // the weight's fold (producer, groups) is what the correction replays
      ba.set("input_mean", in_bn->second.relu ? "relu" : "linear");
      bias_inputs.insert(bias_inputs.end(), {p.inputs[1], in_bn->second.gamma, in_bn->second.beta});
    }
    const TensorId new_b = add_derived_constant(net, bname, "bn_fold_bias", ba, bias_inputs);
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
