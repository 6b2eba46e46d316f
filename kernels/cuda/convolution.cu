// convolution on cuDNN's legacy API (cudnnConvolutionForward) and deconvolution as its data
// gradient (cudnnConvolutionBackwardData). 1d runs as 2d with a height of 1. Accumulation is FP32
// for every dtype; float32 is strict FMA math (no TF32) unless the layer sets allow_tf32 = 1.
//
// Steady state is a lookup plus the cuDNN call: descriptors and the algorithm are prepared once
// per input shape (and workspace size) and cached in the kernel (mutex-protected: kernels are
// shared between execution contexts; cuDNN only reads the descriptors during a call).
//
// The epilogue y = act(conv + bias + residual) runs inside cudnnConvolutionBiasActivationForward
// where cuDNN offers it (activation none or relu, with a bias; identity only with the
// IMPLICIT_PRECOMP_GEMM algorithm, as cuDNN requires), otherwise as one own kernel after the
// convolution (one read of y and the residual, one write of y). Channels-last layers (layout
// nhwc) describe their tensors with NHWC strides and the filter as CUDNN_TENSOR_NHWC.
//
// Tactics: tactic t is cuDNN algorithm t (cudnnConvolutionFwdAlgo_t, or cudnnConvolutionBwdDataAlgo_t
// for deconvolution); a tactic whose algorithm is unsupported for the shape or needs more than
// the workspace throws from run(). Tactic -1 takes cuDNN's first heuristic pick that fits.
// Convolution has kDepthwiseVariants more tactics from kDepthwiseTactic (=
// CUDNN_CONVOLUTION_FWD_ALGO_COUNT) on: Kiln's own depthwise kernels (depthwise_convolution.cu,
// epilogue fused; tactic kDepthwiseTactic + v runs variant v), for 2d layers with one filter per
// channel; other layers, and shapes a variant does not cover, refuse them. Then 2 x kCudnnGraphConfigs
// graph tactics from kGraphTactic on: cuDNN's graph API with the k-th engine configuration its
// heuristics offer (cudnn_graph_convolution.h; a 16-bit layer's bias and relu in the graph where
// cuDNN fuses them, any other epilogue in the own kernel after; the second kCudnnGraphConfigs are
// the plain engines of a layer with such a bias, less precise: see less_precise_tactic), timed where
// cudnn_graph_tactics says so (grouped convolutions by default) and loaded from any plan that
// chose one.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <utility>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/activation.h"
#include "ir/ops/convolution.h"
#include "kernels/cuda/activation_math.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cudnn_graph_convolution.h"
#include "kernels/cuda/cudnn_util.h"
#include "kernels/cuda/depthwise_convolution.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/cuda/int8_convolution.h"
#include "kernels/cuda/shape_cache.h"
#include "kernels/kernel.h"

