// quantize_int8_layers: INT8 convolutions and fully_connected layers from the calibrated (or QAT,
// or pt2e) quantization. A 2d convolution or a fully_connected whose input x̂ is an int8
// fake_quantize of x (per tensor, constant scale s_x, zero point 0), or the dequantize of an int8
// tensor xq likewise (float casts between are looked through, and views too for a
// fully_connected: they are repeated on xq), and whose weight W is a constant on a
// per-output-channel int8 grid becomes
//   quantize(x, s_x) -> int8 xq          (one per fake_quantize, shared; a dequantize's xq as it is)
//   convolution / fully_connected(xq, Wq, [scale; bias], residual; quantized = 1, out_dtype = y's dtype)
// with Wq = clamp(round(W / s_w[k]), -127, 127), s_w[k] = max |W[k]| / 127 (1 where the channel is
// all zero), and the layer's float32 [2, K] input holding s_x * s_w[k] and the bias. The layer
// computes y = act(s_x s_w[k] * sum(xq * Wq) + bias + residual) (a fully_connected adds its
// residual after the activation, as its float form does), the sum exact in int32: the
// fake-quantized model's x̂ * Ŵ. Calibration put W on that grid (symmetric, per output channel),
// and BatchNorm folding scales each output channel, which keeps it there, so requantizing is
// exact up to the float16 rounding of the folded weight (half a step is far larger).
//
// Only where Kiln's INT8 kernel runs (int8_convolution.h): convolutions 2d, groups 1 (input
// channels zero-padded to a multiple of 16: a pad layer on the int8 input, zero weights); linear
// layers with input features a multiple of 16; an even number of output channels (features), y
// float16/bfloat16/float32, a constant bias. Other layers keep the fake_quantize (simulated INT8,
// still correct). Then, in calibrated builds (the quantize came from a fake_quantize marked
// calibrated), a quantized convolution reads its residual as int8 where that tensor is quantized
// for another layer anyway (int8_residuals). Last, a quantized layer whose value feeds such a
// quantize writes the int8 tensor itself, instead of its value or (a convolution) besides it
// (fold_requantize). The builder runs
// this pass when the "int8" precision is enabled, after assign_precision and before
// assign_layouts (which then runs the INT8 convolutions channels last, their weight [K, R, S, C]);
// the fake_quantize layers it leaves unread go with dead-layer elimination.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/passes/pattern_match.h"
#include "core/passes/quantized_inputs.h"
#include "core/plan.h"
#include "core/weight_transforms.h"
#include "ir/op_schema.h"
#include "ir/ops/convolution.h"
#include "ir/ops/quantize.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

constexpr int kQmax = 127;

bool is_constant(const Network& net, TensorId t) { return net.tensor(t).kind == TensorKind::kConstant; }

// The constant per-tensor scale of a symmetric int8 fake_quantize or quantize (zero point 0 or
// none, range inside int8's) or of the dequantize of an int8 tensor (pt2e's explicit Q/DQ), or
// nullopt when `f` is none of these.
std::optional<float> int8_scale(const Network& net, const Layer& f) {
  const bool dequantize = f.op == "dequantize" && net.tensor(f.inputs[0]).dtype == DataType::kInt8;
  if ((f.op != "fake_quantize" && f.op != "quantize" && !dequantize) || f.inputs.size() < 2)
    return std::nullopt;
  const Tensor& scale = net.tensor(f.inputs[1]);
  if (!is_constant(net, f.inputs[1]) || scale.dtype != DataType::kFloat32 || volume(scale.dims) != 1) {
    return std::nullopt;
  }
  const QuantParams p = quant_params(f, net.tensor(f.inputs[0]).dims.size(), 1);
  if (p.e4m3 || p.minifloat || p.quant_min < -128 || p.quant_max > 127) return std::nullopt;
  if (p.has_inv_scale && f.op != "quantize") return std::nullopt;
  if (f.inputs.size() == 3) {
    const Tensor& zp = net.tensor(f.inputs[2]);
    if (!is_constant(net, f.inputs[2]) || volume(zp.dims) != 1) return std::nullopt;
    TensorView v{const_cast<uint8_t*>(zp.data->data()), zp.dtype, zp.dims};
    if (load_element(v, 0) != 0.0) return std::nullopt;
  }
  float s = 0.f;
  std::memcpy(&s, scale.data->data(), sizeof(s));
  if (!(s > 0.f) || !std::isfinite(s)) return std::nullopt;
  return s;
}

