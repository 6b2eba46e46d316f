// cuDNN graph (backend) API convolution: see cudnn_graph_convolution.h. The descriptors are built
// once per shape and tactic (CudnnConvolution caches them); a run builds only the variant pack (the
// data pointers) and executes the plan.
#include "kernels/cuda/cudnn_graph_convolution.h"

#include <cstdlib>
#include <cstring>
#include <deque>
#include <sstream>
#include <utility>
#include <vector>

#include "ir/error.h"
#include "kernels/cuda/cudnn_util.h"

namespace kiln {
namespace {

// Unique ids of the graph's tensors (the variant pack names them so).
constexpr int64_t kX = 'x', kW = 'w', kY = 'y', kB = 'b', kS = 's', kR = 'r', kConvOut = 'c';
// By-value scalars, the dequantized residual, then the epilogue's virtual tensors (uids on from kEpilogue).
constexpr int64_t kResidualScale = 'k', kOutScale = 'o', kDequantized = 'd', kEpilogue = 1000;
constexpr int64_t kAlignment = 16;  // bytes: Kiln's buffers and arena offsets are aligned to more

std::string last_error() {
  char message[512] = {0};
  cudnnGetLastErrorString(message, sizeof(message));
  return message[0] ? std::string(" (") + message + ")" : std::string();
}

// A backend descriptor, destroyed with its owner.
class Desc {
 public:
  Desc() = default;
  Desc(cudnnBackendDescriptorType_t type, const std::string& who) {
    const cudnnStatus_t st = cudnnBackendCreateDescriptor(type, &d_);
    KILN_CHECK(st == CUDNN_STATUS_SUCCESS, who << ": cuDNN could not create a backend descriptor of type "
                                               << static_cast<int>(type) << ": " << cudnnGetErrorString(st));
  }
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(Desc&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Desc& operator=(Desc&& o) noexcept {
    std::swap(d_, o.d_);
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  cudnnBackendDescriptor_t get() const { return d_; }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

// Sets an attribute; a refusal names the attribute and cuDNN's reason.
void set(const Desc& d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
         const void* values, const std::string& who) {
  const cudnnStatus_t st = cudnnBackendSetAttribute(d.get(), name, type, count, values);
  KILN_CHECK(st == CUDNN_STATUS_SUCCESS, who << ": cuDNN refused backend attribute " << static_cast<int>(name)
                                             << ": " << cudnnGetErrorString(st) << last_error());
}

void set_desc(const Desc& d, cudnnBackendAttributeName_t name, const Desc& value, const std::string& who) {
  cudnnBackendDescriptor_t v = value.get();
  set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v, who);
}

void set_ints(const Desc& d, cudnnBackendAttributeName_t name, const std::vector<int64_t>& v,
              const std::string& who) {
  set(d, name, CUDNN_TYPE_INT64, static_cast<int64_t>(v.size()), v.data(), who);
}

void finalize(const Desc& d, const char* what, const std::string& who) {
  const cudnnStatus_t st = cudnnBackendFinalize(d.get());
  KILN_CHECK(st == CUDNN_STATUS_SUCCESS,
             who << ": cuDNN refused the " << what << ": " << cudnnGetErrorString(st) << last_error());
}

// Strides of `dims` ([N, C, spatial...]) laid out channels first, or channels last (C innermost,
// then the spatial dims in order, N outermost).
std::vector<int64_t> strides_of(const std::vector<int64_t>& dims, bool channels_last) {
  const size_t n = dims.size();
  std::vector<int64_t> s(n, 1);
  if (!channels_last) {
    for (size_t i = n - 1; i-- > 0;) s[i] = s[i + 1] * dims[i + 1];
    return s;
  }
  s[1] = 1;
  int64_t step = dims[1];
  for (size_t i = n - 1; i >= 2; --i) {
    s[i] = step;
    step *= dims[i];
  }
  s[0] = step;
  return s;
}

// 1d convolutions run as 2d with a height of 1, as on the legacy path (cudnn_dims, cudnn_spatial).
std::vector<int64_t> widened(const Dims& d, const std::string& who) {
  const std::vector<int> r = cudnn_dims(d, who);
  return {r.begin(), r.end()};
}

std::vector<int64_t> widened_spatial(const std::vector<int64_t>& v, int fill) {
  const std::vector<int> r = cudnn_spatial(v, fill);
  return {r.begin(), r.end()};
}

// A tensor of the graph; a virtual one lives only inside the fused kernel (float32 there).
Desc tensor(int64_t uid, cudnnDataType_t type, const std::vector<int64_t>& dims, bool channels_last,
            const std::string& who, bool is_virtual = false) {
  Desc t(CUDNN_BACKEND_TENSOR_DESCRIPTOR, who);
  set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, who);
  set_ints(t, CUDNN_ATTR_TENSOR_DIMENSIONS, dims, who);
  set_ints(t, CUDNN_ATTR_TENSOR_STRIDES, strides_of(dims, channels_last), who);
  set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, who);
  set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &kAlignment, who);
  if (is_virtual) {
    const bool yes = true;
    set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &yes, who);
  }
  finalize(t, "tensor descriptor", who);
  return t;
}