namespace kiln {
namespace {

constexpr int kDepthwiseTactic = static_cast<int>(CUDNN_CONVOLUTION_FWD_ALGO_COUNT);
constexpr int kGraphTactic = kDepthwiseTactic + kDepthwiseVariants;
constexpr int64_t kDepthwiseMaxTaps = 256;  // its weights per channel vector fit shared memory

struct EpilogueParams {
  ActivationParams act;
  bool activate;
  bool channels_last;
  int64_t channels, spatial;  // output channels and pixels per (sample, channel)
};

// y = act(y + bias[c] + residual), in float, one element per thread (grid-stride). Index is
// int32_t when the tensor allows it: the channel's division is then cheap.
template <typename T, typename Index>
__global__ void epilogue_kernel(EpilogueParams p, T* __restrict__ y, const T* __restrict__ bias,
                                const T* __restrict__ residual, Index n) {
  const Index channels = static_cast<Index>(p.channels), spatial = static_cast<Index>(p.spatial);
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    float v = to_float(y[i]);
    if (bias) v += to_float(bias[p.channels_last ? i % channels : i / spatial % channels]);
    if (residual) v += to_float(residual[i]);
    if (p.activate) v = activate(p.act, v);
    y[i] = from_float<T>(v);
  }
}

// Descriptors and algorithm for one input shape: built once, then only read.
struct Prepared {
  TensorDescriptor xd, yd, bd;
  FilterDescriptor wd;
  ConvolutionDescriptor cd;
  ActivationDescriptor ad;
  int algo = 0;
  size_t workspace = 0;
  bool cudnn_epilogue = false;  // run cudnnConvolutionBiasActivationForward
  // Set when cuDNN refused the fused call at run time; later calls take the own epilogue.
  mutable std::atomic<bool> cudnn_epilogue_refused{false};
};

class CudnnConvolution final : public Kernel {
 public:
  CudnnConvolution(Layer layer, bool transposed)
      : layer_(std::move(layer)),
        who_(describe(layer_)),
        transposed_(transposed),
        allow_tf32_(layer_.attrs.get_int("allow_tf32", int64_t{0}) != 0),
        channels_last_(channels_last(layer_)),
        tactic_(static_cast<int>(layer_.attrs.get_int("tactic", int64_t{-1}))) {
    KILN_CHECK(tactic_ >= -1 && tactic_ < tactic_count(),
               who_ << ": tactic " << tactic_ << " is out of range (-1 or 0.." << tactic_count() - 1 << ")");
    epilogue_ = conv_epilogue(layer_, layer_.inputs.size());
    if (epilogue_.activation != "none") {
      params_.act.type = variant_code(activation_types(), epilogue_.activation);
      params_.act.alpha = static_cast<float>(epilogue_.alpha);
      params_.act.beta = static_cast<float>(epilogue_.beta);
      params_.act.threshold = static_cast<float>(epilogue_.threshold);
    }
    params_.activate = epilogue_.activation != "none";
    params_.channels_last = channels_last_;
  }

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView &x = in[0], &w = in[1], &y = out[0];
    if (volume(y.dims) == 0) return;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    const ConvEpilogue e = conv_epilogue(layer_, in.size());
    const TensorView* bias = e.has_bias ? &in[2] : nullptr;
    const TensorView* residual = e.residual ? &in[static_cast<size_t>(e.residual_input)] : nullptr;
    if (depthwise()) return run_depthwise(x, w, y, bias, residual, stream);
    auto handle = static_cast<cudnnHandle_t>(ctx.cudnn);
    KILN_CHECK(handle != nullptr, who_ << ": no cuDNN handle in the launch context");
    KILN_CUDNN_CHECK(cudnnSetStream(handle, stream));
    // The graph tactics' tensors are declared 16-byte aligned; a buffer that is not (a view at an
    // odd offset, from the caller) takes the legacy path with cuDNN's heuristic algorithm.
    if (graph() && aligned16({x.data, w.data, y.data, ctx.workspace})) {
      // A 16-bit layer's bias (and a relu after it) in cuDNN's graph: y rounds once, after the bias,
      // as the legacy fused call rounds. Rounding the convolution before the bias cost
      // regnet_x_32gf's FP16 cosine 0.999026 -> 0.998914 (batch norms fold into such biases, and
      // the product can be much larger than the sum). Where cuDNN fuses no engine for it, the
      // convolution alone and the epilogue kernel after.
      const bool fusable = fusable_layer() && aligned16({bias->data}) && x.dtype != DataType::kFloat32;
      // Tactics kGraphTactic + kCudnnGraphConfigs on: the same engines without the fused bias,
      // which the builder takes only when they are clearly faster (less_precise_tactic): cuDNN
      // fuses on engines it compiles at run time, about 50 us for each of regnet_x_3_2gf's 14x14
      // layers against 13-40 us plain (H100). Two ways to round the plain engines' product once
      // were tried there (12-07) and failed: cuDNN offers no engine that writes a 16-bit
      // convolution in float32, and one that adds the product to y filled with the bias (beta 1)
      // rounds the product before the add.
      KILN_CHECK(!plain_graph_tactic() || fusable,
                 who_ << ": tactic " << tactic_ << " is tactic " << tactic_ - kCudnnGraphConfigs
                      << " without a fused bias, and this layer has none to fuse; take that one");
      if (fusable && !plain_graph_tactic()) {
        if (const CudnnGraphConvolution* fused = graph_plan(handle, x, w, y, ctx.workspace_bytes, true)) {
          fused->run(handle, x.data, w.data, y.data, ctx.workspace, bias->data);
          return;
        }
      }
      graph_plan(handle, x, w, y, ctx.workspace_bytes, false)
          ->run(handle, x.data, w.data, y.data, ctx.workspace);
      if (bias || residual || params_.activate) run_epilogue(y, bias, residual, stream);
      return;
    }
    const Prepared& p = prepared(handle, x, w, y, bias != nullptr, ctx.workspace_bytes);

