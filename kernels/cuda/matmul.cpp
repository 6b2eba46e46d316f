// matmul and fully_connected on cuBLASLt. Row-major C[M,N] = A[M,K] @ B[K,N] is computed as the column-major
// product C^T = B^T A^T, so B is cuBLASLt's first operand. Batches with a shared stride (or a broadcast
// operand, stride 0) go in one strided-batched call; other broadcast patterns loop per batch.
// Accumulation is FP32 for every dtype; float32 uses TF32 only when the layer allows it.
#include <algorithm>
#include <cstdint>

#include "kernels/broadcast.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/kernel.h"
#include "kernels/kernels.h"
#include "kernels/matmul_views.h"

namespace kiln {
namespace {

cudaDataType_t cuda_type(DataType t) {
  switch (t) {
    case DataType::kFloat32:
      return CUDA_R_32F;
    case DataType::kFloat16:
      return CUDA_R_16F;
    case DataType::kBFloat16:
      return CUDA_R_16BF;
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
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescriptors() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
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

// One cuBLASLt GEMM (optionally strided-batched): row-major C[M,N] = op(A)[M,K] @ op(B)[K,N]
// (+ bias[N] broadcast over rows through the BIAS epilogue).
struct Gemm {
  int64_t m = 0, n = 0, k = 0;
  bool ta = false, tb = false;
  DataType dtype = DataType::kFloat32;
  bool tf32 = false;
  int64_t batches = 1;                               // > 1: one strided-batched call
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  // elements; 0 broadcasts an operand
  uint32_t align_a = 256, align_b = 256, align_c = 256;
  const void* bias = nullptr;
};

class LtGemmPlan {
 public:
  LtGemmPlan(const Gemm& g, const LaunchContext& ctx, const std::string& who) {
    cudaDataType_t type = cuda_type(g.dtype);
    cublasComputeType_t compute =
        g.dtype == DataType::kFloat32 && g.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d_.op, compute, CUDA_R_32F));
    cublasOperation_t op_first = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;   // B^T as the first operand
    cublasOperation_t op_second = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N;  // A^T as the second
    set_desc(CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first));
    set_desc(CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second));
    if (g.bias) {
      // In the column-major view the bias runs along cuBLASLt's rows (our N): BIAS epilogue.
      cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      set_desc(CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
      set_desc(CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias));
      cudaDataType_t bias_type = type;
      set_desc(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type));
    }
    const int64_t m = g.m, n = g.n, k = g.k;
    // Stored (pre-op) column-major shapes of the row-major buffers.
    KILN_CUBLAS_CHECK(g.tb ? cublasLtMatrixLayoutCreate(&d_.a, type, k, n, k)
                           : cublasLtMatrixLayoutCreate(&d_.a, type, n, k, n));
    KILN_CUBLAS_CHECK(g.ta ? cublasLtMatrixLayoutCreate(&d_.b, type, m, k, m)
                           : cublasLtMatrixLayoutCreate(&d_.b, type, k, m, k));
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d_.c, type, n, m, n));
    if (g.batches > 1) {
      set_batch(d_.a, static_cast<int32_t>(g.batches), g.stride_b);
      set_batch(d_.b, static_cast<int32_t>(g.batches), g.stride_a);
      set_batch(d_.c, static_cast<int32_t>(g.batches), g.stride_c);
    }
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&d_.pref));
    uint64_t ws = ctx.workspace_bytes;
    set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    uint32_t al_first = g.align_b, al_second = g.align_a, al_c = g.align_c;
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_first, sizeof(al_first));
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_second, sizeof(al_second));
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c));
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c));
    int found = 0;
    KILN_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(static_cast<cublasLtHandle_t>(ctx.cublaslt), d_.op, d_.a,
                                                     d_.b, d_.c, d_.c, d_.pref, 1, &heuristic_, &found));
    KILN_CHECK(found > 0, who << ": cuBLASLt has no algorithm for " << m << "x" << k << "x" << n << " "
                              << dtype_name(g.dtype));
  }

  void run(const void* a, const void* b, void* c, const LaunchContext& ctx) const {
    const float alpha = 1.f, beta = 0.f;
    KILN_CUBLAS_CHECK(cublasLtMatmul(static_cast<cublasLtHandle_t>(ctx.cublaslt), d_.op, &alpha, b, d_.a, a,
                                     d_.b, &beta, c, d_.c, c, d_.c, &heuristic_.algo, ctx.workspace,
                                     ctx.workspace_bytes, static_cast<cudaStream_t>(ctx.stream)));
  }

 private:
  void set_desc(cublasLtMatmulDescAttributes_t attr, const void* v, size_t size) {
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d_.op, attr, v, size));
  }
  void set_pref(cublasLtMatmulPreferenceAttributes_t attr, const void* v, size_t size) {
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d_.pref, attr, v, size));
  }

  LtDescriptors d_;
  cublasLtMatmulHeuristicResult_t heuristic_{};
};

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
  CublasLtMatmul(std::string layer, bool ta, bool tb, bool tf32)
      : who_("layer '" + layer + "' (matmul)"), ta_(ta), tb_(tb), tf32_(tf32) {}

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
    g.m = m, g.n = n, g.k = k, g.ta = p.ta, g.tb = p.tb, g.dtype = c.dtype, g.tf32 = tf32_;
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
    LtGemmPlan plan(g, ctx, who_);
    if (one_call) {
      plan.run(a.data, b.data, c.data, ctx);
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
      plan.run(static_cast<const char*>(a.data) + oa * m * k * esize,
               static_cast<const char*>(b.data) + ob * k * n * esize,
               static_cast<char*>(c.data) + bi * m * n * esize, ctx);
    }
  }
  std::string name() const override { return "cublaslt_matmul"; }

 private:
  std::string who_;
  bool ta_, tb_, tf32_;
};

