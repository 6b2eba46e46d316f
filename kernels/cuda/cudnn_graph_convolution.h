// Forward convolution through cuDNN's graph (backend) API: the engines cuDNN's heuristics offer
// for the operation graph conv_fprop(x, w) -> y, which include kernels the legacy API's eight
// algorithms do not reach (PyTorch calls cuDNN this way). CudnnConvolution (convolution.cu) runs
// them as its graph tactics. A bias, and a relu after it, can join the graph (conv -> add -> relu,
// float32 between them, one rounding to the layer's dtype at the end, as the legacy API's fused
// call rounds); a residual or another activation runs in CudnnConvolution's own epilogue kernel.
//
// The builder times these tactics for grouped convolutions and INT8 ones (cudnn_graph_tactics);
// plans that chose one run whatever the environment says.
#pragma once

#include <cudnn.h>

#include <memory>
#include <string>

#include "ir/dims.h"
#include "ir/dtype.h"
#include "ir/ops/convolution.h"

namespace kiln {

// A forward convolution: dims channels first ([N, C, spatial...], weight [K, C / groups,
// kernel...], y [N, K, spatial...]), memory channels last or not.
struct GraphConvShape {
  DataType dtype = DataType::kFloat16;
  Dims x, w, y;
  bool channels_last = false;
  bool allow_tf32 = false;  // float32: engines that round inputs to TF32 are left out unless set
  ConvGeometry geometry;
  // y = relu?(conv(x, w) + bias[k]) in the graph. cuDNN runs such graphs on its runtime-fusion
  // engines (compiled with NVRTC when the plan is made: about a second each), so only where the
  // one rounding matters for accuracy: 16-bit layers with a bias.
  bool bias = false;
  bool relu = false;  // after the bias; NaN stays NaN (torch's relu)

  // An INT8 graph (dtype kInt8, the quantized convolutions of int8_convolution.h): x and w int8,
  // int32 sums, then in float32 y = relu?(sums * scale[k] + bias[k] + residual) written as y_dtype,
  // where an int8 residual is dequantized (times residual_scale) and an int8 y is the value times
  // out_scale, rounded and saturated by cuDNN. scale and bias are float32 [K]; `bias` and `relu`
  // above are ignored.
  DataType y_dtype = DataType::kFloat16;
  bool residual = false;
  DataType residual_dtype = DataType::kInt8;
  float residual_scale = 1.f;
  float out_scale = 1.f;
};

// How many graph tactics a convolution has: the first engine configurations that cuDNN's
// heuristics (mode A, then its fallback list) offer and Kiln's numerics allow; tactic k finalizes
// only the k-th as its plan, and is refused when that fails or exceeds the workspace.
constexpr int kCudnnGraphConfigs = 4;

// Whether the builder times the graph tactics of a convolution: KILN_CUDNN_GRAPH=1 for every one,
// =0 for none; unset, `by_default`: the kernel's choice (float convolutions: the grouped ones,
// where cuDNN's legacy algorithms are slowest, regnet_x's grouped 3x3 convolutions running
// 1.5-2.6x faster on graph engines; INT8 convolutions: all).
bool cudnn_graph_tactics(bool by_default);

// One execution plan: engine configuration `config` of the usable ones (see kCudnnGraphConfigs).
// Throws, saying why, when cuDNN offers fewer or refuses the shape.
class CudnnGraphConvolution {
 public:
  CudnnGraphConvolution(cudnnHandle_t handle, const GraphConvShape& shape, int config, size_t workspace_limit,
                        const std::string& who);
  ~CudnnGraphConvolution();
  CudnnGraphConvolution(const CudnnGraphConvolution&) = delete;
  CudnnGraphConvolution& operator=(const CudnnGraphConvolution&) = delete;

  size_t workspace_bytes() const;
  int64_t engine_index() const;  // cuDNN's global engine index, for reports
  // y = conv(x, w) (+ bias, relu where the shape says so) on the handle's stream. An INT8 graph
  // also takes its per-channel scale and its residual (where it has one).
  void run(cudnnHandle_t handle, const void* x, const void* w, void* y, void* workspace,
           const void* bias = nullptr, const void* scale = nullptr, const void* residual = nullptr) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln
