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
#include "ir/op_schema.h"
#include "ir/ops/convolution.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

std::vector<double> read_constant(const Tensor& t) {
  TensorView v{const_cast<uint8_t*>(t.data->data()), t.dtype, t.dims};
  std::vector<double> r(static_cast<size_t>(volume(t.dims)));
  for (size_t i = 0; i < r.size(); ++i) r[i] = load_element(v, static_cast<int64_t>(i));
  return r;
}

std::shared_ptr<std::vector<uint8_t>> encode(const std::vector<double>& values, DataType dtype,
                                             const Dims& dims) {
  auto bytes = std::make_shared<std::vector<uint8_t>>(values.size() * dtype_size(dtype));
  TensorView v{bytes->data(), dtype, dims};
  for (size_t i = 0; i < values.size(); ++i) store_element(v, static_cast<int64_t>(i), values[i]);
  return bytes;
}

std::string unique_tensor_name(const Network& net, const std::string& base) {
  std::string name = base;
  for (int i = 1; net.find_tensor(name) != -1; ++i) name = base + "_" + std::to_string(i);
  return name;
}

bool has_epilogue(const Layer& l) {
  return (l.attrs.has("activation") && l.attrs.get_string("activation", l.name) != "none") ||
         l.attrs.get_int("residual", int64_t{0}) != 0;
}

// Output channel of every weight element of `producer` (weight dims `w`, `channels` outputs).
std::vector<int64_t> output_channel_of_weights(const Layer& producer, const Dims& w, int64_t channels) {
  const int64_t n = volume(w);
  std::vector<int64_t> ch(static_cast<size_t>(n));
  if (producer.op == "deconvolution") {  // weight [C, K/groups, kernel...]
    const int64_t groups = producer.attrs.get_int("groups", int64_t{1});
    const int64_t kg = w[1], taps = n / (w[0] * w[1]), cg = w[0] / groups;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = i / (kg * taps), j = i / taps % kg;
      ch[static_cast<size_t>(i)] = c / cg * kg + j;
    }
  } else {  // convolution [K, C/groups, kernel...], fully_connected [N, K]: output channel first
    const int64_t per = n / channels;
    for (int64_t i = 0; i < n; ++i) ch[static_cast<size_t>(i)] = i / per;
  }
  return ch;
}

bool all_constant(const Network& net, const std::vector<TensorId>& ids) {
  for (TensorId t : ids) {
    if (net.tensor(t).kind != TensorKind::kConstant) return false;
  }
  return true;
}

// An inference batch_norm as y = x * scale + shift per channel (its parameters constant):
// scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
struct BatchNormAffine {
  std::vector<double> scale, shift;
};

BatchNormAffine batch_norm_affine(const Network& net, const Layer& bn) {
  const double eps = bn.attrs.get_float("eps", default_float("batch_norm", "eps"));
  const std::vector<double> gamma = read_constant(net.tensor(bn.inputs[1])),
                            beta = read_constant(net.tensor(bn.inputs[2])),
                            mean = read_constant(net.tensor(bn.inputs[3])),
                            var = read_constant(net.tensor(bn.inputs[4]));
  BatchNormAffine a{std::vector<double>(gamma.size()), std::vector<double>(gamma.size())};
  for (size_t k = 0; k < gamma.size(); ++k) {
    a.scale[k] = gamma[k] / std::sqrt(var[k] + eps);
    a.shift[k] = beta[k] - mean[k] * a.scale[k];
  }
  return a;
}

}  // namespace

bool fold_batch_norm(Network& net) {
  std::vector<int> uses(net.tensors().size(), 0);
  for (const auto& l : net.layers()) {
    for (TensorId t : l.inputs) ++uses[t];
  }
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

    // bn(conv + b) = conv * s + (b * s + shift).
    BatchNormAffine bn_affine = batch_norm_affine(net, bn);
    const std::vector<double>& s = bn_affine.scale;
    std::vector<double>& shift = bn_affine.shift;
    const int64_t channels = static_cast<int64_t>(s.size());
    const Tensor& w = net.tensor(p.inputs[1]);
    if (p.inputs.size() == 3) {
      const std::vector<double> bias = read_constant(net.tensor(p.inputs[2]));
      for (size_t k = 0; k < s.size(); ++k) shift[k] += bias[k] * s[k];
    }
    std::vector<double> wv = read_constant(w);
    const std::vector<int64_t> ch = output_channel_of_weights(p, w.dims, channels);
    for (size_t j = 0; j < wv.size(); ++j) wv[j] *= s[static_cast<size_t>(ch[j])];

    const DataType dtype = w.dtype;
    const Dims wdims = w.dims;
    const std::string wname = unique_tensor_name(net, p.name + "/weight_bn_folded");
    const std::string bname = unique_tensor_name(net, p.name + "/bias_bn_folded");
    const TensorId new_w = net.add_constant(wname, dtype, wdims, encode(wv, dtype, wdims));
    const TensorId new_b = net.add_constant(bname, dtype, {channels}, encode(shift, dtype, {channels}));
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
    const BatchNormAffine a = batch_norm_affine(net, bn);
    Dims dims(net.tensor(bn.inputs[0]).dims.size(), 1);
    dims[1] = static_cast<int64_t>(a.scale.size());
    // In x's dtype (elementwise operands share one; batch_norm allows float32 parameters with a
    // float16 x).
    const DataType dtype = net.tensor(bn.inputs[0]).dtype;
    const TensorId s_id = net.add_constant(unique_name(used, bn.name + "/scale_folded"), dtype, dims,
                                           encode(a.scale, dtype, dims));
    const TensorId t_id = net.add_constant(unique_name(used, bn.name + "/shift_folded"), dtype, dims,
                                           encode(a.shift, dtype, dims));
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
