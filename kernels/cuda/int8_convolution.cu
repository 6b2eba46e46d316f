// INT8 implicit-GEMM convolution (see int8_convolution.h for the contract): the host side, which
// checks a problem, picks a tile and launches it. The kernels: int8_convolution_mma.cuh (mma.sync,
// tiles 0-4, compiled in int8_convolution_mma_tile{0..4}.cu) and int8_convolution_sm90a.cu (wgmma).
#include "kernels/cuda/int8_convolution.h"

#include <cudnn.h>

#include <sstream>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/activation.h"
#include "ir/ops/convolution.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cudnn_graph_convolution.h"
#include "kernels/cuda/cudnn_util.h"
#include "kernels/cuda/int8_convolution_tile.cuh"
#include "kernels/cuda/shape_cache.h"

namespace kiln {
using namespace int8conv;  // NOLINT(build/namespaces): this file is the kernel the header serves
namespace {

// Tile t: 0 = 128x128 (8 warps of 64x32), 1 = 128x64 (4 warps of 64x32), 2 = 64x128 (4 warps of
// 32x64), 3 = 64x64 (4 warps of 32x32), 4 = 128x128 (4 warps of 64x64: 8 ldmatrix per 32 MMAs
// instead of 6 per 16, for large GEMMs); 5.. are the wgmma tiles (int8_convolution_sm90a.cu).
void launch_mma(const DeviceParams& d, int tile, DataType rounding, bool int8_out, cudaStream_t stream) {
  switch (tile) {
    case 0:
      return launch_mma_tile<128, 128, 64, 32>(d, rounding, int8_out, stream);
    case 1:
      return launch_mma_tile<128, 64, 64, 32>(d, rounding, int8_out, stream);
    case 2:
      return launch_mma_tile<64, 128, 32, 64>(d, rounding, int8_out, stream);
    case 3:
      return launch_mma_tile<64, 64, 32, 32>(d, rounding, int8_out, stream);
    default:
      return launch_mma_tile<128, 128, 64, 64>(d, rounding, int8_out, stream);
  }
}

// Without a timed tactic: the largest tile that still gives every SM of a large GPU about two
// blocks (132 SMs on an H100/H200), else the smallest.
int pick_tile(int64_t m, int k) {
  auto blocks = [&](int bm, int bn) { return ((m + bm - 1) / bm) * ((k + bn - 1) / bn); };
  if (blocks(128, 128) >= 264) return 0;
  if (blocks(128, 64) >= 264) return 1;
  if (blocks(64, 128) >= 264) return 2;
  return 3;
}

}  // namespace

std::string int8_convolution_refusal(const Int8ConvParams& p) {
  std::ostringstream why;
  if (p.c % 16 != 0) {
    why << "needs input channels that are a multiple of 16 (got " << p.c << ")";
  } else if (p.k % 2 != 0) {
    why << "needs an even number of output channels (got " << p.k << ")";
  } else if (static_cast<int64_t>(p.n) * p.h * p.w * p.c >= (int64_t{1} << 31) ||
             static_cast<int64_t>(p.k) * p.r * p.s * p.c >= (int64_t{1} << 31)) {
    why << "needs fewer than 2^31 input and weight elements";
  }
  return why.str();
}

std::string int8_tile_refusal(int tile) {
  if (tile < kInt8ConvMmaTiles) return {};
  std::ostringstream why;
  why << "tile " << tile << " runs Hopper's warpgroup MMA (wgmma)";
  if (!int8_wgmma_compiled()) {
    why << ", which this build does not hold (it is compiled for sm_90a when KILN_CUDA_ARCHS holds 90)";
    return why.str();
  }
  int device = 0, major = 0, minor = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&device));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major != 9 || minor != 0) {
    why << " and needs an sm_90 GPU (H100, H200); device " << device << " is sm_" << major << minor;
    return why.str();
  }
  return {};
}