// A pointwise operation of the graph: y = mode(x) or mode(x, b), in float32; NaN propagates.
Desc pointwise(Desc& mode_desc, cudnnPointwiseMode_t mode, const Desc& x, const Desc* b, const Desc& y,
               const std::string& who) {
  mode_desc = Desc(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, who);
  const cudnnDataType_t precision = CUDNN_DATA_FLOAT;
  const cudnnNanPropagation_t nan = CUDNN_PROPAGATE_NAN;
  set(mode_desc, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, who);
  set(mode_desc, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &precision, who);
  set(mode_desc, CUDNN_ATTR_POINTWISE_NAN_PROPAGATION, CUDNN_TYPE_NAN_PROPOGATION, 1, &nan, who);
  finalize(mode_desc, "pointwise descriptor", who);
  Desc op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, who);
  set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, mode_desc, who);
  set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, who);
  if (b) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b, who);
  set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, who);
  finalize(op, "pointwise operation", who);
  return op;
}

// The notes an engine carries (numerical or behavior), as ints.
template <typename Note>
std::vector<int> notes_of(const Desc& engine, cudnnBackendAttributeName_t name,
                          cudnnBackendAttributeType_t type, int count) {
  std::vector<Note> notes(static_cast<size_t>(count));
  int64_t returned = 0;
  if (cudnnBackendGetAttribute(engine.get(), name, type, count, &returned, notes.data()) !=
      CUDNN_STATUS_SUCCESS)
    return {};
  std::vector<int> out;
  for (int64_t i = 0; i < returned; ++i) out.push_back(static_cast<int>(notes[static_cast<size_t>(i)]));
  return out;
}

bool has(const std::vector<int>& notes, int note) {
  for (int n : notes)
    if (n == note) return true;
  return false;
}

}  // namespace

bool cudnn_graph_tactics(bool by_default) {
  const char* v = std::getenv("KILN_CUDNN_GRAPH");
  if (v && std::strcmp(v, "1") == 0) return true;
  if (v && std::strcmp(v, "0") == 0) return false;
  return by_default;
}

struct CudnnGraphConvolution::Impl {
  Desc x, w, y, conv, op, graph;
  std::deque<Desc> parts;  // the epilogue's tensors, modes and operations (a deque: references stay)
  std::vector<cudnnBackendDescriptor_t> ops;
  bool fused = false;  // a bias in the graph
  bool int8 = false;   // an INT8 graph: also a scale, maybe a residual
  bool residual = false;
  // By-value scalars (the variant pack points here): an int8 residual's and an int8 y's scale.
  bool residual_scalar = false, out_scalar = false;
  float residual_scale = 1.f, out_scale = 1.f;
  std::vector<Desc> configs;  // the heuristics' engine configurations (the plan's stays alive)
  Desc plan;
  size_t workspace = 0;
  int64_t engine = -1;
  std::string who;

  // Appends y = mode(x) or mode(x, b) to the graph; y is a new float32 virtual tensor (`uid`) unless
  // `out` names the graph's output.
  const Desc& pointwise_op(cudnnPointwiseMode_t mode, const Desc& in, const Desc* b, int64_t uid,
                           const std::vector<int64_t>& dims, bool channels_last, const Desc* out) {
    const Desc* y = out;
    if (!y) {
      parts.push_back(tensor(uid, CUDNN_DATA_FLOAT, dims, channels_last, who, /*is_virtual=*/true));
      y = &parts.back();
    }
    Desc mode_desc;
    Desc op = pointwise(mode_desc, mode, in, b, *y, who);
    parts.push_back(std::move(mode_desc));
    parts.push_back(std::move(op));
    ops.push_back(parts.back().get());
    return *y;
  }
};