bool int8_output(DataType y) {
  return y == DataType::kFloat16 || y == DataType::kBFloat16 || y == DataType::kFloat32;
}

// The GEMM-like layers the INT8 kernel takes, with where their bias and residual are.
struct Int8Candidate {
  bool ok = false;
  bool has_bias = false;
  int residual_input = -1;
};

Int8Candidate int8_candidate(const Network& net, const Layer& l) {
  Int8Candidate c;
  if (l.op == "convolution") {
    if (conv_quantized(l) || channels_last(l)) return c;
    const Tensor &x = net.tensor(l.inputs[0]), &w = net.tensor(l.inputs[1]);
    if (x.dims.size() != 4 || w.kind != TensorKind::kConstant || !is_floating(w.dtype)) return c;
    // Input channels not a multiple of 16 (an RGB stem) are zero-padded to one (pad_channels).
    if (l.attrs.get_int("groups", int64_t{1}) != 1 || w.dims[1] <= 0 || w.dims[0] % 2 != 0) return c;
    const ConvEpilogue e = conv_epilogue(l, l.inputs.size());
    c.has_bias = e.has_bias;
    c.residual_input = e.residual_input;
  } else if (l.op == "fully_connected") {
    if (l.attrs.has("out_dtype")) return c;  // FP8 or INT8 already
    const Tensor& w = net.tensor(l.inputs[1]);
    if (w.kind != TensorKind::kConstant || !is_floating(w.dtype) || w.dims.size() != 2 || w.dims[1] <= 0 ||
        w.dims[1] % 16 != 0 || w.dims[0] % 2 != 0)
      return c;
    const bool residual = l.attrs.get_int("residual", int64_t{0}) != 0;
    c.has_bias = l.inputs.size() - (residual ? 1 : 0) == 3;
    c.residual_input = residual ? static_cast<int>(l.inputs.size()) - 1 : -1;
  } else {
    return c;
  }
  c.ok = int8_output(net.tensor(l.outputs[0]).dtype) && (!c.has_bias || is_constant(net, l.inputs[2]));
  return c;
}

// Wq and s_w of a constant weight [K, ...] on a per-output-channel grid.
std::pair<std::shared_ptr<std::vector<uint8_t>>, std::vector<float>> quantize_weight(const Tensor& w) {
  TensorView v{const_cast<uint8_t*>(w.data->data()), w.dtype, w.dims};
  const int64_t k = w.dims[0], per = volume(w.dims) / k;
  auto bytes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(k * per));
  std::vector<float> scales(static_cast<size_t>(k));
  for (int64_t o = 0; o < k; ++o) {
    double amax = 0.0;
    for (int64_t i = 0; i < per; ++i) amax = std::max(amax, std::fabs(load_element(v, o * per + i)));
    const float s = amax > 0.0 ? static_cast<float>(amax / kQmax) : 1.f;
    scales[static_cast<size_t>(o)] = s;
    for (int64_t i = 0; i < per; ++i) {
      const double q = std::nearbyint(load_element(v, o * per + i) / static_cast<double>(s));
      (*bytes)[static_cast<size_t>(o * per + i)] =
          static_cast<uint8_t>(static_cast<int8_t>(std::clamp(q, double{-kQmax}, double{kQmax})));
    }
  }
  return {bytes, scales};
}

// A convolution's int8 weight [K, C, taps...] with C zero-padded to `padded` channels.
std::shared_ptr<std::vector<uint8_t>> pad_channels(const std::vector<uint8_t>& w, const Dims& dims,
                                                   int64_t padded) {
  const int64_t k = dims[0], c = dims[1], taps = volume(dims) / (k * c);
  auto out = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(k * padded * taps), 0);
  for (int64_t o = 0; o < k; ++o) {
    std::copy_n(w.begin() + o * c * taps, c * taps, out->begin() + o * padded * taps);
  }
  return out;
}

