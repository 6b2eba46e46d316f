// fuse_conv_epilogue: folds the elementwise add of a residual and a following activation into the
// convolution (or deconvolution) that produces their input, so one layer computes
//   y = act(conv(x) + bias + residual)                        (see ConvEpilogue)
// Rules, applied in layer order so that conv -> add -> relu becomes one layer:
//   add(conv(x), r) or add(r, conv(x)) -> conv(x, residual = r)   when r has the conv output's
//       dtype and dims (no broadcasting) and the conv has neither a residual nor an activation
//       (the residual is added before the activation).
//   act(conv(x))                       -> conv(x, activation = act)   when the conv has none.
// Safe only when the conv output feeds nothing else and is no network output. The fused layer
// takes the position of the last layer it absorbed: a residual may be computed after the conv
// (resnet's downsample branch), and between the two nothing else reads the conv output. It keeps
// the conv's name and lists the absorbed layers in its `fused` attribute.
// Dynamic dims: dims compare as declared (-1 == -1); a residual that would broadcast at run time
// is refused then by the layer's shape check.
#include <memory>
#include <string>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "ir/ops/activation.h"
#include "ir/ops/convolution.h"

namespace kiln {
namespace {

bool is_conv(const Layer& l) { return l.op == "convolution" || l.op == "deconvolution"; }

bool has_activation(const Layer& l) {
  return l.attrs.has("activation") && l.attrs.get_string("activation", l.name) != "none";
}

// A conv with an epilogue (activation or residual) but no bias gets a bias of zeros: cuDNN fuses
// the epilogue into the convolution only with a bias (cudnnConvolutionBiasActivationForward), and
// without one the kernel runs it as a second pass over y (a model exported with its batch norms
// folded into bias-free weights, as torch.onnx's dynamo exporter does for untrained ones, paid that
// pass on every convolution: resnet50 batch 32 1.7x slower than with the folded biases).
bool add_zero_biases(Network& net) {
  bool changed = false;
  for (size_t i = 0; i < net.layers().size(); ++i) {
    const Layer& l = net.layers()[i];
    if (!is_conv(l) || l.outputs.size() != 1 || l.inputs.size() < 2) continue;
    const ConvEpilogue e = conv_epilogue(l, l.inputs.size());
    if (e.has_bias || (!e.residual && e.activation == "none")) continue;
    const Tensor& y = net.tensor(l.outputs[0]);
    if (y.dims.size() < 2) continue;
    const int64_t channels = channels_last(l) ? y.dims.back() : y.dims[1];  // y's channel dim
    if (channels <= 0) continue;
    const Tensor& w = net.tensor(l.inputs[1]);
    auto zeros = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(channels) * dtype_size(w.dtype),
                                                        uint8_t{0});
    std::string name = l.name + "/zero_bias";
    for (int n = 1; net.find_tensor(name) >= 0; ++n) name = l.name + "/zero_bias" + std::to_string(n);
    const TensorId bias = net.add_constant(name, w.dtype, {channels}, zeros);
    Layer& conv = net.mutable_layers()[i];
    conv.inputs.insert(conv.inputs.begin() + 2, bias);
    changed = true;
  }
  return changed;
}

}  // namespace

bool fuse_conv_epilogue(Network& net) {
  std::vector<int> uses = reader_counts(net);
  std::vector<int> producer_of = net.producers();
  auto& layers = net.mutable_layers();
  std::vector<bool> removed(layers.size(), false);
  bool changed = false;

  // The conv producing `t` if it may absorb t's only consumer, else -1.
  auto fusable_conv = [&](TensorId t) -> int {
    const int pi = producer_of[t];
    if (pi < 0 || removed[static_cast<size_t>(pi)] || uses[t] != 1 || net.is_output(t)) return -1;
    return is_conv(layers[static_cast<size_t>(pi)]) ? pi : -1;
  };

  for (size_t i = 0; i < layers.size(); ++i) {
    Layer& l = layers[i];
    int ci = -1;
    TensorId residual = -1;
    if (l.op == "elementwise" && l.attrs.get_string("op", l.name) == "add" && l.inputs[0] != l.inputs[1]) {
      for (int side = 0; side < 2 && ci < 0; ++side) {
        const TensorId t = l.inputs[side], other = l.inputs[1 - side];
        const int candidate = fusable_conv(t);
        if (candidate < 0) continue;
        const Layer& conv = layers[static_cast<size_t>(candidate)];
        if (has_activation(conv) || conv.attrs.get_int("residual", int64_t{0}) != 0) continue;
        const Tensor &a = net.tensor(t), &b = net.tensor(other), &y = net.tensor(l.outputs[0]);
        if (a.dtype != b.dtype || a.dims != b.dims || y.dims != a.dims || y.dtype != a.dtype) continue;
        ci = candidate;
        residual = other;
      }
    } else if (l.op == "activation") {
      const int candidate = fusable_conv(l.inputs[0]);
      if (candidate >= 0 && !has_activation(layers[static_cast<size_t>(candidate)])) ci = candidate;
    }
    if (ci < 0) continue;

    Layer conv = std::move(layers[static_cast<size_t>(ci)]);
    removed[static_cast<size_t>(ci)] = true;
    if (residual >= 0) {
      conv.inputs.push_back(residual);
      conv.attrs.set("residual", int64_t{1});
    } else {
      // act(conv) -> conv with activation; the activation op's parameters carry over with their
      // defaults made explicit.
      const std::string type = l.attrs.get_string("type", l.name);
      const ActivationAttrs act = activation_attrs(type, l.attrs);
      conv.attrs.set("activation", type)
          .set("activation_alpha", act.alpha)
          .set("activation_beta", act.beta)
          .set("activation_threshold", act.threshold);
    }
    conv.outputs[0] = l.outputs[0];
    add_fused_name(conv, l.name);
    layers[i] = std::move(conv);
    producer_of[layers[i].outputs[0]] = static_cast<int>(i);
    changed = true;
  }
  if (changed) {
    std::vector<Layer> kept;
    for (size_t i = 0; i < layers.size(); ++i) {
      if (!removed[i]) kept.push_back(std::move(layers[i]));
    }
    layers = std::move(kept);
    net.compact();
  }
  return add_zero_biases(net) || changed;
}

}  // namespace kiln
