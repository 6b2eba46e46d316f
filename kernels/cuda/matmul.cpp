// matmul and fully_connected on cuBLASLt. Row-major C[M,N] = A[M,K] @ B[K,N] is computed as the column-major
// product C^T = B^T A^T, so B is cuBLASLt's first operand. Batches with a shared stride (or a broadcast
// operand, stride 0) go in one strided-batched call; other broadcast patterns loop per batch.
// Accumulation is FP32 for every dtype; float32 uses TF32 only when the layer allows it.
// Descriptors and the heuristic's algorithm are built once per problem (GemmPlanCache), so a
// steady-state call is a cache lookup and cublasLtMatmul. Tactics: the heuristic's ranked
// algorithms (Kernel::num_tactics; the layer's "tactic" attribute picks one, -1 the first).
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "ir/ops/activation.h"
#include "kernels/broadcast.h"
#include "kernels/cuda/cublaslt_relu.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/int8_convolution.h"
#include "kernels/cuda/matmul_epilogue.h"
#include "kernels/kernel.h"
#include "kernels/matmul_views.h"

namespace kiln {

// Whether cuBLASLt's RELU epilogue on `algo` may turn NaN into 0 (torch's relu keeps NaN). Two
// algorithms do when run without split-K: 20, a float32 kernel (an H200 probe, cuBLAS 13.0, tiny
// GEMMs 8x8x8 to 32x16x64), and 24, float16 and bfloat16 (an H100, 17..33 x 9 x 40/48). With
// split-K they apply the epilogue in the reduction pass, which keeps NaN, as every other algorithm
// did. tests/cpp/test_cublaslt_relu_nan.cpp runs every algorithm the heuristic offers on such
// shapes and fails naming any other culprit a future cuBLAS brings.
bool relu_epilogue_drops_nan(const cublasLtMatmulAlgo_t& algo) {
  int id = -1, split_k = 1;
  size_t written = 0;
  KILN_CUBLAS_CHECK(
      cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &written));
  KILN_CUBLAS_CHECK(cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split_k,
                                                         sizeof(split_k), &written));
  return (id == 20 || id == 24) && split_k <= 1;
}