// fully_connected: rows of x [M, K] against weight [N, K] (B transposed), bias in the epilogue.
class CublasLtFullyConnected final : public Kernel {
 public:
  CublasLtFullyConnected(std::string layer, bool tf32)
      : who_("layer '" + layer + "' (fully_connected)"), tf32_(tf32) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView &x = in[0], &w = in[1], &y = out[0];
    const int64_t k = x.dims.back(), n = w.dims[0];
    const int64_t m = n ? volume(y.dims) / n : 0;
    if (handle_degenerate(y, m, n, k, ctx)) {
      if (m && n && in.size() == 3) {  // K = 0: the result is the bias on every row
        for (int64_t i = 0; i < m; ++i) {
          KILN_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(y.data) + i * n * dtype_size(y.dtype),
                                          in[2].data, n * dtype_size(y.dtype), cudaMemcpyDeviceToDevice,
                                          static_cast<cudaStream_t>(ctx.stream)));
        }
      }
      return;
    }
    Gemm g;
    g.m = m, g.n = n, g.k = k, g.tb = true, g.dtype = y.dtype, g.tf32 = tf32_;
    g.align_a = alignment_of(x.data), g.align_b = alignment_of(w.data), g.align_c = alignment_of(y.data);
    g.bias = in.size() == 3 ? in[2].data : nullptr;
    LtGemmPlan(g, ctx, who_).run(x.data, w.data, y.data, ctx);
  }
  std::string name() const override { return "cublaslt_fully_connected"; }

 private:
  std::string who_;
  bool tf32_;
};

}  // namespace

void register_matmul_cuda_kernel() {
  register_kernel("matmul", Backend::kCuda, [](const Layer& l) {
    return std::make_unique<CublasLtMatmul>(l.name, l.attrs.get_int("transpose_a", int64_t{0}) != 0,
                                            l.attrs.get_int("transpose_b", int64_t{0}) != 0,
                                            l.attrs.get_int("allow_tf32", int64_t{0}) != 0);
  });
  register_kernel("fully_connected", Backend::kCuda, [](const Layer& l) {
    return std::make_unique<CublasLtFullyConnected>(l.name, l.attrs.get_int("allow_tf32", int64_t{0}) != 0);
  });
}

}  // namespace kiln