// A quantized convolution or fully_connected whose value a per-tensor int8 quantize reads (zero
// point 0 or none; through views that only it reads, which then reshape the int8 tensor instead)
// writes that quantize's int8 tensor itself: the layer rounds its value to out_dtype and quantizes
// it as the quantize did (output_inv_scale, output_quant_min/max), so the next INT8 layer reads
// one byte per value. Where the quantize is the value's only reader no float tensor is written;
// where others read it too (a ResNet block's output is also the next block's residual) the layer
// writes both (int8_copy), which saves the quantize kernel's pass over the float tensor.
bool fold_requantize(Network& net) {
  eliminate_dead_layers(net);  // the fake_quantize layers the rewrite left unread
  const std::vector<int> producer = net.producers();
  std::vector<int> readers = reader_counts(net);
  std::vector<Layer>& layers = net.mutable_layers();
  std::vector<bool> folded(layers.size(), false);
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& q = layers[i];
    if (q.op != "quantize" || q.inputs.size() < 2) continue;
    const TensorId y = q.inputs[0];
    const auto sole = [&](TensorId t) { return readers[static_cast<size_t>(t)] == 1 && !net.is_output(t); };
    // Views (the reshape of a linear layer's rows to [batch, seq, features]) between the layer and
    // the quantize, each the only reader of its input: they move onto the int8 tensor.
    std::vector<size_t> views;
    TensorId value = -1;
    const int p = quantized_value_producer(layers, producer, q, sole, &views, &value);
    if (p < 0) continue;
    Layer& conv = layers[static_cast<size_t>(p)];  // a quantized convolution or fully_connected
    const bool only_reader = sole(value);
    if ((conv.op != "convolution" && conv.op != "fully_connected") ||
        conv.attrs.get_int("quantized", int64_t{0}) != 1 || conv.attrs.has("output_inv_scale"))
      continue;
    // An int8 copy only for a convolution's own value: a linear layer's value, or a view's, stays float.
    if ((conv.op == "fully_connected" || !views.empty()) && !only_reader) continue;
    const std::optional<float> s = int8_scale(net, q);
    if (!s) continue;
    const QuantParams qp = quant_params(q, net.tensor(y).dims.size(), 1);
    conv.attrs.set("output_inv_scale", static_cast<double>(qp.has_inv_scale ? qp.inv_scale : 1.0f / *s));
    conv.attrs.set("output_quant_min", qp.quant_min);
    conv.attrs.set("output_quant_max", qp.quant_max);
    if (only_reader) {  // conv -> int8 [-> views] -> the quantize's int8 tensor
      conv.outputs[0] = move_views_to_quantized(net, layers, views, q.outputs[0], "/int8");
    } else {
      conv.attrs.set("int8_copy", int64_t{1});
      conv.outputs.push_back(q.outputs[0]);
    }
    folded[i] = true;
  }
  return drop_folded(net, folded);
}

// The calibrated int8 fake_quantize producing `t` (calibration quantizes a residual add's operand
// that a quantized convolution computes: ResNet's downsample branch), or -1.
int calibrated_fake_quantize(const Network& net, const std::vector<int>& producer, TensorId t) {
  const int p = producer[static_cast<size_t>(t)];
  if (p < 0) return -1;
  const Layer& f = net.layers()[static_cast<size_t>(p)];
  const bool calibrated = f.op == "fake_quantize" && f.attrs.get_int("calibrated", int64_t{0}) == 1;
  return calibrated && int8_scale(net, f) ? p : -1;
}