namespace {

cudaDataType_t cuda_type(DataType t) {
  switch (t) {
    case DataType::kFloat32:
      return CUDA_R_32F;
    case DataType::kFloat16:
      return CUDA_R_16F;
    case DataType::kBFloat16:
      return CUDA_R_16BF;
    case DataType::kFloat8E4M3:
      return CUDA_R_8F_E4M3;
    default:
      KILN_FAIL("matmul: no cuBLASLt path for dtype " << dtype_name(t));
  }
}

// The largest power of two (up to 256) dividing the address, for cuBLASLt's alignment hints.
uint32_t alignment_of(const void* p) {
  auto v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

struct LtDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatrixLayout_t d = nullptr;  // D's, when its type is not C's (FP8 writing float8); else c
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescriptors() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

void set_batch(cublasLtMatrixLayout_t layout, int32_t count, int64_t stride) {
  KILN_CUBLAS_CHECK(
      cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                     &stride, sizeof(stride)));
}

// cuBLASLt epilogues the kernels use. cuBLASLt's GELU is the tanh approximation, so it serves
// gelu_tanh only, and only for 16-bit outputs where its rounding is below the output's; everything
// else goes through launch_fc_epilogue. One exception: an FP8 GEMM's exact (erf) GELU takes the
// tanh form too (the two differ by less than 5e-4 anywhere, far below the e4m3 rounding of the
// GEMM's inputs, and the separate epilogue pass cost as much as a fifth of the GEMM).
enum class LtEpilogue : int { kNone, kBias, kReluBias, kRelu, kGeluBias, kGelu };

cublasLtEpilogue_t lt_epilogue(LtEpilogue e) {
  switch (e) {
    case LtEpilogue::kBias:
      return CUBLASLT_EPILOGUE_BIAS;
    case LtEpilogue::kReluBias:
      return CUBLASLT_EPILOGUE_RELU_BIAS;
    case LtEpilogue::kRelu:
      return CUBLASLT_EPILOGUE_RELU;
    case LtEpilogue::kGeluBias:
      return CUBLASLT_EPILOGUE_GELU_BIAS;
    case LtEpilogue::kGelu:
      return CUBLASLT_EPILOGUE_GELU;
    default:
      return CUBLASLT_EPILOGUE_DEFAULT;
  }
}

bool has_bias(LtEpilogue e) {
  return e == LtEpilogue::kBias || e == LtEpilogue::kReluBias || e == LtEpilogue::kGeluBias;
}

bool is_relu(LtEpilogue e) { return e == LtEpilogue::kRelu || e == LtEpilogue::kReluBias; }

// One cuBLASLt GEMM (optionally strided-batched): row-major C[M,N] = op(A)[M,K] @ op(B)[K,N]
// (+ bias[N] broadcast over rows and an activation through the epilogue; + a residual R[M,N]
// through beta = 1). Everything that selects descriptors or the algorithm is in the key, so a
// cached plan is valid for every call with an equal Gemm.
struct Gemm {
  int64_t m = 0, n = 0, k = 0;
  bool ta = false, tb = false;
  DataType dtype = DataType::kFloat32;     // C's (and bias's)
  DataType in_dtype = DataType::kFloat32;  // A's and B's: dtype, or float8_e4m3fn (FP8)
  float alpha = 1.f;                       // FP8: input_scale * weight_scale
  const float* d_scale = nullptr;          // FP8 writing float8: device scalar D is multiplied by
  bool tf32 = false;
  int64_t ld_a = 0, ld_b = 0;  // row strides of A's and B's stored rows (elements); 0: dense
  int64_t batches = 1;         // > 1: one strided-batched call
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  // elements; 0 broadcasts an operand
  uint32_t align_a = 256, align_b = 256, align_c = 256, align_r = 256;
  LtEpilogue epilogue = LtEpilogue::kNone;
  const void* bias = nullptr;  // a weight: its address is fixed for the engine's lifetime
  bool residual = false;       // beta = 1 with C = the residual
  int tactic = -1;             // index into the heuristic's ranked algorithms; -1 = its first
  uint64_t workspace = 0;