void launch_int8_convolution(const Int8ConvParams& p, int tile, DataType out, const void* x,
                             const void* weight, const float* scale_bias, const void* residual, void* y,
                             void* y8, cudaStream_t stream) {
  DeviceParams d;  // the caller checked int8_convolution_refusal(p)
  d.g = p;
  d.m = static_cast<int64_t>(p.n) * p.p * p.q;
  d.gemm_k = p.r * p.s * p.c;
  d.pointwise = p.r == 1 && p.s == 1 && p.pad_h == 0 && p.pad_w == 0;
  d.dense = d.pointwise && p.stride_h == 1 && p.stride_w == 1 && p.p == p.h && p.q == p.w;
  const auto aligned = [](const void* ptr, size_t bytes) {
    return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
  };
  const size_t y_size = out == DataType::kInt8 ? 1 : dtype_size(out);
  const size_t r_size = p.residual_scale > 0.f ? 1 : dtype_size(out == DataType::kInt8 ? p.rounding : out);
  d.vec8 = p.k % 8 == 0 && aligned(y, 8 * y_size) && (!residual || aligned(residual, 8 * r_size)) &&
           (!y8 || aligned(y8, 8)) && aligned(scale_bias, 32);
  d.x = static_cast<const int8_t*>(x);
  d.w = static_cast<const int8_t*>(weight);
  d.alpha = scale_bias;
  d.bias = scale_bias + p.k;
  d.residual = residual;
  d.r_size = static_cast<int>(r_size);
  d.y = y;
  d.y8 = static_cast<int8_t*>(y8);
  KILN_CHECK(!y8 || out != DataType::kInt8, "INT8 convolution: an int8 copy needs a float y");
  if (d.m == 0 || p.k == 0) return;
  KILN_CHECK(d.m < (int64_t{1} << 31),
             "INT8 convolution: " << d.m << " output pixels are too many (2^31 at most)");
  if (tile < 0) tile = pick_tile(d.m, p.k);
  KILN_CHECK(tile < kInt8ConvTiles, "INT8 convolution: tile " << tile << " is out of range");
  const bool int8_out = out == DataType::kInt8;
  const DataType rounding = int8_out ? p.rounding : out;
  if (tile >= kInt8ConvMmaTiles)
    return launch_int8_wgmma(d, tile - kInt8ConvMmaTiles, rounding, int8_out, stream);
  launch_mma(d, tile, rounding, int8_out, stream);
}

namespace {

// What a quantized layer's attributes say about its epilogue, shared by the convolution and the
// fully_connected: activation, requantization, the int8 copy, and the tactic.
struct Int8Epilogue {
  std::string who;
  DataType out = DataType::kFloat32;  // out_dtype
  int tactic = -1;
  ActivationParams act{};
  bool activate = false;
  bool requantize = false;  // y int8 (output_inv_scale)
  bool int8_copy = false;   // y float and its int8 copy (output 1)
  float out_inv_scale = 1.f;
  int out_min = -128, out_max = 127;
  float residual_scale = 0.f;  // > 0: an int8 residual (residual_scale attribute)
  std::string tile_refusal;    // why the tactic cannot run on this kernel's device, or empty

  // `tactics`: how many the layer's kernel has (the tiles, then any cuDNN graph tactics).
  Int8Epilogue(const Layer& l, const ConvEpilogue& e, int tactics)
      : who(describe(l)),
        out(parse_dtype(l.attrs.get_string("out_dtype", who))),
        tactic(static_cast<int>(l.attrs.get_int("tactic", int64_t{-1}))) {
    KILN_CHECK(tactic >= -1 && tactic < tactics,
               who << ": tactic " << tactic << " is out of range (-1 or 0.." << tactics - 1 << ")");
    if (e.activation != "none") {
      act.type = variant_code(activation_types(), e.activation);
      act.alpha = static_cast<float>(e.alpha);
      act.beta = static_cast<float>(e.beta);
      act.threshold = static_cast<float>(e.threshold);
    }
    activate = e.activation != "none";
    requantize = l.attrs.has("output_inv_scale");
    int8_copy = l.attrs.get_int("int8_copy", int64_t{0}) != 0;
    out_inv_scale = static_cast<float>(l.attrs.get_float("output_inv_scale", 1.0));
    out_min = static_cast<int>(l.attrs.get_int("output_quant_min", int64_t{-128}));
    out_max = static_cast<int>(l.attrs.get_int("output_quant_max", int64_t{127}));
    residual_scale = static_cast<float>(l.attrs.get_float("residual_scale", 0.0));
    if (tactic < kInt8ConvTiles) tile_refusal = int8_tile_refusal(tactic);
  }