    const float one = 1.f, zero = 0.f;
    cudnnStatus_t st;
    const char* call;
    if (p.cudnn_epilogue && !p.cudnn_epilogue_refused.load(std::memory_order_relaxed)) {
      // y = act(conv(x) + alpha2 * z + bias); without a residual z is y itself with alpha2 = 0.
      const float alpha2 = residual ? 1.f : 0.f;
      const void* z = residual ? residual->data : y.data;
      st = cudnnConvolutionBiasActivationForward(handle, &one, p.xd.get(), x.data, p.wd.get(), w.data,
                                                 p.cd.get(), static_cast<cudnnConvolutionFwdAlgo_t>(p.algo),
                                                 ctx.workspace, p.workspace, &alpha2, p.yd.get(), z,
                                                 p.bd.get(), bias->data, p.ad.get(), p.yd.get(), y.data);
      if (st == CUDNN_STATUS_SUCCESS) return;
      // cuDNN refuses some configurations of the fused call (before launching anything); the
      // plain convolution below reports any error that is not about the fusion.
      p.cudnn_epilogue_refused.store(true, std::memory_order_relaxed);
    }
    if (transposed_) {
      call = "cudnnConvolutionBackwardData";
      st = cudnnConvolutionBackwardData(handle, &one, p.wd.get(), w.data, p.xd.get(), x.data, p.cd.get(),
                                        static_cast<cudnnConvolutionBwdDataAlgo_t>(p.algo), ctx.workspace,
                                        p.workspace, &zero, p.yd.get(), y.data);
    } else {
      call = "cudnnConvolutionForward";
      st = cudnnConvolutionForward(handle, &one, p.xd.get(), x.data, p.wd.get(), w.data, p.cd.get(),
                                   static_cast<cudnnConvolutionFwdAlgo_t>(p.algo), ctx.workspace, p.workspace,
                                   &zero, p.yd.get(), y.data);
    }
    KILN_CHECK(st == CUDNN_STATUS_SUCCESS, who_ << ": cuDNN " << call << " failed for " << dtype_name(x.dtype)
                                                << " input " << to_string(x.dims) << ": "
                                                << cudnnGetErrorString(st));
    if (bias || residual || params_.activate) run_epilogue(y, bias, residual, stream);
  }

  std::string name() const override {
    if (transposed_) return "cudnn_deconvolution";
    if (graph()) return "cudnn_graph_convolution";
    return depthwise() ? "cuda_depthwise_convolution" : "cudnn_convolution";
  }
  bool uses_cudnn() const override { return !depthwise(); }
  // The tactics the builder times: the graph ones where cudnn_graph_tactics says so.
  int num_tactics() const override {
    if (transposed_) return static_cast<int>(CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT);
    const bool grouped = layer_.attrs.get_int("groups", int64_t{1}) > 1;
    return cudnn_graph_tactics(/*by_default=*/grouped) ? tactic_count() : kGraphTactic;
  }
  // The plain graph engines of a layer whose bias the other graph tactics fuse round twice.
  bool less_precise_tactic(int tactic) const override {
    return !transposed_ && tactic >= kGraphTactic + kCudnnGraphConfigs && fusable_layer();
  }

 private:
  static bool aligned16(std::initializer_list<const void*> pointers) {
    for (const void* p : pointers)
      if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
    return true;
  }