  auto key() const {
    return std::make_tuple(m, n, k, ta, tb, dtype, in_dtype, alpha, d_scale, tf32, ld_a, ld_b, batches,
                           stride_a, stride_b, stride_c, align_a, align_b, align_c, align_r, epilogue, bias,
                           residual, tactic, workspace);
  }
  bool operator<(const Gemm& o) const { return key() < o.key(); }
};

// Tactics of the cuBLASLt kernels: the heuristic's first kLtTactics algorithms, best first.
constexpr int kLtTactics = 8;

class LtGemmPlan {
 public:
  LtGemmPlan(const Gemm& g, const LaunchContext& ctx, const std::string& who) {
    cudaDataType_t type = cuda_type(g.dtype), in_type = cuda_type(g.in_dtype);
    cublasComputeType_t compute =
        g.dtype == DataType::kFloat32 && g.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d_.op, compute, CUDA_R_32F));
    if (is_float8(g.in_dtype)) {
      // FP8 on Hopper: fast accumulation (the tensor cores' own, as Transformer Engine's forward
      // GEMMs use) is about 1.25x faster on BERT's shapes (H200 probe).
      const int8_t fast = 1;
      set_desc(CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast));
    }
    cublasOperation_t op_first = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;   // B^T as the first operand
    cublasOperation_t op_second = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N;  // A^T as the second
    set_desc(CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first));
    set_desc(CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second));
    if (g.epilogue != LtEpilogue::kNone) {
      // In the column-major view the bias runs along cuBLASLt's rows (our N).
      cublasLtEpilogue_t epilogue = lt_epilogue(g.epilogue);
      set_desc(CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
    }
    if (has_bias(g.epilogue)) {
      set_desc(CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias));
      cudaDataType_t bias_type = type;
      set_desc(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type));
    }
    const int64_t m = g.m, n = g.n, k = g.k;
    // Stored (pre-op) column-major shapes of the row-major buffers.
    const int64_t ld_first = g.ld_b ? g.ld_b : g.tb ? k : n, ld_second = g.ld_a ? g.ld_a : g.ta ? m : k;
    KILN_CUBLAS_CHECK(g.tb ? cublasLtMatrixLayoutCreate(&d_.a, in_type, k, n, ld_first)
                           : cublasLtMatrixLayoutCreate(&d_.a, in_type, n, k, ld_first));
    KILN_CUBLAS_CHECK(g.ta ? cublasLtMatrixLayoutCreate(&d_.b, in_type, m, k, ld_second)
                           : cublasLtMatrixLayoutCreate(&d_.b, in_type, k, m, ld_second));
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d_.c, type, n, m, n));
    if (g.d_scale) {  // D is float8: D = e4m3(d_scale * epilogue(...)); C (unread) keeps dtype
      KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d_.d, CUDA_R_8F_E4M3, n, m, n));
      set_desc(CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, &g.d_scale, sizeof(g.d_scale));
    }
    if (g.batches > 1) {
      set_batch(d_.a, static_cast<int32_t>(g.batches), g.stride_b);
      set_batch(d_.b, static_cast<int32_t>(g.batches), g.stride_a);
      set_batch(d_.c, static_cast<int32_t>(g.batches), g.stride_c);
      if (d_.d) set_batch(d_.d, static_cast<int32_t>(g.batches), g.stride_c);
    }
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&d_.pref));
    uint64_t ws = g.workspace;
    set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    uint32_t al_first = g.align_b, al_second = g.align_a, al_c = g.residual ? g.align_r : g.align_c,
             al_d = g.align_c;
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_first, sizeof(al_first));
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_second, sizeof(al_second));
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c));
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d));
    cublasLtMatmulHeuristicResult_t results[kLtTactics] = {};
    const int wanted = g.tactic < 0 ? 1 : kLtTactics;
    int found = 0;
    KILN_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(static_cast<cublasLtHandle_t>(ctx.cublaslt), d_.op, d_.a,
                                                     d_.b, d_.c, d_layout(), d_.pref, wanted, results,
                                                     &found));
    KILN_CHECK(found > 0, who << ": cuBLASLt has no algorithm for " << m << "x" << k << "x" << n << " "
                              << dtype_name(g.in_dtype) << " -> "
                              << (g.d_scale ? "float8_e4m3fn" : dtype_name(g.dtype)));
    const int pick = g.tactic < 0 ? 0 : g.tactic;
    KILN_CHECK(pick < found, who << ": tactic " << g.tactic << " is not available for " << m << "x" << k
                                 << "x" << n << " (cuBLASLt offers " << found << " algorithms)");
    heuristic_ = results[pick];
    alpha_ = g.alpha;
    beta_ = g.residual ? 1.f : 0.f;
    relu_drops_nan_ = is_relu(g.epilogue) && relu_epilogue_drops_nan(heuristic_.algo);
  }

  // The plan's RELU epilogue would turn NaN into 0: the caller must plan the GEMM without it and
  // apply relu itself (launch_fc_epilogue).
  bool relu_drops_nan() const { return relu_drops_nan_; }

  // c = epilogue(a @ b (+ r)); r is the residual when the plan has one, else unused.
  void run(const void* a, const void* b, void* c, const void* r, const LaunchContext& ctx) const {
    // C is read only with a residual (beta 1). Unread, it is D, except where D has its own layout
    // (FP8 writing float8): cuBLASLt refuses C == D with different layouts, and takes no C then.
    const void* c_in = beta_ != 0.f ? r : d_.d ? nullptr : c;
    KILN_CUBLAS_CHECK(cublasLtMatmul(static_cast<cublasLtHandle_t>(ctx.cublaslt), d_.op, &alpha_, b, d_.a, a,
                                     d_.b, &beta_, c_in, d_.c, c, d_layout(), &heuristic_.algo, ctx.workspace,
                                     ctx.workspace_bytes, static_cast<cudaStream_t>(ctx.stream)));
  }

 private:
  cublasLtMatrixLayout_t d_layout() const { return d_.d ? d_.d : d_.c; }
  void set_desc(cublasLtMatmulDescAttributes_t attr, const void* v, size_t size) {
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d_.op, attr, v, size));
  }
  void set_pref(cublasLtMatmulPreferenceAttributes_t attr, const void* v, size_t size) {
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d_.pref, attr, v, size));
  }

  LtDescriptors d_;
  cublasLtMatmulHeuristicResult_t heuristic_{};
  float alpha_ = 1.f, beta_ = 0.f;
  bool relu_drops_nan_ = false;
};