// A quantized convolution's residual that a calibrated fake_quantize F computes gets a calibrated
// quantize Q of F's input, right after F, unless one exists: F's value is Q's dequantized, so the
// convolution can read Q's int8 tensor exactly (int8_residuals), and F's input's producer then
// writes int8 (fold_requantize).
void quantize_fake_quantized_residuals(Network& net) {
  const std::vector<int> producer = net.producers();
  std::set<TensorId> quantized;  // float tensors a calibrated int8 quantize reads
  for (const Layer& l : net.layers()) {
    if (l.op == "quantize" && l.attrs.get_int("calibrated", int64_t{0}) == 1) quantized.insert(l.inputs[0]);
  }
  std::set<int> wanted;  // the fake_quantize layers to add a quantize after
  for (const Layer& conv : net.layers()) {
    if (conv.op != "convolution" || conv.attrs.get_int("quantized", int64_t{0}) != 1 ||
        conv.attrs.has("residual_scale"))
      continue;
    const ConvEpilogue e = conv_epilogue(conv, conv.inputs.size());
    if (!e.residual) continue;
    const int f = calibrated_fake_quantize(net, producer, conv.inputs[static_cast<size_t>(e.residual_input)]);
    if (f >= 0 && !quantized.count(net.layers()[static_cast<size_t>(f)].inputs[0])) wanted.insert(f);
  }
  std::set<std::string> used = names_in_use(net);
  for (auto it = wanted.rbegin(); it != wanted.rend(); ++it) {  // from the last: earlier indices hold
    const Layer f = net.layers()[static_cast<size_t>(*it)];     // a copy: add_layer may move the list
    Attributes attrs;
    for (const char* a : {"quant_min", "quant_max", "calibrated"}) {
      if (f.attrs.has(a)) attrs.set(a, f.attrs.get_int(a, f.name));
    }
    net.add_layer("quantize", {f.inputs[0], f.inputs[1]}, attrs, unique_name(used, f.name + "/int8"));
    auto& layers = net.mutable_layers();
    Layer q = std::move(layers.back());
    layers.pop_back();
    layers.insert(layers.begin() + *it + 1, std::move(q));
  }
}

// Calibrated builds: a quantized convolution's residual r that a calibrated per-tensor int8
// quantize also reads (r is some INT8 layer's input too: a ResNet block's output is the next
// block's input and its residual) is read as that quantize's int8 tensor instead, dequantized in
// the epilogue (residual_scale), as TensorRT's implicit INT8 quantizes the residual stream. Then
// r's producer writes int8 only (fold_requantize: no int8_copy), and the residual is read in one
// byte: half of ResNet-50's activation traffic in the blocks. The calibrated model adds the
// residual quantized (one more rounding of a value already quantized for its other reader); a
// Q/DQ model keeps its float residuals, as its graph says. A residual that calibration
// fake-quantized for the add itself (the downsample branch) is read the same way, and exactly
// (quantize_fake_quantized_residuals).
bool int8_residuals(Network& net) {
  quantize_fake_quantized_residuals(net);
  const std::vector<int> producer = net.producers();
  std::map<TensorId, size_t> calibrated;  // float tensor -> the calibrated quantize reading it
  std::vector<Layer>& layers = net.mutable_layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& q = layers[i];
    if (q.op == "quantize" && q.attrs.get_int("calibrated", int64_t{0}) == 1 && int8_scale(net, q) &&
        net.tensor(q.outputs[0]).dtype == DataType::kInt8 && !calibrated.count(q.inputs[0]))
      calibrated[q.inputs[0]] = i;
  }
  bool changed = false;
  for (size_t i = 0; i < layers.size(); ++i) {
    Layer& conv = layers[i];
    if (conv.op != "convolution" || conv.attrs.get_int("quantized", int64_t{0}) != 1 ||
        conv.attrs.has("residual_scale"))
      continue;
    const ConvEpilogue e = conv_epilogue(conv, conv.inputs.size());
    if (!e.residual) continue;
    TensorId& r = conv.inputs[static_cast<size_t>(e.residual_input)];
    // A calibrated fake_quantize's value is its input's quantize, dequantized: read that exactly.
    const int f = calibrated_fake_quantize(net, producer, r);
    const auto q = calibrated.find(f >= 0 ? layers[static_cast<size_t>(f)].inputs[0] : r);
    if (q == calibrated.end() || q->second > i) continue;  // the int8 tensor must exist by then
    const Layer& quantize = layers[q->second];
    conv.attrs.set("residual_scale", static_cast<double>(*int8_scale(net, quantize)));
    r = quantize.outputs[0];
    changed = true;
  }
  return changed;
}

// A per-tensor fake_quantize whose input is a max pooling's output that only it reads moves before
// the pooling: the quantization is monotone, so it commutes with max exactly. The layer before the
// pooling (ResNet's stem convolution) then writes int8 itself, and the pooling runs on the int8
// tensor (quantization_producer looks through it): half the pooling's bytes, one quantize less.
bool quantize_before_max_pools(Network& net) {
  const std::vector<int> producer = net.producers();
  std::vector<int> readers = reader_counts(net);
  std::set<std::string> names = names_in_use(net);
  const size_t count = net.layers().size();
  std::vector<std::vector<Layer>> replacement(count);
  std::vector<bool> dropped(count, false);
  bool changed = false;
  for (size_t i = 0; i < count; ++i) {
    const Layer fq = net.layers()[i];  // copies: add_layer below may move the layer list
    if (fq.op != "fake_quantize" || fq.inputs.size() < 2 || volume(net.tensor(fq.inputs[1]).dims) != 1)
      continue;
    const TensorId pooled = fq.inputs[0];
    const int p = producer[static_cast<size_t>(pooled)];
    if (p < 0 || readers[static_cast<size_t>(pooled)] != 1 || net.is_output(pooled)) continue;
    const Layer pool = net.layers()[static_cast<size_t>(p)];
    if (!is_max_pooling(pool) || dropped[static_cast<size_t>(p)] ||
        !replacement[static_cast<size_t>(p)].empty())
      continue;
    const size_t first = net.layers().size();
    std::vector<TensorId> in = fq.inputs;
    in[0] = pool.inputs[0];
    const TensorId q =
        net.add_layer("fake_quantize", in, fq.attrs, unique_name(names, fq.name + "/before_pool")).outputs[0];
    net.add_layer("pooling", {q}, pool.attrs, unique_name(names, pool.name + "/quantized")).outputs[0] =
        fq.outputs[0];  // the fake_quantize's output tensor, for its readers
    auto& layers = net.mutable_layers();
    replacement[i].assign(std::make_move_iterator(layers.begin() + static_cast<std::ptrdiff_t>(first)),
                          std::make_move_iterator(layers.end()));
    layers.resize(first);
    replacement[i][0].name = fq.name;  // both keep their names (reports, layer precisions)
    replacement[i][1].name = pool.name;
    dropped[static_cast<size_t>(p)] = true;
    changed = true;
  }
  if (changed) splice_replacements(net, replacement, dropped);
  return changed;
}

}  // namespace

