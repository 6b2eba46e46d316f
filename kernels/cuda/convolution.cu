// convolution on cuDNN's legacy API (cudnnConvolutionForward) and deconvolution as its data
// gradient (cudnnConvolutionBackwardData), both followed by an own bias kernel. 1d runs as 2d with
// a height of 1. Accumulation is FP32 for every dtype; float32 is strict FMA math (no TF32) unless
// the layer sets allow_tf32 = 1. The algorithm is cuDNN's first heuristic pick whose workspace
// fits, cached per input shape; descriptors are created per call.
#include <map>
#include <mutex>
#include <utility>

#include "core/op_schema.h"
#include "core/ops/convolution.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cudnn_util.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"
#include "kernels/kernels.h"

namespace kiln {
namespace {

template <typename T>
__global__ void add_bias_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t n, int64_t channels,
                                int64_t spatial) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = from_float<T>(to_float(y[i]) + to_float(bias[i / spatial % channels]));
  }
}

// The algorithm chosen for one input shape (and workspace limit).
struct AlgoChoice {
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  size_t workspace = 0;
};

class CudnnConvolution final : public Kernel {
 public:
  CudnnConvolution(Layer layer, bool transposed)
      : layer_(std::move(layer)),
        who_(describe(layer_)),
        transposed_(transposed),
        allow_tf32_(layer_.attrs.get_int("allow_tf32", int64_t{0}) != 0) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView &x = in[0], &w = in[1], &y = out[0];
    if (volume(y.dims) == 0) return;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    auto handle = static_cast<cudnnHandle_t>(ctx.cudnn);
    KILN_CHECK(handle != nullptr, who_ << ": no cuDNN handle in the launch context");
    KILN_CUDNN_CHECK(cudnnSetStream(handle, stream));