// Plans by Gemm, so the steady state is one lookup and one cublasLtMatmul. Kernels are shared
// between execution contexts (threads), hence the mutex; plans are immutable once built and
// handed out as shared_ptr, so a plan in use survives the cache being cleared. Dynamic shapes can
// produce many keys: past kMaxPlans the cache starts over rather than growing without bound.
class GemmPlanCache {
 public:
  std::shared_ptr<const LtGemmPlan> get(const Gemm& g, const LaunchContext& ctx,
                                        const std::string& who) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = plans_.find(g);
    if (it != plans_.end()) return it->second;
    if (plans_.size() >= kMaxPlans) plans_.clear();
    auto plan = std::make_shared<const LtGemmPlan>(g, ctx, who);
    plans_.emplace(g, plan);
    return plan;
  }

 private:
  static constexpr size_t kMaxPlans = 256;
  mutable std::mutex mutex_;
  mutable std::map<Gemm, std::shared_ptr<const LtGemmPlan>> plans_;
};

int activation_code(const std::string& type) { return variant_code(activation_types(), type); }

// C = 0 when the inner dim is empty. Returns true when there is nothing left to compute.
bool handle_degenerate(const TensorView& c, int64_t m, int64_t n, int64_t k, const LaunchContext& ctx) {
  if (m == 0 || n == 0) return true;
  if (k != 0) return false;
  KILN_CUDA_CHECK(cudaMemsetAsync(c.data, 0, static_cast<size_t>(volume(c.dims)) * dtype_size(c.dtype),
                                  static_cast<cudaStream_t>(ctx.stream)));
  return true;
}

class CublasLtMatmul final : public Kernel {
 public:
  explicit CublasLtMatmul(const Layer& l)
      : who_("layer '" + l.name + "' (matmul)"),
        ta_(l.attrs.get_int("transpose_a", int64_t{0}) != 0),
        tb_(l.attrs.get_int("transpose_b", int64_t{0}) != 0),
        tf32_(l.attrs.get_int("allow_tf32", int64_t{0}) != 0),
        tactic_(static_cast<int>(l.attrs.get_int("tactic", int64_t{-1}))) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const MatmulProblem p = matmul_problem(in[0], in[1], out[0], ta_, tb_);
    const TensorView &a = p.a, &b = p.b, &c = p.c;
    const int64_t m = p.m, n = p.n, k = p.k;
    const size_t esize = dtype_size(c.dtype);
    if (handle_degenerate(c, m, n, k, ctx)) return;

    Dims batch_c(c.dims.begin(), c.dims.end() - 2);
    Dims batch_a(a.dims.begin(), a.dims.end() - 2), batch_b(b.dims.begin(), b.dims.end() - 2);
    const int64_t batches = volume(batch_c);
    const int64_t va = volume(batch_a), vb = volume(batch_b);
    // A single call covers the batch when each operand is either unbroadcast or fully broadcast.
    auto uniform = [&](const Dims& batch, int64_t v) {
      Dims padded(batch_c.size() - batch.size(), 1);
      padded.insert(padded.end(), batch.begin(), batch.end());
      return v == 1 || padded == batch_c;
    };
    const bool one_call = uniform(batch_a, va) && uniform(batch_b, vb) && batches <= INT32_MAX;

