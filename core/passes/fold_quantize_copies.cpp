// fold_quantize_copies: a quantize layer (per tensor: one constant float32 scale, zero point 0 or
// none; int8 or e4m3) whose input is a layer_norm's or rms_norm's value, directly or through views
// that only the next of them reads, becomes that normalization's quantized copy (QuantizedCopy,
// ir/ops/normalization.h): the normalization writes y and y quantized exactly as the quantize
// computed it, the views reshape the quantized tensor instead, and no quantize kernel reads y
// again. In a transformer the normalized value is both the next GEMM's quantized input (the
// quantize layers quantize_fp8_gemms and quantize_int8_layers make) and a residual, so y stays.
// Likewise an e4m3 quantize whose input only an FP8 GEMM or a packed_attention writes (through
// views only it reads): that layer writes float8 itself (output_inv_scale), and its float value is
// not written at all. And an int8 quantize whose input only a space_to_depth writes (the fold of an
// INT8 stem's image): the fold writes int8 itself (output_inv_scale).
#include <cmath>
#include <cstring>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/passes/quantized_inputs.h"
#include "core/plan.h"
#include "ir/ops/normalization.h"
#include "ir/ops/quantize.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

bool constant(const Network& net, TensorId t) { return net.tensor(t).kind == TensorKind::kConstant; }

// The copy a quantize layer computes, or `on` false when it is not a per-tensor one of this kind.
QuantizedCopy copy_of(const Network& net, const Layer& q) {
  QuantizedCopy c;
  if (q.op != "quantize" || q.inputs.size() < 2 || !constant(net, q.inputs[1])) return c;
  const Tensor& scale = net.tensor(q.inputs[1]);
  if (scale.dtype != DataType::kFloat32 || volume(scale.dims) != 1) return c;
  if (q.inputs.size() == 3) {
    const Tensor& zp = net.tensor(q.inputs[2]);
    if (!constant(net, q.inputs[2]) || volume(zp.dims) != 1) return c;
    TensorView v{const_cast<uint8_t*>(zp.data->data()), zp.dtype, zp.dims};
    if (load_element(v, 0) != 0.0) return c;
  }
  const QuantParams p = quant_params(q, net.tensor(q.inputs[0]).dims.size(), 1);
  if (p.minifloat || p.per_channel || (!p.e4m3 && net.tensor(q.outputs[0]).dtype != DataType::kInt8))
    return c;
  float s = 0.f;
  std::memcpy(&s, scale.data->data(), sizeof(s));
  c.inv_scale = p.has_inv_scale ? p.inv_scale : 1.0f / s;
  if (!(c.inv_scale > 0.f) || !std::isfinite(c.inv_scale)) return c;
  c.on = true;
  c.e4m3 = p.e4m3;
  c.lo = p.quant_min;
  c.hi = p.quant_max;
  return c;
}

// An FP8 fully_connected that can write its value as e4m3 in cuBLASLt's epilogue: 16-bit out_dtype,
// no residual, an activation cuBLASLt applies (CublasLtFullyConnected), not folded yet.
bool fp8_gemm_writes_e4m3(const Layer& l) {
  if (l.op != "fully_connected" || !l.attrs.has("out_dtype") ||
      l.attrs.get_int("quantized", int64_t{0}) != 0 || l.attrs.has("output_inv_scale") ||
      l.attrs.get_int("residual", int64_t{0}) != 0)
    return false;
  const std::string out = l.attrs.get_string("out_dtype", l.name);
  const std::string act = l.attrs.has("activation") ? l.attrs.get_string("activation", l.name) : "none";
  return (out == "float16" || out == "bfloat16") &&
         (act == "none" || act == "relu" || act == "gelu" || act == "gelu_tanh");
}

// A packed_attention whose output the CUDA tensor-core kernel can write as e4m3 (the IR's
// conditions for output_inv_scale): float16/bfloat16 qkv, head size 32, 64 or 128, no mask.
bool attention_writes_e4m3(const Network& net, const Layer& l) {
  if (l.op != "packed_attention" || l.inputs.size() != 1 || l.attrs.has("output_inv_scale")) return false;
  const Tensor& qkv = net.tensor(l.inputs[0]);
  const int64_t d = qkv.dims.size() == 5 ? qkv.dims[4] : 0;
  return (qkv.dtype == DataType::kFloat16 || qkv.dtype == DataType::kBFloat16) &&
         (d == 32 || d == 64 || d == 128);
}

}  // namespace

bool fold_quantize_copies(Network& net) {
  const std::vector<int> producer = net.producers();
  std::vector<int> readers = reader_counts(net);
  const auto sole = [&](TensorId t) { return readers[static_cast<size_t>(t)] == 1 && !net.is_output(t); };
  std::vector<Layer>& layers = net.mutable_layers();
  std::vector<bool> folded(layers.size(), false);
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& q = layers[i];
    const QuantizedCopy c = copy_of(net, q);
    if (!c.on) continue;
    std::vector<size_t> views;  // the producer's own value may have other readers
    TensorId value = -1;
    const int p = quantized_value_producer(layers, producer, q, sole, &views, &value);
    if (p < 0) continue;
    Layer& src = layers[static_cast<size_t>(p)];
    if (c.e4m3 && (fp8_gemm_writes_e4m3(src) || attention_writes_e4m3(net, src)) && sole(value)) {
      // An FP8 GEMM whose value only this quantize reads (a transformer MLP's first GEMM, its
      // GELU in cuBLASLt's epilogue), or an attention read only by the FP8 output projection:
      // it writes the e4m3 tensor itself, no float one.
      src.attrs.set("output_inv_scale", static_cast<double>(c.inv_scale));
      src.outputs[0] = move_views_to_quantized(net, layers, views, q.outputs[0], "/fp8");
      folded[i] = true;
      continue;
    }
    if (!c.e4m3 && src.op == "space_to_depth" && views.empty() && sole(value) &&
        !src.attrs.has("output_inv_scale")) {
      // An INT8 stem's image fold (space_to_depth_stems) read only by this quantize: the fold
      // writes the int8 tensor itself, one pass over the image instead of two.
      src.attrs.set("output_inv_scale", static_cast<double>(c.inv_scale));
      src.attrs.set("output_quant_min", c.lo);
      src.attrs.set("output_quant_max", c.hi);
      src.outputs[0] = q.outputs[0];
      folded[i] = true;
      continue;
    }
    if ((src.op != "layer_norm" && src.op != "rms_norm") || src.attrs.has("quantized_copy")) continue;
    src.attrs.set("quantized_copy", std::string(c.e4m3 ? "e4m3" : "int8"));
    src.attrs.set("copy_inv_scale", static_cast<double>(c.inv_scale));
    if (!c.e4m3) {
      src.attrs.set("copy_quant_min", c.lo);
      src.attrs.set("copy_quant_max", c.hi);
    }
    src.outputs.push_back(
        move_views_to_quantized(net, layers, views, q.outputs[0], c.e4m3 ? "/fp8" : "/int8"));
    folded[i] = true;
  }
  const bool changed = drop_folded(net, folded);
  return changed;
}

}  // namespace kiln