  // Fills p's epilogue fields, checks the kernel takes p (naming the layer and `shapes`), launches.
  void launch(Int8ConvParams& p, const std::string& shapes, const void* x, const void* w,
              const void* scale_bias, const void* residual, const std::vector<TensorView>& outputs,
              void* stream) const {
    p.act = act;
    p.activate = activate;
    p.rounding = out;
    p.residual_scale = residual_scale;
    if (requantize) {
      p.out_inv_scale = out_inv_scale;
      p.out_min = out_min;
      p.out_max = out_max;
    }
    KILN_CHECK(tile_refusal.empty(), who << ": INT8 tactic " << tile_refusal
                                         << "; rebuild the plan on this GPU (its tactics are timed there)");
    const std::string refusal = int8_convolution_refusal(p);
    KILN_CHECK(refusal.empty(), who << ": the CUDA INT8 kernel " << refusal << "; got " << shapes);
    launch_int8_convolution(p, tactic, requantize && !int8_copy ? DataType::kInt8 : out, x, w,
                            static_cast<const float*>(scale_bias), residual, outputs[0].data,
                            int8_copy ? outputs[1].data : nullptr, static_cast<cudaStream_t>(stream));
  }
};

// Tactics kInt8ConvTiles.. of a quantized convolution: cuDNN's graph API (cudnn_graph_convolution.h)
// with an INT8 graph, int32 sums scaled per channel, the bias, the residual and a relu in cuDNN's
// fused epilogue. Unlike the tiles' epilogue, an int8 y is requantized from the float32 value, not
// from it rounded to the layer's float type first: a value that rounding would carry over a
// rounding step lands one step from the tiles' (rare, and no further from the real value).
constexpr int kInt8GraphTactic = kInt8ConvTiles;
constexpr int kInt8ConvTactics = kInt8GraphTactic + kCudnnGraphConfigs;

class Int8Convolution final : public Kernel {
 public:
  explicit Int8Convolution(Layer layer)
      : layer_(std::move(layer)), e_(layer_, conv_epilogue(layer_, layer_.inputs.size()), kInt8ConvTactics) {
    KILN_CHECK(channels_last(layer_),
               e_.who << ": the CUDA INT8 convolution runs channels last (layout nhwc)");
  }

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView &x = in[0], &w = in[1], &y = out[0];
    KILN_CHECK(x.dims.size() == 4,
               e_.who << ": the CUDA INT8 convolution is 2d, got input " << to_string(x.dims));
    const ConvGeometry g = conv_geometry(layer_, 2);
    KILN_CHECK(g.groups == 1, e_.who << ": the CUDA INT8 convolution needs groups = 1, got " << g.groups);
    const int residual = conv_epilogue(layer_, in.size()).residual_input;
    const TensorView* r = residual >= 0 ? &in[static_cast<size_t>(residual)] : nullptr;
    if (graph()) return run_graph(in, out, r, g, ctx);
    Int8ConvParams p;  // channels last: x [N, H, W, C], weight [K, R, S, C], y [N, P, Q, K]
    p.n = static_cast<int>(x.dims[0]);
    p.h = static_cast<int>(x.dims[1]);
    p.w = static_cast<int>(x.dims[2]);
    p.c = static_cast<int>(x.dims[3]);
    p.k = static_cast<int>(w.dims[0]);
    p.r = static_cast<int>(w.dims[1]);
    p.s = static_cast<int>(w.dims[2]);
    p.p = static_cast<int>(y.dims[1]);
    p.q = static_cast<int>(y.dims[2]);
    static_cast<ConvWindow2d&>(p) = conv_window_2d(g);
    e_.launch(p, "input " + to_string(x.dims) + " (nhwc), weight " + to_string(w.dims), x.data, w.data,
              in[2].data, r ? r->data : nullptr, out, ctx.stream);
  }

  std::string name() const override {
    return graph() ? "cudnn_graph_int8_convolution" : "cuda_int8_convolution";
  }
  // The graph tactics are timed unless KILN_CUDNN_GRAPH=0 (checked against the reference on an
  // H100, and the builder checks every tactic's values against the first's). A plan that chose
  // one runs it whatever the environment says.
  int num_tactics() const override {
    return cudnn_graph_tactics(/*by_default=*/true) ? kInt8ConvTactics : kInt8ConvTiles;
  }
  bool uses_cudnn() const override { return graph(); }

 private:
  bool graph() const { return e_.tactic >= kInt8GraphTactic; }