    Gemm g;
    g.m = m, g.n = n, g.k = k, g.ta = p.ta, g.tb = p.tb, g.dtype = g.in_dtype = c.dtype, g.tf32 = tf32_;
    g.tactic = tactic_, g.workspace = ctx.workspace_bytes;
    g.align_a = alignment_of(a.data), g.align_b = alignment_of(b.data), g.align_c = alignment_of(c.data);
    if (one_call) {
      g.batches = batches;
      g.stride_a = va == 1 ? 0 : m * k;
      g.stride_b = vb == 1 ? 0 : k * n;
      g.stride_c = m * n;
    } else {  // per-batch pointers are offset by whole matrices
      g.align_a = std::min(g.align_a, alignment_of(reinterpret_cast<void*>(m * k * esize)));
      g.align_b = std::min(g.align_b, alignment_of(reinterpret_cast<void*>(k * n * esize)));
      g.align_c = std::min(g.align_c, alignment_of(reinterpret_cast<void*>(m * n * esize)));
    }
    std::shared_ptr<const LtGemmPlan> plan = cache_.get(g, ctx, who_);
    if (one_call) {
      plan->run(a.data, b.data, c.data, nullptr, ctx);
      return;
    }
    BroadcastIndexer ia = make_broadcast_indexer(batch_a, batch_c);
    BroadcastIndexer ib = make_broadcast_indexer(batch_b, batch_c);
    for (int64_t bi = 0; bi < batches; ++bi) {
      int64_t oa = 0, ob = 0, rem = bi;
      for (int dim = ia.rank - 1; dim >= 0; --dim) {
        int64_t idx = rem % ia.out_dims[dim];
        rem /= ia.out_dims[dim];
        oa += idx * ia.in_strides[dim];
        ob += idx * ib.in_strides[dim];
      }
      plan->run(static_cast<const char*>(a.data) + oa * m * k * esize,
                static_cast<const char*>(b.data) + ob * k * n * esize,
                static_cast<char*>(c.data) + bi * m * n * esize, nullptr, ctx);
    }
  }
  std::string name() const override { return "cublaslt_matmul"; }
  int num_tactics() const override { return kLtTactics; }

 private:
  std::string who_;
  bool ta_, tb_, tf32_;
  int tactic_;
  GemmPlanCache cache_;
};

// A float in device memory for the kernel's lifetime (cuBLASLt's D scale is a device pointer).
class DeviceScalar {
 public:
  explicit DeviceScalar(float v) {
    KILN_CUDA_CHECK(cudaMalloc(&p_, sizeof(float)));
    KILN_CUDA_CHECK(cudaMemcpy(p_, &v, sizeof(float), cudaMemcpyHostToDevice));
  }
  ~DeviceScalar() { cudaFree(p_); }
  DeviceScalar(const DeviceScalar&) = delete;
  DeviceScalar& operator=(const DeviceScalar&) = delete;
  const float* get() const { return p_; }

 private:
  float* p_ = nullptr;
};

// fully_connected: rows of x [M, K] against weight [N, K] (B transposed); bias, activation and
// residual in cuBLASLt's epilogue where it has them, else in launch_fc_epilogue after the GEMM.
// Tactics 0 to kLtTactics - 1 are cuBLASLt's algorithms; kGemvTactic is our one-kernel product
// (launch_fc_gemv), which wins for a few rows (batch-1 classifier heads, squeeze-excitation). With
// more than kGemvMaxRows rows (a dynamic batch above the one it was timed at) that tactic runs
// cuBLASLt's heuristic algorithm instead, the activation in launch_fc_epilogue.
// FP8 (out_dtype set): float8 x and weight, alpha = input_scale * weight_scale, y in out_dtype, or
// float8 with output_inv_scale (cuBLASLt's D scale; C and the bias stay in out_dtype).
constexpr int kGemvTactic = kLtTactics;
constexpr int64_t kGemvMaxRows = 16;

// Tactics kSplitTactic + j, j < kSplitTactics (float32 layers that do not allow TF32): the
// product in three TF32 passes on tensor cores ("3xTF32"). x and the weight are split per call
// into hi + lo (launch_split_tf32) in the workspace, K in chunks that fit it, and each chunk adds
// [x_hi | x_lo] @ [w_lo | w_hi]^T (the two small terms, one GEMM over 2 * kc) and then
// x_hi @ w_hi^T to y (beta = 1; the residual rides on the first GEMM's beta, bias and relu on the
// last one's epilogue). Each product carries about 2^-21 relative, but the tensor cores add a
// chunk's products with truncation: the error against float64 is up to about 10x that of
// cuBLASLt's float32 GEMM (an H100, K = 1000 in one chunk: 2.7e-6 against 2.9e-7; one TF32 pass
// is near 3e-4 in a CPU simulation); tests/cpp/test_split_tf32.cpp holds it to 16x and 1e-5. j picks
// cuBLASLt's j-th TF32 algorithm. Faster where the product is large (a batch of 32 sequences), slower where
// reading the weights dominates (the split costs 20 bytes per weight): the builder's timing decides, as for
// every tactic. KILN_SPLIT_TF32=0 leaves them out.
constexpr int kSplitTactic = kGemvTactic + 1;
constexpr int kSplitTactics = 4;