  // Every tactic a plan may hold.
  // Graph tactics: kCudnnGraphConfigs with the bias fused where the layer allows it, then the same
  // engine configurations plain.
  int tactic_count() const {
    return transposed_ ? static_cast<int>(CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT)
                       : kGraphTactic + 2 * kCudnnGraphConfigs;
  }
  bool depthwise() const { return !transposed_ && tactic_ >= kDepthwiseTactic && tactic_ < kGraphTactic; }
  bool graph() const { return !transposed_ && tactic_ >= kGraphTactic; }
  int graph_config() const { return (tactic_ - kGraphTactic) % kCudnnGraphConfigs; }
  bool plain_graph_tactic() const { return tactic_ >= kGraphTactic + kCudnnGraphConfigs; }
  // A bias and at most a relu after it, no residual: what the graph tactics fuse (16-bit layers).
  bool fusable_layer() const {
    return epilogue_.has_bias && !epilogue_.residual && (!params_.activate || epilogue_.activation == "relu");
  }

  // The graph tactic's plan for this input shape and workspace, built once. `fused`: the bias (and
  // the relu) in the graph, null when cuDNN offers no such engine (then the plain one serves);
  // without, cuDNN's refusal throws.
  const CudnnGraphConvolution* graph_plan(cudnnHandle_t handle, const TensorView& x, const TensorView& w,
                                          const TensorView& y, size_t workspace_bytes, bool fused) const {
    return graph_cache_.get(x.dims, workspace_bytes, fused, [&]() -> std::unique_ptr<CudnnGraphConvolution> {
      GraphConvShape s;
      s.dtype = x.dtype;
      s.x = channels_last_ ? channels_first_dims(x.dims) : x.dims;
      s.w = channels_last_ ? channels_first_dims(w.dims) : w.dims;
      s.y = channels_last_ ? channels_first_dims(y.dims) : y.dims;
      s.channels_last = channels_last_;
      s.allow_tf32 = allow_tf32_;
      s.geometry = conv_geometry(layer_, static_cast<int>(s.x.size()) - 2);
      s.bias = fused;
      s.relu = fused && params_.activate;
      if (!fused)
        return std::make_unique<CudnnGraphConvolution>(handle, s, graph_config(), workspace_bytes, who_);
      try {
        return std::make_unique<CudnnGraphConvolution>(handle, s, graph_config(), workspace_bytes, who_);
      } catch (const Error&) {
        // Fewer fused engines than this tactic's index: the tactic is refused (timing must not
        // pick the plain graph's engine, which rounds twice, over a fused one). None at all: the
        // plain graph serves.
        if (graph_config() == 0) return nullptr;
        try {
          CudnnGraphConvolution first(handle, s, 0, workspace_bytes, who_);
        } catch (const Error&) {
          return nullptr;
        }
        throw;
      }
    });
  }

  // The depthwise tactics: x [N, C, H, W] (or channels last) with weight [C, 1, kh, kw] and groups
  // = C; anything else is refused with what the tactic needs.
  void run_depthwise(const TensorView& x, const TensorView& w, const TensorView& y, const TensorView* bias,
                     const TensorView* residual, cudaStream_t stream) const {
    const Dims xd = channels_last_ ? channels_first_dims(x.dims) : x.dims;
    const Dims wd = channels_last_ ? channels_first_dims(w.dims) : w.dims;
    const Dims yd = channels_last_ ? channels_first_dims(y.dims) : y.dims;
    const bool two_d = xd.size() == 4;
    const ConvGeometry g = conv_geometry(layer_, static_cast<int>(xd.size()) - 2);
    KILN_CHECK(
        two_d && g.groups == xd[1] && wd[0] == xd[1] && wd[1] == 1 && wd[2] * wd[3] <= kDepthwiseMaxTaps,
        who_ << ": tactic " << tactic_ << " (Kiln's depthwise kernel) needs a 2d convolution "
             << "with one filter per channel (groups = input channels = output channels) of at most "
             << kDepthwiseMaxTaps << " taps; got input " << to_string(x.dims) << ", weight "
             << to_string(w.dims) << ", groups " << g.groups << "; take another tactic");
    DepthwiseParams p;
    p.n = xd[0];
    p.c = xd[1];
    p.h = xd[2];
    p.w = xd[3];
    p.oh = yd[2];
    p.ow = yd[3];
    p.kh = static_cast<int>(wd[2]);
    p.kw = static_cast<int>(wd[3]);
    static_cast<ConvWindow2d&>(p) = conv_window_2d(g);
    p.channels_last = channels_last_;
    p.act = params_.act;
    p.activate = params_.activate;
    p.variant = tactic_ - kDepthwiseTactic;
    const std::string refusal = depthwise_refusal(p);
    KILN_CHECK(refusal.empty(), who_ << ": tactic " << tactic_ << " (Kiln's depthwise kernel, variant "
                                     << p.variant << ") " << refusal << "; got input " << to_string(x.dims)
                                     << " (" << (channels_last_ ? "nhwc" : "nchw") << "), weight "
                                     << to_string(w.dims) << "; take another tactic");
    launch_depthwise_convolution(p, x.dtype, x.data, w.data, bias ? bias->data : nullptr,
                                 residual ? residual->data : nullptr, y.data, stream);
  }