namespace {

// A float32 scalar passed by value in the variant pack (a dequantization or requantization scale).
Desc scalar(int64_t uid, int dims, const std::string& who) {
  Desc t(CUDNN_BACKEND_TENSOR_DESCRIPTOR, who);
  const cudnnDataType_t type = CUDNN_DATA_FLOAT;
  const std::vector<int64_t> ones(static_cast<size_t>(dims), 1);
  const bool yes = true;
  set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, who);
  set_ints(t, CUDNN_ATTR_TENSOR_DIMENSIONS, ones, who);
  set_ints(t, CUDNN_ATTR_TENSOR_STRIDES, ones, who);
  set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, who);
  set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &kAlignment, who);
  set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes, who);
  finalize(t, "scalar tensor descriptor", who);
  return t;
}

cudnnDataType_t int8_graph_type(DataType t, const std::string& who) {
  return t == DataType::kInt8 ? CUDNN_DATA_INT8 : cudnn_type(t, who);
}

}  // namespace

CudnnGraphConvolution::CudnnGraphConvolution(cudnnHandle_t handle, const GraphConvShape& s, int config,
                                             size_t workspace_limit, const std::string& who)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.who = who + " (cuDNN graph tactic " + std::to_string(config) + ")";
  const std::string& id = m.who;
  KILN_CHECK(config >= 0 && config < kCudnnGraphConfigs, id << ": no such engine configuration");
  m.int8 = s.dtype == DataType::kInt8;
  const cudnnDataType_t type = m.int8 ? CUDNN_DATA_INT8 : cudnn_type(s.dtype, id);
  const std::vector<int64_t> ydims = widened(s.y, id);
  m.x = tensor(kX, type, widened(s.x, id), s.channels_last, id);
  m.w = tensor(kW, type, widened(s.w, id), s.channels_last, id);
  m.y = tensor(kY, m.int8 ? int8_graph_type(s.y_dtype, id) : type, ydims, s.channels_last, id);
  m.fused = s.bias || m.int8;
  KILN_CHECK(s.bias || !s.relu || m.int8, id << ": a fused relu needs the fused bias before it");
  std::vector<int64_t> channel_dims(ydims.size(), 1);
  channel_dims[1] = s.y[1];
  Desc conv_out;
  if (m.fused)
    conv_out = tensor(kConvOut, m.int8 ? CUDNN_DATA_INT32 : CUDNN_DATA_FLOAT, ydims, s.channels_last, id,
                      /*is_virtual=*/true);

  const ConvGeometry& g = s.geometry;
  m.conv = Desc(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, id);
  // FP32 accumulation for every floating dtype, int32 for int8.
  const cudnnDataType_t compute = m.int8 ? CUDNN_DATA_INT32 : CUDNN_DATA_FLOAT;
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  const std::vector<int64_t> pads = widened_spatial(g.pads, 0);
  const int64_t spatial = static_cast<int64_t>(pads.size());
  set(m.conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute, id);
  set(m.conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode, id);
  set(m.conv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial, id);
  set_ints(m.conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, widened_spatial(g.dilations, 1), id);
  set_ints(m.conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, widened_spatial(g.strides, 1), id);
  set_ints(m.conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, pads, id);
  set_ints(m.conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, pads, id);
  finalize(m.conv, "convolution descriptor", id);

  m.op = Desc(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, id);
  const float alpha = 1.f, beta = 0.f;
  set_desc(m.op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, m.x, id);
  set_desc(m.op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, m.w, id);
  set_desc(m.op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, m.fused ? conv_out : m.y, id);
  set_desc(m.op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, m.conv, id);
  set(m.op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha, id);
  set(m.op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta, id);
  finalize(m.op, "convolution operation", id);
  m.ops.push_back(m.op.get());

  if (m.fused) {
    // The epilogue as a chain of pointwise operations, the last writing y.
    m.parts.push_back(std::move(conv_out));
    const Desc* v = &m.parts.back();
    std::vector<const Desc*> steps;  // the chain's second operands, in order, with their modes
    std::vector<cudnnPointwiseMode_t> modes;
    const cudnnDataType_t bias_type = m.int8 ? CUDNN_DATA_FLOAT : type;
    if (m.int8) {
      m.parts.push_back(tensor(kS, CUDNN_DATA_FLOAT, channel_dims, s.channels_last, id));
      steps.push_back(&m.parts.back());
      modes.push_back(CUDNN_POINTWISE_MUL);
    }
    m.parts.push_back(tensor(kB, bias_type, channel_dims, s.channels_last, id));
    steps.push_back(&m.parts.back());
    modes.push_back(CUDNN_POINTWISE_ADD);
    const Desc* residual = nullptr;
    if (m.int8 && s.residual) {
      m.residual = true;
      m.residual_scale = s.residual_scale;
      m.parts.push_back(tensor(kR, int8_graph_type(s.residual_dtype, id), ydims, s.channels_last, id));
      residual = &m.parts.back();
      if (s.residual_dtype == DataType::kInt8) {  // dequantized first: residual * residual_scale
        m.residual_scalar = true;
        m.parts.push_back(scalar(kResidualScale, static_cast<int>(ydims.size()), id));
        residual = &m.pointwise_op(CUDNN_POINTWISE_MUL, *residual, &m.parts.back(), kDequantized, ydims,
                                   s.channels_last, nullptr);
      }
      steps.push_back(residual);
      modes.push_back(CUDNN_POINTWISE_ADD);
    }
    const bool requantize = m.int8 && s.y_dtype == DataType::kInt8;
    const size_t last = steps.size() + (s.relu ? 1 : 0) + (requantize ? 1 : 0);
    size_t done = 0;
    int64_t uid = kEpilogue;
    for (size_t i = 0; i < steps.size(); ++i)
      v = &m.pointwise_op(modes[i], *v, steps[i], uid++, ydims, s.channels_last,
                          ++done == last ? &m.y : nullptr);
    if (s.relu)
      v = &m.pointwise_op(CUDNN_POINTWISE_RELU_FWD, *v, nullptr, uid++, ydims, s.channels_last,
                          ++done == last ? &m.y : nullptr);
    if (requantize) {
      m.out_scalar = true;
      m.out_scale = s.out_scale;
      m.parts.push_back(scalar(kOutScale, static_cast<int>(ydims.size()), id));
      m.pointwise_op(CUDNN_POINTWISE_MUL, *v, &m.parts.back(), uid++, ydims, s.channels_last, &m.y);
    }
  }
  m.graph = Desc(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, id);
  set(m.graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
      static_cast<int64_t>(m.ops.size()), m.ops.data(), id);
  set(m.graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, id);
  finalize(m.graph, "operation graph", id);

  // The heuristics' engine configurations, mode A first, then the fallback list.
  for (cudnnBackendHeurMode_t heur_mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, id);
    set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, m.graph, id);
    set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &heur_mode, id);
    if (cudnnBackendFinalize(heur.get()) != CUDNN_STATUS_SUCCESS) continue;
    int64_t count = 0;
    if (cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                 &count, nullptr) != CUDNN_STATUS_SUCCESS ||
        count <= 0)
      continue;
    std::vector<Desc> found;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < count; ++i) {
      found.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, id);
      raw.push_back(found.back().get());
    }
    int64_t returned = 0;
    if (cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 count, &returned, raw.data()) != CUDNN_STATUS_SUCCESS)
      continue;
    for (int64_t i = 0; i < returned && i < count; ++i)
      m.configs.push_back(std::move(found[static_cast<size_t>(i)]));
  }

  // The usable ones in that order: no runtime compilation (builds stay fast) unless the graph is
  // fused (cuDNN fuses only that way), no reduced-precision reduction, float32 strict unless TF32
  // is allowed. Only the `config`-th is finalized (a fused engine compiles its kernel then, most of
  // a second: finalizing the ones before it too made an INT8 ResNet-50 build take a minute); it is
  // refused when cuDNN cannot finalize it or its workspace is over the limit.
  const bool strict = s.dtype == DataType::kFloat32 && !s.allow_tf32;
  int usable = 0;
  for (const Desc& cfg : m.configs) {
    Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR, id);
    cudnnBackendDescriptor_t e = engine.get();
    int64_t got = 0;
    if (cudnnBackendGetAttribute(cfg.get(), CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                 &got, &e) != CUDNN_STATUS_SUCCESS)
      continue;
    const std::vector<int> behavior = notes_of<cudnnBackendBehaviorNote_t>(
        engine, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE, CUDNN_BEHAVIOR_NOTE_TYPE_COUNT);
    const std::vector<int> numerics = notes_of<cudnnBackendNumericalNote_t>(
        engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE, CUDNN_NUMERICAL_NOTE_TYPE_COUNT);
    if (!m.fused && has(behavior, CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION)) continue;
    // Every dtype accumulates in FP32 (the legacy path's promise): no reduction in a lower precision.
    if (has(numerics, CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION)) continue;
    if (strict && (has(numerics, CUDNN_NUMERICAL_NOTE_TENSOR_CORE) ||
                   has(numerics, CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS)))
      continue;
    if (usable++ < config) continue;
    Desc plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, id);
    cudnnBackendDescriptor_t c = cfg.get();
    const bool finalized =
        cudnnBackendSetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1,
                                 &handle) == CUDNN_STATUS_SUCCESS &&
        cudnnBackendSetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c) == CUDNN_STATUS_SUCCESS &&
        cudnnBackendFinalize(plan.get()) == CUDNN_STATUS_SUCCESS;
    KILN_CHECK(finalized, id << ": cuDNN cannot make a plan of this engine configuration" << last_error()
                             << "; take another tactic");
    int64_t bytes = 0;
    KILN_CHECK(cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                        CUDNN_TYPE_INT64, 1, &got, &bytes) == CUDNN_STATUS_SUCCESS &&
                   bytes >= 0 && static_cast<size_t>(bytes) <= workspace_limit,
               id << ": the engine configuration needs a workspace of " << bytes
                  << " bytes, over the limit of " << workspace_limit << "; take another tactic");
    m.plan = std::move(plan);
    m.workspace = static_cast<size_t>(bytes);
    if (cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &got,
                                 &m.engine) != CUDNN_STATUS_SUCCESS)
      m.engine = -1;
    return;
  }
  KILN_FAIL(
      id << ": cuDNN's heuristics offer " << usable << " usable engine configuration(s) for "
         << dtype_name(s.dtype) << " input " << to_string(s.x) << ", weight " << to_string(s.w)
         << (s.channels_last ? " (channels last)" : "")
         << (m.int8 ? std::string(" to ") + dtype_name(s.y_dtype) + (s.residual ? " with a residual" : "")
                    : std::string())
         << (m.fused ? (s.relu ? " with bias and relu" : " with bias") : "") << "; take another tactic");
}