bool quantize_int8_layers(Network& net, bool fold, const std::set<std::string>& pinned) {
  bool changed = quantize_before_max_pools(net);
  const std::vector<int> producer = net.producers();
  const std::vector<Layer> old = net.layers();  // a copy: the fake_quantize layers are read after re-adding
  net.mutable_layers().clear();
  std::set<std::string> used;
  for (const auto& l : old) used.insert(l.name);
  for (const auto& t : net.tensors()) used.insert(t.name);
  std::map<TensorId, TensorId> quantized;  // int8 versions: a fake_quantize's output -> its quantize's, ...
  for (Layer layer : old) {
    const Int8Candidate c = pinned.count(layer.name) ? Int8Candidate{} : int8_candidate(net, layer);
    // A fully_connected reads its input through views (reshape, flatten, ...) too.
    std::vector<const Layer*> views;
    const int p =
        c.ok ? quantization_producer(net, old, producer, layer.inputs[0], layer.op == "fully_connected",
                                     &views, layer.op == "convolution")
             : -1;
    const std::optional<float> s_x = p >= 0 ? int8_scale(net, old[static_cast<size_t>(p)]) : std::nullopt;
    if (!s_x) {
      net.mutable_layers().push_back(std::move(layer));
      continue;
    }
    const Layer& fq = old[static_cast<size_t>(p)];
    if (fq.op == "dequantize") {
      quantized[fq.outputs[0]] = fq.inputs[0];  // the int8 tensor it dequantizes
    } else if (!quantized.count(fq.outputs[0])) {
      Attributes attrs;
      for (const char* a : {"quant_min", "quant_max", "calibrated"}) {
        if (fq.attrs.has(a)) attrs.set(a, fq.attrs.get_int(a, fq.name));
      }
      const Layer& q = net.add_layer("quantize", {fq.inputs[0], fq.inputs[1]}, attrs,
                                     unique_name(used, fq.name + "/int8"));
      quantized[fq.outputs[0]] = q.outputs[0];
    }
    TensorId xq = repeat_views(net, quantized, views, used, "/int8", layer.inputs[0]);
    const Tensor w = net.tensor(layer.inputs[1]);  // a copy: add_constant may move the tensor list
    const int64_t k = w.dims[0];
    auto [bytes, s_w] = quantize_weight(w);
    Dims wq_dims = w.dims;
    const int64_t pad = layer.op == "convolution" ? (16 - w.dims[1] % 16) % 16 : 0;
    if (pad && !layer.attrs.has("model_taps")) layer.attrs.set("model_taps", volume(w.dims) / w.dims[0]);
    if (pad) {  // x's channels (dim 1) and the weight's padded with zeros to a multiple of 16
      std::vector<int64_t> pads(2 * (net.tensor(xq).dims.size() - 1), 0);  // F.pad order, dim 1 last
      pads.back() = pad;
      xq = net.add_layer("pad", {xq}, Attributes().set("pads", pads),
                         unique_name(used, layer.name + "/pad_channels"))
               .outputs[0];
      wq_dims[1] += pad;
      bytes = pad_channels(*bytes, w.dims, wq_dims[1]);
    }
    std::vector<float> scale_bias(static_cast<size_t>(2 * k), 0.f);
    for (int64_t o = 0; o < k; ++o) scale_bias[static_cast<size_t>(o)] = *s_x * s_w[static_cast<size_t>(o)];
    std::vector<TensorId> lineage_from = {layer.inputs[1]};
    if (c.has_bias) {
      const Tensor& b = net.tensor(layer.inputs[2]);
      TensorView bv{const_cast<uint8_t*>(b.data->data()), b.dtype, b.dims};
      for (int64_t o = 0; o < k; ++o)
        scale_bias[static_cast<size_t>(k + o)] = static_cast<float>(load_element(bv, o));
      lineage_from.push_back(layer.inputs[2]);
    }
    // The weight scales become part of the layer's constants: refit cannot replay them (yet).
    LineagePtr w_lineage =
        blocked_lineage(net, {layer.inputs[1]}, "its INT8 weight scales are computed by the builder",
                        DataType::kInt8, wq_dims);
    LineagePtr sb_lineage = blocked_lineage(
        net, lineage_from, "its INT8 weight scales are computed by the builder", DataType::kFloat32, {2, k});
    const TensorId wq =
        net.add_constant(unique_name(used, w.name + "/int8"), DataType::kInt8, wq_dims, std::move(bytes));
    net.tensor(wq).lineage = std::move(w_lineage);
    const TensorId sb = net.add_constant(unique_name(used, w.name + "/int8_scale_bias"), DataType::kFloat32,
                                         {2, k}, scale_bias.data(), scale_bias.size() * sizeof(float));
    net.tensor(sb).lineage = std::move(sb_lineage);
    std::vector<TensorId> inputs = {xq, wq, sb};
    if (c.residual_input >= 0) inputs.push_back(layer.inputs[static_cast<size_t>(c.residual_input)]);
    layer.inputs = std::move(inputs);
    layer.attrs.set("quantized", int64_t{1});
    layer.attrs.set("out_dtype", std::string(dtype_name(net.tensor(layer.outputs[0]).dtype)));
    layer.attrs.set("input_scale", static_cast<double>(*s_x));
    layer.attrs.set("allow_tf32", int64_t{0});
    net.mutable_layers().push_back(std::move(layer));
    changed = true;
  }
  if (changed && fold) {
    int8_residuals(net);
    fold_requantize(net);
  }
  return changed;
}

}  // namespace kiln
