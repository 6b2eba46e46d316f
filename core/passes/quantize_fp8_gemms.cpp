// quantize_fp8_gemms: FP8 GEMMs from the calibrated FP8 quantization. A fully_connected layer
// whose input x̂ is an e4m3 fake_quantize of x (per tensor, constant scale s_x) and whose weight W
// is a constant becomes
//   quantize(x, s_x, format e4m3) -> float8 xq                  (one per fake_quantize, shared)
//   fully_connected(xq, Wq, bias, residual; out_dtype, input_scale s_x, weight_scale s_w)
// Views (reshape, flatten, squeeze, unsqueeze) between the fake_quantize and the GEMM are
// repeated on the float8 tensor. Wq = e4m3(W / s_w), s_w = max|W| / 448 per tensor (cuBLASLt's FP8 GEMMs on
// Hopper scale operands per tensor). The FP8 layer computes s_x * s_w * (xq @ Wq^T) in float32 accumulation,
// which is the fake-quantized model's x̂ @ Ŵ^T; the epilogue (bias, activation, residual) is
// untouched. kiln.compile's FP8 calibration already put W on that per-tensor e4m3 grid, so
// requantizing it here is exact (a weight merged by fuse_parallel_gemms from several is
// requantized to the largest of their scales).
//
// Only where the GEMM maps onto cuBLASLt's FP8 kernels: y float16 or bfloat16, K and N multiples
// of 16. Other layers keep the fake_quantize (simulated FP8, still correct). The builder runs
// this pass for the CUDA target when the "fp8" precision is enabled, after assign_precision
// (which settles y's dtype); the fake_quantize layers it leaves unread go with dead-layer
// elimination.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>

#include "core/calibration.h"
#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/passes/pattern_match.h"
#include "core/passes/quantized_inputs.h"
#include "core/plan.h"
#include "core/weight_transforms.h"
#include "ir/float8.h"
#include "ir/op_schema.h"
#include "ir/ops/quantize.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

// The constant per-tensor scale of an e4m3 fake_quantize, or nullopt when `f` is not one.
std::optional<float> e4m3_scale(const Network& net, const Layer& f) {
  if (f.op != "fake_quantize" || f.inputs.size() != 2) return std::nullopt;
  const Tensor& scale = net.tensor(f.inputs[1]);
  if (scale.kind != TensorKind::kConstant || scale.dtype != DataType::kFloat32 || volume(scale.dims) != 1) {
    return std::nullopt;
  }
  if (!quant_params(f, net.tensor(f.inputs[0]).dims.size(), 1).e4m3) return std::nullopt;
  float s = 0.f;
  std::memcpy(&s, scale.data->data(), sizeof(s));
  return s;
}

bool maps_to_cublaslt(const Network& net, const Layer& fc) {
  if (fc.op != "fully_connected" || fc.attrs.has("out_dtype")) return false;
  const Tensor& w = net.tensor(fc.inputs[1]);
  const DataType y = net.tensor(fc.outputs[0]).dtype;
  return w.kind == TensorKind::kConstant && w.dims.size() == 2 && w.dims[0] % 16 == 0 &&
         w.dims[1] % 16 == 0 && (y == DataType::kFloat16 || y == DataType::kBFloat16);
}

// W on the per-tensor e4m3 grid: (bytes, scale).
std::pair<std::shared_ptr<std::vector<uint8_t>>, float> quantize_weight(const Tensor& w) {
  TensorView v{const_cast<uint8_t*>(w.data->data()), w.dtype, w.dims};
  const int64_t n = volume(w.dims);
  const float scale = e4m3_tensor_scale(w), inv = 1.f / scale;
  auto bytes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    (*bytes)[static_cast<size_t>(i)] = float_to_e4m3(static_cast<float>(load_element(v, i)) * inv);
  }
  return {bytes, scale};
}

}  // namespace

bool quantize_fp8_gemms(Network& net) {
  const std::vector<int> producer = net.producers();
  // A copy: the fake_quantize layers are read after they were re-added.
  const std::vector<Layer> old = net.layers();
  net.mutable_layers().clear();
  std::set<std::string> used;
  for (const auto& l : old) used.insert(l.name);
  for (const auto& t : net.tensors()) used.insert(t.name);
  // float8 versions of tensors: a fake_quantize's output -> its quantize's, and so on through views
  std::map<TensorId, TensorId> quantized;
  bool changed = false;
  for (Layer fc : old) {
    std::vector<const Layer*> views;  // views and float casts between the fake_quantize and fc
    const int p = maps_to_cublaslt(net, fc)
                      ? quantization_producer(net, old, producer, fc.inputs[0], true, &views)
                      : -1;
    const std::optional<float> s_x = p >= 0 ? e4m3_scale(net, old[static_cast<size_t>(p)]) : std::nullopt;
    if (!s_x) {
      net.mutable_layers().push_back(std::move(fc));
      continue;
    }
    const Layer& fq = old[static_cast<size_t>(p)];
    if (!quantized.count(fq.outputs[0])) {
      Attributes attrs;
      attrs.set("format", std::string("e4m3"));
      if (fq.attrs.has("inv_scale")) attrs.set("inv_scale", fq.attrs.get_float("inv_scale", fq.name));
      const Layer& q =
          net.add_layer("quantize", {fq.inputs[0], fq.inputs[1]}, attrs, unique_name(used, fq.name + "/fp8"));
      quantized[fq.outputs[0]] = q.outputs[0];
    }
    const TensorId xq = repeat_views(net, quantized, views, used, "/fp8", fc.inputs[0]);
    const Tensor& w = net.tensor(fc.inputs[1]);
    auto [bytes, s_w] = quantize_weight(w);
    // The weight's scale becomes a kernel parameter (weight_scale): refit cannot replay it.
    LineagePtr lineage = blocked_lineage(net, {fc.inputs[1]}, "its FP8 weight scale is a kernel parameter",
                                         DataType::kFloat8E4M3, w.dims);
    const TensorId wq =
        net.add_constant(unique_name(used, w.name + "/fp8"), DataType::kFloat8E4M3, w.dims, std::move(bytes));
    net.tensor(wq).lineage = std::move(lineage);
    fc.inputs[0] = xq;
    fc.inputs[1] = wq;
    fc.attrs.set("out_dtype", std::string(dtype_name(net.tensor(fc.outputs[0]).dtype)));
    fc.attrs.set("input_scale", static_cast<double>(*s_x));
    fc.attrs.set("weight_scale", static_cast<double>(s_w));
    net.mutable_layers().push_back(std::move(fc));
    changed = true;
  }
  return changed;
}

}  // namespace kiln