  // A graph tactic: what cuDNN's INT8 graph cannot express is refused (the builder then skips the
  // tactic), the plan for x's shape is built once.
  void run_graph(const std::vector<TensorView>& in, const std::vector<TensorView>& out, const TensorView* r,
                 const ConvGeometry& g, const LaunchContext& ctx) const {
    const TensorView &x = in[0], &w = in[1], &y = out[0];
    const std::string tactic = e_.who + ": tactic " + std::to_string(e_.tactic) + " (cuDNN's INT8 graph) ";
    KILN_CHECK(!e_.int8_copy, tactic << "writes one output; this layer also writes an int8 copy");
    KILN_CHECK(!e_.activate || e_.act.type == kRelu,
               tactic << "fuses a relu at most; this layer's activation is another");
    // cuDNN saturates an int8 y to [-128, 127]; after a relu nothing is negative, so a layer
    // range of [-127, 127] (symmetric quantization) is the same there.
    const bool non_negative = e_.activate && e_.act.type == kRelu && e_.out_min <= 0;
    KILN_CHECK(!e_.requantize || (e_.out_max == 127 && (e_.out_min == -128 || non_negative)),
               tactic << "saturates an int8 y to [-128, 127]; this layer's range is [" << e_.out_min << ", "
                      << e_.out_max << "]" << (e_.activate ? "" : " and it has no relu"));
    const int64_t k = w.dims[0];
    KILN_CHECK(k % 4 == 0, tactic << "needs output channels that are a multiple of 4 (its bias row aligned)");
    const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    KILN_CHECK(aligned(x.data) && aligned(w.data) && aligned(y.data) && aligned(in[2].data) &&
                   (!r || aligned(r->data)) && (ctx.workspace == nullptr || aligned(ctx.workspace)),
               tactic << "needs 16-byte aligned buffers");
    auto handle = static_cast<cudnnHandle_t>(ctx.cudnn);
    KILN_CHECK(handle != nullptr, e_.who << ": no cuDNN handle in the launch context");
    KILN_CUDNN_CHECK(cudnnSetStream(handle, static_cast<cudaStream_t>(ctx.stream)));
    const CudnnGraphConvolution& plan = graph_plan(handle, x, w, y, r, g, ctx.workspace_bytes);
    const float* scale_bias = static_cast<const float*>(in[2].data);
    plan.run(handle, x.data, w.data, y.data, ctx.workspace, scale_bias + k, scale_bias,
             r ? r->data : nullptr);
  }

  const CudnnGraphConvolution& graph_plan(cudnnHandle_t handle, const TensorView& x, const TensorView& w,
                                          const TensorView& y, const TensorView* r, const ConvGeometry& g,
                                          size_t workspace_bytes) const {
    return *plans_.get(x.dims, workspace_bytes, 0, [&] {
      GraphConvShape s;
      s.dtype = DataType::kInt8;
      s.x = channels_first_dims(x.dims);
      s.w = channels_first_dims(w.dims);
      s.y = channels_first_dims(y.dims);
      s.channels_last = true;
      s.geometry = g;
      s.relu = e_.activate;
      s.y_dtype = y.dtype;
      s.out_scale = e_.out_inv_scale;
      s.residual = r != nullptr;
      if (r) {
        s.residual_dtype = r->dtype;
        s.residual_scale = e_.residual_scale;
      }
      return std::make_unique<CudnnGraphConvolution>(handle, s, e_.tactic - kInt8GraphTactic, workspace_bytes,
                                                     e_.who);
    });
  }

  Layer layer_;
  Int8Epilogue e_;
  ShapeCache<CudnnGraphConvolution> plans_;  // the graph tactic's plan per input shape
};

// y [..., N] = epilogue(x [..., K] @ weight [N, K]^T): a 1x1 convolution of one image, one row of
// `rows` pixels.
class Int8FullyConnected final : public Kernel {
 public:
  explicit Int8FullyConnected(const Layer& l)
      : e_(l, epilogue(l), kInt8ConvTiles), residual_(l.attrs.get_int("residual", int64_t{0}) != 0) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView &x = in[0], &w = in[1];
    const int64_t k = x.dims.empty() ? 0 : x.dims.back();
    const int64_t rows = k ? volume(x.dims) / k : 0;
    KILN_CHECK(rows < (int64_t{1} << 31),
               e_.who << ": the CUDA INT8 kernel takes fewer than 2^31 rows, got " << rows);
    Int8ConvParams p;
    p.n = p.h = p.r = p.s = p.p = 1;
    p.w = p.q = static_cast<int>(rows);
    p.c = static_cast<int>(k);
    p.k = static_cast<int>(w.dims[0]);
    p.residual_after_activation = true;
    e_.launch(p, "x " + to_string(x.dims) + ", weight " + to_string(w.dims), x.data, w.data, in[2].data,
              residual_ ? in.back().data : nullptr, out, ctx.stream);
  }

  std::string name() const override { return "cuda_int8_fully_connected"; }
  int num_tactics() const override { return kInt8ConvTiles; }

 private:
  // The activation attributes as the convolution's epilogue holds them.
  static ConvEpilogue epilogue(const Layer& l) {
    ConvEpilogue e;
    e.activation = l.attrs.has("activation") ? l.attrs.get_string("activation", l.name) : "none";
    if (e.activation != "none") {
      const ActivationAttrs a = activation_attrs(e.activation, l.attrs);
      e.alpha = a.alpha;
      e.beta = a.beta;
      e.threshold = a.threshold;
    }
    return e;
  }
  Int8Epilogue e_;
  bool residual_;
};

}  // namespace

std::unique_ptr<Kernel> make_int8_convolution(const Layer& layer) {
  return std::make_unique<Int8Convolution>(layer);
}

std::unique_ptr<Kernel> make_int8_fully_connected(const Layer& layer) {
  return std::make_unique<Int8FullyConnected>(layer);
}

}  // namespace kiln