bool split_tf32_enabled() {
  const char* v = std::getenv("KILN_SPLIT_TF32");
  return !(v && std::string(v) == "0");
}

class CublasLtFullyConnected final : public Kernel {
 public:
  explicit CublasLtFullyConnected(const Layer& l)
      : who_("layer '" + l.name + "' (fully_connected)"),
        tf32_(l.attrs.get_int("allow_tf32", int64_t{0}) != 0),
        residual_(l.attrs.get_int("residual", int64_t{0}) != 0),
        tactic_(static_cast<int>(l.attrs.get_int("tactic", int64_t{-1}))) {
    if (l.attrs.has("out_dtype")) {
      fp8_ = true;
      alpha_scale_ = static_cast<float>(l.attrs.get_float("input_scale", l.name)) *
                     static_cast<float>(l.attrs.get_float("weight_scale", l.name));
      out_dtype_ = parse_dtype(l.attrs.get_string("out_dtype", l.name));
      if (l.attrs.has("output_inv_scale")) {  // y is float8: cuBLASLt reads D's scale from the device
        d_scale_ =
            std::make_shared<DeviceScalar>(static_cast<float>(l.attrs.get_float("output_inv_scale", l.name)));
      }
    }
    std::string act = l.attrs.has("activation") ? l.attrs.get_string("activation", l.name) : "none";
    if (act != "none") {
      act_ = activation_code(act);
      const ActivationAttrs a = activation_attrs(act, l.attrs);
      alpha_ = static_cast<float>(a.alpha);
      beta_ = static_cast<float>(a.beta);
      threshold_ = static_cast<float>(a.threshold);
      relu_ = act == "relu";
      gelu_tanh_ = act == "gelu_tanh" || (fp8_ && act == "gelu");  // see LtEpilogue
    }
  }

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView &x = in[0], &w = in[1], &y = out[0];
    const bool bias = in.size() - (residual_ ? 1 : 0) == 3;
    const TensorView* residual = residual_ ? &in.back() : nullptr;
    const int64_t k = x.dims.back(), n = w.dims[0];
    const int64_t m = n ? volume(y.dims) / n : 0;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    FcEpilogue post;  // what is left for our own epilogue kernel
    post.dtype = y.dtype, post.y = y.data, post.rows = m, post.n = n;
    post.act_type = act_, post.alpha = alpha_, post.beta = beta_, post.threshold = threshold_;
    if (m == 0 || n == 0) return;
    KILN_CHECK(!d_scale_ || k > 0, who_ << ": an FP8 GEMM writing float8 needs K > 0");
    if (k == 0) {  // the product is 0: the result is the epilogue applied to zeros
      KILN_CUDA_CHECK(cudaMemsetAsync(y.data, 0, static_cast<size_t>(m * n) * dtype_size(y.dtype), stream));
      post.bias = bias ? in[2].data : nullptr;
      post.residual = residual ? residual->data : nullptr;
      launch_fc_epilogue(post, stream);
      return;
    }
    if (tactic_ >= kSplitTactic) {
      KILN_CHECK(y.dtype == DataType::kFloat32 && !fp8_ && !tf32_,
                 who_ << ": tactic " << tactic_ << " (three TF32 passes) is for float32 layers without TF32");
    }
    if (tactic_ == kGemvTactic && m <= kGemvMaxRows) {  // our own kernel: the layer in one launch
      KILN_CHECK(!fp8_, who_ << ": tactic " << kGemvTactic << " (one warp per output) takes no FP8 inputs");
      post.bias = bias ? in[2].data : nullptr;
      post.residual = residual ? residual->data : nullptr;
      launch_fc_gemv(FcGemv{post, x.data, w.data, k}, stream);
      return;
    }
    Gemm g;
    g.m = m, g.n = n, g.k = k, g.tb = true, g.dtype = d_scale_ ? out_dtype_ : y.dtype, g.tf32 = tf32_;
    g.d_scale = d_scale_ ? d_scale_->get() : nullptr;
    g.in_dtype = fp8_ ? DataType::kFloat8E4M3 : y.dtype;
    g.alpha = fp8_ ? alpha_scale_ : 1.f;
    g.tactic = tactic_ >= kGemvTactic ? -1 : tactic_, g.workspace = ctx.workspace_bytes;
    g.align_a = alignment_of(x.data), g.align_b = alignment_of(w.data), g.align_c = alignment_of(y.data);
    // cuBLASLt computes epilogue(A B + beta C): a residual can ride on beta only without an
    // activation (ours adds it after the activation). GELU: see LtEpilogue.
    // The gemv tactic above kGemvMaxRows: cuBLASLt's heuristic algorithm with the activation in our
    // epilogue kernel (its (17 x 40) @ (40 x 9) float16 RELU epilogue lost a NaN on an H100).
    const bool lt_act = tactic_ != kGemvTactic && (relu_ || (gelu_tanh_ && g.dtype != DataType::kFloat32));
    if (act_ < 0 || lt_act) {
      g.epilogue = relu_                  ? (bias ? LtEpilogue::kReluBias : LtEpilogue::kRelu)
                   : gelu_tanh_ && lt_act ? (bias ? LtEpilogue::kGeluBias : LtEpilogue::kGelu)
                   : bias                 ? LtEpilogue::kBias
                                          : LtEpilogue::kNone;
      post.act_type = -1;
      g.residual = residual && act_ < 0;
    } else {
      g.epilogue = bias ? LtEpilogue::kBias : LtEpilogue::kNone;
    }
    if (has_bias(g.epilogue)) g.bias = in[2].data;
    if (g.residual) g.align_r = alignment_of(residual->data);
    if (residual && !g.residual) post.residual = residual->data;
    if (split_ && run_split(x.data, w.data, y.data, g, g.residual ? residual->data : nullptr, post, ctx)) {
      if (post.act_type >= 0 || post.residual) launch_fc_epilogue(post, stream);
      return;
    }  // else the workspace holds no chunk worth splitting: float32's own GEMM
    std::shared_ptr<const LtGemmPlan> plan = cache_.get(g, ctx, who_);
    if (plan->relu_drops_nan()) {  // keep NaN: bias in cuBLASLt, relu in our epilogue
      g.epilogue = bias ? LtEpilogue::kBias : LtEpilogue::kNone;
      post.act_type = act_;
      plan = cache_.get(g, ctx, who_);
    }
    // fold_quantize_copies folds only what the GEMM's own epilogue finishes.
    KILN_CHECK(
        !d_scale_ || (post.act_type < 0 && !post.residual),
        who_ << ": an FP8 GEMM writing float8 cannot apply this activation or residual after the GEMM");
    plan->run(x.data, w.data, y.data, g.residual ? residual->data : nullptr, ctx);
    if (post.act_type >= 0 || post.residual) launch_fc_epilogue(post, stream);
  }
  std::string name() const override {
    return tactic_ == kGemvTactic ? "cuda_fully_connected_gemv"
           : split_               ? "cublaslt_fully_connected_3xtf32"
                                  : "cublaslt_fully_connected";
  }
  // With KILN_SPLIT_TF32=0 the builder times no split tactic, and a plan that chose one runs
  // float32's own GEMM (what the setting asks for) rather than failing.
  int num_tactics() const override { return split_enabled_ ? kSplitTactic + kSplitTactics : kSplitTactic; }
  size_t workspace_wanted(const std::vector<TensorDesc>& in) const override {
    if (!split_ || in.size() < 2 || in[0].dims.empty() || in[1].dims.size() != 2) return 0;
    const int64_t k = in[0].dims.back(), n = in[1].dims[0];
    const int64_t m = k ? volume(in[0].dims) / k : 0;
    return split_tf32_workspace(m, n, k);
  }

 private:
  std::string who_;
  bool tf32_, residual_;
  int tactic_;
  bool split_enabled_ = split_tf32_enabled();               // KILN_SPLIT_TF32 when the kernel was made
  bool split_ = tactic_ >= kSplitTactic && split_enabled_;  // three TF32 passes (kSplitTactic)
  int act_ = -1;                                            // code of activation_types(); -1 = none
  float alpha_ = 0.f, beta_ = 0.f, threshold_ = 0.f;
  bool relu_ = false, gelu_tanh_ = false;
  bool fp8_ = false;
  float alpha_scale_ = 1.f;
  DataType out_dtype_ = DataType::kFloat16;
  std::shared_ptr<DeviceScalar> d_scale_;  // FP8 writing float8 (output_inv_scale): D's scale
  GemmPlanCache cache_;

  // The split tactics' GEMMs (see kSplitTactic), `g` the float32 GEMM they replace: its epilogue
  // goes on the last one, its residual (beta = 1, `r`) on the first. False, with nothing launched,
  // when the workspace holds no chunk worth it. A relu the epilogue would lose NaN in moves to
  // `post`.
  bool run_split(const void* x, const void* w, void* y, const Gemm& g, const void* r, FcEpilogue& post,
                 const LaunchContext& ctx) const {
    const int64_t m = g.m, n = g.n, k = g.k;
    const SplitTf32Chunks plan = split_tf32_chunks(m, n, k, ctx.workspace_bytes);
    if (plan.columns == 0) return false;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    auto* base = static_cast<char*>(ctx.workspace);
    auto* xs = reinterpret_cast<float*>(base);
    auto* ws = reinterpret_cast<float*>(base + plan.w_offset);
    LaunchContext lt = ctx;
    lt.workspace = base + plan.lt_offset;
    lt.workspace_bytes = ctx.workspace_bytes - plan.lt_offset;
    const int j = tactic_ - kSplitTactic;
    for (int64_t col0 = 0; col0 < k; col0 += plan.columns) {
      const int64_t kc = std::min(plan.columns, k - col0);
      const bool first = col0 == 0, last = col0 + kc == k;
      launch_split_tf32(SplitTf32{static_cast<const float*>(x), k, m, col0, kc, xs, true}, stream);
      launch_split_tf32(SplitTf32{static_cast<const float*>(w), k, n, col0, kc, ws, false}, stream);
      Gemm cross;  // [x_hi | x_lo] @ [w_lo | w_hi]^T (+ y, or the residual first)
      cross.m = m, cross.n = n, cross.k = 2 * kc, cross.tb = true, cross.tf32 = true;
      cross.tactic = j, cross.workspace = lt.workspace_bytes;
      cross.align_a = alignment_of(xs), cross.align_b = alignment_of(ws), cross.align_c = alignment_of(y);
      cross.residual = !first || r;
      if (cross.residual) cross.align_r = alignment_of(first ? r : y);
      cache_.get(cross, lt, who_)->run(xs, ws, y, first ? r : y, lt);
      Gemm main = cross;  // x_hi @ w_hi^T + y
      main.k = kc, main.ld_a = main.ld_b = 2 * kc, main.residual = true, main.align_r = alignment_of(y);
      main.align_b = alignment_of(ws + kc);
      if (last) main.epilogue = g.epilogue, main.bias = g.bias;
      std::shared_ptr<const LtGemmPlan> p = cache_.get(main, lt, who_);
      if (p->relu_drops_nan()) {  // keep NaN: bias in cuBLASLt, relu in our epilogue
        main.epilogue = g.bias ? LtEpilogue::kBias : LtEpilogue::kNone;
        post.act_type = act_;
        p = cache_.get(main, lt, who_);
      }
      p->run(xs, ws + kc, y, y, lt);
    }
    return true;
  }
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("matmul", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CublasLtMatmul>(l); });
  register_kernel("fully_connected", Backend::kCuda, [](const Layer& l) -> std::unique_ptr<Kernel> {
    if (l.attrs.get_int("quantized", int64_t{0}) != 0)
      return make_int8_fully_connected(l);  // int8_convolution.cu
    return std::make_unique<CublasLtFullyConnected>(l);
  });
});

}  // namespace kiln