    const ConvGeometry g = conv_geometry(layer_, static_cast<int>(x.dims.size()) - 2);
    const cudnnDataType_t type = cudnn_type(x.dtype, who_);
    TensorDescriptor xd, yd;
    FilterDescriptor wd;
    ConvolutionDescriptor cd;
    set_packed(xd, type, cudnn_dims(x.dims, who_), who_);
    set_packed(yd, type, cudnn_dims(y.dims, who_), who_);
    std::vector<int> wdims = cudnn_dims(w.dims, who_);
    KILN_CUDNN_CHECK(cudnnSetFilterNdDescriptor(wd.get(), type, CUDNN_TENSOR_NCHW,
                                                static_cast<int>(wdims.size()), wdims.data()));
    std::vector<int> pads = cudnn_spatial(g.pads, 0), strides = cudnn_spatial(g.strides, 1),
                     dilations = cudnn_spatial(g.dilations, 1);
    // FP32 compute for every data type: fp16/bf16 inputs accumulate in float.
    KILN_CUDNN_CHECK(cudnnSetConvolutionNdDescriptor(cd.get(), static_cast<int>(pads.size()), pads.data(),
                                                     strides.data(), dilations.data(),
                                                     CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    KILN_CUDNN_CHECK(cudnnSetConvolutionGroupCount(cd.get(), static_cast<int>(g.groups)));
    KILN_CUDNN_CHECK(cudnnSetConvolutionMathType(cd.get(), requested_math(x.dtype)));

    const AlgoChoice choice = choose(handle, x, xd, wd, cd, yd, ctx.workspace_bytes);
    KILN_CUDNN_CHECK(cudnnSetConvolutionMathType(cd.get(), choice.math));
    const float alpha = 1.f, beta = 0.f;
    cudnnStatus_t st;
    if (transposed_) {
      st = cudnnConvolutionBackwardData(handle, &alpha, wd.get(), w.data, xd.get(), x.data, cd.get(),
                                        static_cast<cudnnConvolutionBwdDataAlgo_t>(choice.algo),
                                        ctx.workspace, choice.workspace, &beta, yd.get(), y.data);
    } else {
      st = cudnnConvolutionForward(handle, &alpha, xd.get(), x.data, wd.get(), w.data, cd.get(),
                                   static_cast<cudnnConvolutionFwdAlgo_t>(choice.algo), ctx.workspace,
                                   choice.workspace, &beta, yd.get(), y.data);
    }
    KILN_CHECK(st == CUDNN_STATUS_SUCCESS,
               who_ << ": cuDNN "
                    << (transposed_ ? "cudnnConvolutionBackwardData" : "cudnnConvolutionForward")
                    << " failed for " << dtype_name(x.dtype) << " input " << to_string(x.dims) << ": "
                    << cudnnGetErrorString(st));
    if (in.size() > 2) add_bias(in[2], y, stream);
  }

  std::string name() const override { return transposed_ ? "cudnn_deconvolution" : "cudnn_convolution"; }
  bool uses_cudnn() const override { return true; }

 private:
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

  AlgoChoice choose(cudnnHandle_t handle, const TensorView& x, const TensorDescriptor& xd,
                    const FilterDescriptor& wd, const ConvolutionDescriptor& cd, const TensorDescriptor& yd,
                    size_t workspace_bytes) const {
    std::vector<int64_t> key = x.dims;
    key.push_back(static_cast<int64_t>(workspace_bytes));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = cache_.find(key);
      if (it != cache_.end()) return it->second;
    }
    const bool strict = x.dtype == DataType::kFloat32 && !allow_tf32_;
    AlgoChoice choice;
    bool found = false;
    // First entry (the heuristic's order) that is supported, keeps the precision, and whose
    // workspace, queried for that algorithm and math type (the heuristic's `memory` is not always
    // filled in), fits the context's workspace.
    auto pick = [&](const auto& perf, int returned, auto workspace_of) {
      for (int i = 0; i < returned && !found; ++i) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || !math_allowed(perf[i].mathType, x.dtype)) continue;
        const cudnnMathType_t math = strict ? CUDNN_FMA_MATH : perf[i].mathType;
        KILN_CUDNN_CHECK(cudnnSetConvolutionMathType(cd.get(), math));
        size_t bytes = 0;
        if (workspace_of(perf[i].algo, &bytes) != CUDNN_STATUS_SUCCESS || bytes > workspace_bytes) continue;
        choice.algo = static_cast<int>(perf[i].algo);
        choice.math = math;
        choice.workspace = bytes;
        found = true;
      }
    };
    int max_count = 0, returned = 0;
    if (transposed_) {
      KILN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(handle, &max_count));
      std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(static_cast<size_t>(max_count));
      KILN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
          handle, wd.get(), xd.get(), cd.get(), yd.get(), max_count, &returned, perf.data()));
      pick(perf, returned, [&](cudnnConvolutionBwdDataAlgo_t algo, size_t* bytes) {
        return cudnnGetConvolutionBackwardDataWorkspaceSize(handle, wd.get(), xd.get(), cd.get(), yd.get(),
                                                            algo, bytes);
      });
    } else {
      KILN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(handle, &max_count));
      std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<size_t>(max_count));
      KILN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(handle, xd.get(), wd.get(), cd.get(), yd.get(),
                                                              max_count, &returned, perf.data()));
      pick(perf, returned, [&](cudnnConvolutionFwdAlgo_t algo, size_t* bytes) {
        return cudnnGetConvolutionForwardWorkspaceSize(handle, xd.get(), wd.get(), cd.get(), yd.get(), algo,
                                                       bytes);
      });
    }
    KILN_CHECK(found,
               who_ << ": cuDNN has no " << (strict ? "strict-FP32 " : "") << dtype_name(x.dtype)
                    << " algorithm for input " << to_string(x.dims) << " within the workspace limit of "
                    << workspace_bytes << " bytes"
                    << (x.dtype == DataType::kBFloat16 ? " (bfloat16 needs a GPU of sm_80 or newer)" : "")
                    << "; raise BuilderConfig.workspace_bytes or use another dtype");
    std::lock_guard<std::mutex> lock(mutex_);
    cache_[key] = choice;
    return choice;
  }

  void add_bias(const TensorView& bias, const TensorView& y, cudaStream_t stream) const {
    const int64_t n = volume(y.dims), channels = y.dims[1];
    const int64_t spatial = n / (y.dims[0] * channels);
    constexpr int kBlock = 256;
    dispatch_floating(y.dtype, "convolution bias", [&](auto tag) {
      using T = decltype(tag);
      add_bias_kernel<T><<<grid_for(n, kBlock), kBlock, 0, stream>>>(
          static_cast<T*>(y.data), static_cast<const T*>(bias.data), n, channels, spatial);
    });
    KILN_CUDA_CHECK_LAUNCH();
  }

  Layer layer_;
  std::string who_;
  bool transposed_;
  bool allow_tf32_;
  mutable std::mutex mutex_;
  mutable std::map<std::vector<int64_t>, AlgoChoice> cache_;
};

}  // namespace

void register_convolution_cuda_kernel() {
  register_kernel("convolution", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudnnConvolution>(l, false); });
  register_kernel("deconvolution", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudnnConvolution>(l, true); });
}

}  // namespace kiln