CudnnGraphConvolution::~CudnnGraphConvolution() = default;

size_t CudnnGraphConvolution::workspace_bytes() const { return impl_->workspace; }

int64_t CudnnGraphConvolution::engine_index() const { return impl_->engine; }

void CudnnGraphConvolution::run(cudnnHandle_t handle, const void* x, const void* w, void* y, void* workspace,
                                const void* bias, const void* scale, const void* residual) const {
  const Impl& m = *impl_;
  const std::string& id = m.who;
  KILN_CHECK(!m.fused || bias, id << ": the fused graph needs its bias");
  KILN_CHECK(!m.int8 || scale, id << ": the INT8 graph needs its per-channel scale");
  KILN_CHECK(!m.residual || residual, id << ": the graph needs its residual");
  Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, id);
  std::vector<void*> pointers = {const_cast<void*>(x), const_cast<void*>(w), y};
  std::vector<int64_t> uids = {kX, kW, kY};
  const auto add = [&](int64_t uid, const void* p) {
    uids.push_back(uid);
    pointers.push_back(const_cast<void*>(p));
  };
  if (m.fused) add(kB, bias);
  if (m.int8) add(kS, scale);
  if (m.residual) add(kR, residual);
  if (m.residual_scalar) add(kResidualScale, &m.residual_scale);
  if (m.out_scalar) add(kOutScale, &m.out_scale);
  const int64_t count = static_cast<int64_t>(uids.size());
  set(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, count, pointers.data(), id);
  set(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, count, uids.data(), id);
  set(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace, id);
  finalize(pack, "variant pack", id);
  const cudnnStatus_t st = cudnnBackendExecute(handle, m.plan.get(), pack.get());
  KILN_CHECK(st == CUDNN_STATUS_SUCCESS,
             id << ": cudnnBackendExecute failed: " << cudnnGetErrorString(st) << last_error());
}

}  // namespace kiln