  cudnnMathType_t requested_math(DataType t) const {
    if (t != DataType::kFloat32) return CUDNN_TENSOR_OP_MATH;
    return allow_tf32_ ? CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION : CUDNN_FMA_MATH;
  }

  // The heuristic's entries may carry a math type that would let float32 use TF32: those are
  // skipped unless allow_tf32 (the FMA math type stays set for strict float32).
  bool math_allowed(cudnnMathType_t math, DataType t) const {
    if (t == DataType::kFloat32 && !allow_tf32_) return math == CUDNN_FMA_MATH || math == CUDNN_DEFAULT_MATH;
    return true;
  }

  const Prepared& prepared(cudnnHandle_t handle, const TensorView& x, const TensorView& w,
                           const TensorView& y, bool has_bias, size_t workspace_bytes) const {
    return *cache_.get(x.dims, workspace_bytes, 0,
                       [&] { return prepare(handle, x, w, y, has_bias, workspace_bytes); });
  }

  std::unique_ptr<Prepared> prepare(cudnnHandle_t handle, const TensorView& x, const TensorView& w,
                                    const TensorView& y, bool has_bias, size_t workspace_bytes) const {
    auto p = std::make_unique<Prepared>();
    const Dims xdims = channels_last_ ? channels_first_dims(x.dims) : x.dims;
    const Dims wdims = channels_last_ ? channels_first_dims(w.dims) : w.dims;
    const Dims ydims = channels_last_ ? channels_first_dims(y.dims) : y.dims;
    const ConvGeometry g = conv_geometry(layer_, static_cast<int>(xdims.size()) - 2);
    const cudnnDataType_t type = cudnn_type(x.dtype, who_);
    if (channels_last_) {
      set_channels_last(p->xd, type, cudnn_dims(xdims, who_), who_);
      set_channels_last(p->yd, type, cudnn_dims(ydims, who_), who_);
    } else {
      set_packed(p->xd, type, cudnn_dims(xdims, who_), who_);
      set_packed(p->yd, type, cudnn_dims(ydims, who_), who_);
    }
    std::vector<int> wd = cudnn_dims(wdims, who_);
    KILN_CUDNN_CHECK(cudnnSetFilterNdDescriptor(p->wd.get(), type,
                                                channels_last_ ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW,
                                                static_cast<int>(wd.size()), wd.data()));
    std::vector<int> pads = cudnn_spatial(g.pads, 0), strides = cudnn_spatial(g.strides, 1),
                     dilations = cudnn_spatial(g.dilations, 1);
    // FP32 compute for every data type: fp16/bf16 inputs accumulate in float.
    KILN_CUDNN_CHECK(cudnnSetConvolutionNdDescriptor(p->cd.get(), static_cast<int>(pads.size()), pads.data(),
                                                     strides.data(), dilations.data(),
                                                     CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    KILN_CUDNN_CHECK(cudnnSetConvolutionGroupCount(p->cd.get(), static_cast<int>(g.groups)));
    KILN_CUDNN_CHECK(cudnnSetConvolutionMathType(p->cd.get(), requested_math(x.dtype)));

    if (tactic_ >= 0 && !graph()) {  // a graph tactic comes here only for its fallback (run)
      use_tactic(handle, x, g.groups, *p, workspace_bytes);
    } else {
      choose(handle, x, *p, workspace_bytes);
    }

    // cuDNN's fused epilogue: relu or identity (identity needs IMPLICIT_PRECOMP_GEMM), with a bias.
    const bool relu = epilogue_.activation == "relu";
    if (!transposed_ && has_bias && (relu || epilogue_.activation == "none") &&
        (relu || p->algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM)) {
      std::vector<int> bdims(cudnn_dims(ydims, who_).size(), 1);
      bdims[1] = static_cast<int>(ydims[1]);
      set_packed(p->bd, type, bdims, who_);
      // NaN stays NaN, as torch's relu and Kiln's own epilogue (activate()). With
      // CUDNN_NOT_PROPAGATE_NAN the fused relu turns NaN into 0 for most algorithms; with
      // CUDNN_PROPAGATE_NAN every forward algorithm kept the NaN outputs (cuDNN 9.14, H200).
      KILN_CUDNN_CHECK(cudnnSetActivationDescriptor(
          p->ad.get(), relu ? CUDNN_ACTIVATION_RELU : CUDNN_ACTIVATION_IDENTITY, CUDNN_PROPAGATE_NAN, 0.0));
      p->cudnn_epilogue = true;
    }
    return p;
  }

  // Tactic t: cuDNN algorithm t with the layer's math type, if it is supported and fits. Grouped
  // convolutions leave out the FFT and non-fused Winograd algorithms: on mobilenet_v3's depthwise
  // layers (H100, FP32) they took 0.2-5 ms against 5 us for the implicit GEMMs, their cost grows
  // with the group count, and timing them (CUDA-graph capture of their many kernels) stalled the
  // build for minutes.
  void use_tactic(cudnnHandle_t handle, const TensorView& x, int64_t groups, Prepared& p,
                  size_t workspace_bytes) const {
    KILN_CHECK(groups == 1 || !per_group_algorithm(),
               who_ << ": tactic " << tactic_ << " (cuDNN algorithm " << tactic_
                    << ") runs once per group; grouped convolutions take another tactic");
    size_t bytes = 0;
    cudnnStatus_t st;
    if (transposed_) {
      st = cudnnGetConvolutionBackwardDataWorkspaceSize(
          handle, p.wd.get(), p.xd.get(), p.cd.get(), p.yd.get(),
          static_cast<cudnnConvolutionBwdDataAlgo_t>(tactic_), &bytes);
    } else {
      st = cudnnGetConvolutionForwardWorkspaceSize(handle, p.xd.get(), p.wd.get(), p.cd.get(), p.yd.get(),
                                                   static_cast<cudnnConvolutionFwdAlgo_t>(tactic_), &bytes);
    }
    KILN_CHECK(st == CUDNN_STATUS_SUCCESS, who_ << ": tactic " << tactic_ << " (cuDNN algorithm " << tactic_
                                                << ") does not support " << dtype_name(x.dtype) << " input "
                                                << to_string(x.dims) << ": " << cudnnGetErrorString(st));
    KILN_CHECK(bytes <= workspace_bytes, who_ << ": tactic " << tactic_ << " needs " << bytes
                                              << " workspace bytes, more than the limit of "
                                              << workspace_bytes);
    p.algo = tactic_;
    p.workspace = bytes;
  }

  bool per_group_algorithm() const {
    if (transposed_) {
      const auto a = static_cast<cudnnConvolutionBwdDataAlgo_t>(tactic_);
      return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING ||
             a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
    }
    const auto a = static_cast<cudnnConvolutionFwdAlgo_t>(tactic_);
    return a == CUDNN_CONVOLUTION_FWD_ALGO_FFT || a == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
           a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
  }

  void choose(cudnnHandle_t handle, const TensorView& x, Prepared& p, size_t workspace_bytes) const {
    const bool strict = x.dtype == DataType::kFloat32 && !allow_tf32_;
    bool found = false;
    // First entry (the heuristic's order) that is supported, keeps the precision, and whose
    // workspace, queried for that algorithm and math type (the heuristic's `memory` is not always
    // filled in), fits the context's workspace.
    auto pick = [&](const auto& perf, int returned, auto workspace_of) {
      for (int i = 0; i < returned && !found; ++i) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || !math_allowed(perf[i].mathType, x.dtype)) continue;
        const cudnnMathType_t math = strict ? CUDNN_FMA_MATH : perf[i].mathType;
        KILN_CUDNN_CHECK(cudnnSetConvolutionMathType(p.cd.get(), math));
        size_t bytes = 0;
        if (workspace_of(perf[i].algo, &bytes) != CUDNN_STATUS_SUCCESS || bytes > workspace_bytes) continue;
        p.algo = static_cast<int>(perf[i].algo);
        p.workspace = bytes;
        found = true;
      }
    };
    int max_count = 0, returned = 0;
    if (transposed_) {
      KILN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(handle, &max_count));
      std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(static_cast<size_t>(max_count));
      KILN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
          handle, p.wd.get(), p.xd.get(), p.cd.get(), p.yd.get(), max_count, &returned, perf.data()));
      pick(perf, returned, [&](cudnnConvolutionBwdDataAlgo_t algo, size_t* bytes) {
        return cudnnGetConvolutionBackwardDataWorkspaceSize(handle, p.wd.get(), p.xd.get(), p.cd.get(),
                                                            p.yd.get(), algo, bytes);
      });
    } else {
      KILN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(handle, &max_count));
      std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<size_t>(max_count));
      KILN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(handle, p.xd.get(), p.wd.get(), p.cd.get(),
                                                              p.yd.get(), max_count, &returned, perf.data()));
      pick(perf, returned, [&](cudnnConvolutionFwdAlgo_t algo, size_t* bytes) {
        return cudnnGetConvolutionForwardWorkspaceSize(handle, p.xd.get(), p.wd.get(), p.cd.get(), p.yd.get(),
                                                       algo, bytes);
      });
    }
    KILN_CHECK(found,
               who_ << ": cuDNN has no " << (strict ? "strict-FP32 " : "") << dtype_name(x.dtype)
                    << " algorithm for input " << to_string(x.dims) << " within the workspace limit of "
                    << workspace_bytes << " bytes"
                    << (x.dtype == DataType::kBFloat16 ? " (bfloat16 needs a GPU of sm_80 or newer)" : "")
                    << "; raise BuilderConfig.workspace_bytes or use another dtype");
  }

  void run_epilogue(const TensorView& y, const TensorView* bias, const TensorView* residual,
                    cudaStream_t stream) const {
    const int64_t n = volume(y.dims);
    EpilogueParams p = params_;
    p.channels = channels_last_ ? y.dims.back() : y.dims[1];
    p.spatial = n / (y.dims[0] * p.channels);
    constexpr int kBlock = 256;
    const unsigned grid = grid_for(n, kBlock);
    dispatch_floating(y.dtype, "convolution epilogue", [&](auto tag) {
      using T = decltype(tag);
      T* ys = static_cast<T*>(y.data);
      const T* bs = bias ? static_cast<const T*>(bias->data) : nullptr;
      const T* rs = residual ? static_cast<const T*>(residual->data) : nullptr;
      // int32 indexing needs n plus one grid stride to stay below 2^31.
      if (n + int64_t{grid} * kBlock < (int64_t{1} << 31)) {
        epilogue_kernel<T, int32_t><<<grid, kBlock, 0, stream>>>(p, ys, bs, rs, static_cast<int32_t>(n));
      } else {
        epilogue_kernel<T, int64_t><<<grid, kBlock, 0, stream>>>(p, ys, bs, rs, n);
      }
    });
    KILN_CUDA_CHECK_LAUNCH();
  }

  Layer layer_;
  std::string who_;
  bool transposed_;
  bool allow_tf32_;
  bool channels_last_;
  int tactic_;
  ConvEpilogue epilogue_;
  EpilogueParams params_{};
  ShapeCache<Prepared> cache_;
  ShapeCache<CudnnGraphConvolution> graph_cache_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("convolution", Backend::kCuda, [](const Layer& l) -> std::unique_ptr<Kernel> {
    if (conv_quantized(l)) return make_int8_convolution(l);  // int8_convolution.cu
    return std::make_unique<CudnnConvolution>(l, false);
  });
  register_kernel("deconvolution", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudnnConvolution>(l, true); });
});

}  // namespace kiln
