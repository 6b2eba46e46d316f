// matmul on cuBLASLt. Row-major C[M,N] = A[M,K] @ B[K,N] is computed as the column-major product
// C^T = B^T A^T, so B is cuBLASLt's first operand. Batches with a shared stride (or a broadcast
// operand, stride 0) go in one strided-batched call; other broadcast patterns loop per batch.
// Accumulation is FP32 for every dtype; TF32 is not used for float32.
#include <algorithm>
#include <cstdint>

#include "kernels/broadcast.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/kernel.h"
#include "kernels/kernels.h"

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

class CublasLtMatmul final : public Kernel {
 public:
  CublasLtMatmul(std::string layer, bool ta, bool tb) : layer_(std::move(layer)), ta_(ta), tb_(tb) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView &a = in[0], &b = in[1], &c = out[0];
    size_t ra = a.dims.size(), rc = c.dims.size();
    const int64_t m = c.dims[rc - 2], n = c.dims[rc - 1];
    const int64_t k = ta_ ? a.dims[ra - 2] : a.dims[ra - 1];
    const size_t esize = dtype_size(c.dtype);
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    if (m == 0 || n == 0) return;
    if (k == 0) {  // empty sum: zeros
      KILN_CUDA_CHECK(cudaMemsetAsync(c.data, 0, static_cast<size_t>(volume(c.dims)) * esize, stream));
      return;
    }

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

    LtDescriptors d;
    cudaDataType_t type = cuda_type(c.dtype);
    KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t op_first = tb_ ? CUBLAS_OP_T : CUBLAS_OP_N;   // B^T as the first operand
    cublasOperation_t op_second = ta_ ? CUBLAS_OP_T : CUBLAS_OP_N;  // A^T as the second
    KILN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
    KILN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
    // Stored (pre-op) column-major shapes of the row-major buffers.
    KILN_CUBLAS_CHECK(tb_ ? cublasLtMatrixLayoutCreate(&d.a, type, k, n, k)
                          : cublasLtMatrixLayoutCreate(&d.a, type, n, k, n));
    KILN_CUBLAS_CHECK(ta_ ? cublasLtMatrixLayoutCreate(&d.b, type, m, k, m)
                          : cublasLtMatrixLayoutCreate(&d.b, type, k, m, k));
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.c, type, n, m, n));
    if (one_call && batches > 1) {
      set_batch(d.a, static_cast<int32_t>(batches), vb == 1 ? 0 : k * n);
      set_batch(d.b, static_cast<int32_t>(batches), va == 1 ? 0 : m * k);
      set_batch(d.c, static_cast<int32_t>(batches), m * n);
    }

    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&d.pref));
    uint64_t ws = ctx.workspace_bytes;
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                           &ws, sizeof(ws)));
    uint32_t al_a = alignment_of(b.data), al_b = alignment_of(a.data), al_c = alignment_of(c.data);
    if (!one_call) {  // per-batch pointers are offset by whole matrices
      al_a = std::min(al_a, alignment_of(reinterpret_cast<void*>(k * n * esize)));
      al_b = std::min(al_b, alignment_of(reinterpret_cast<void*>(m * k * esize)));
      al_c = std::min(al_c, alignment_of(reinterpret_cast<void*>(m * n * esize)));
    }
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                           &al_a, sizeof(al_a)));
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                           &al_b, sizeof(al_b)));
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                           &al_c, sizeof(al_c)));
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                           &al_c, sizeof(al_c)));

    auto handle = static_cast<cublasLtHandle_t>(ctx.cublaslt);
    cublasLtMatmulHeuristicResult_t heuristic{};
    int found = 0;
    KILN_CUBLAS_CHECK(
        cublasLtMatmulAlgoGetHeuristic(handle, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &heuristic, &found));
    KILN_CHECK(found > 0, "layer '" << layer_ << "' (matmul): cuBLASLt has no algorithm for " << m << "x" << k
                                    << "x" << n << " " << dtype_name(c.dtype));
    const float alpha = 1.f, beta = 0.f;
    auto gemm = [&](const void* pa, const void* pb, void* pc) {
      KILN_CUBLAS_CHECK(cublasLtMatmul(handle, d.op, &alpha, pb, d.a, pa, d.b, &beta, pc, d.c, pc, d.c,
                                       &heuristic.algo, ctx.workspace, ctx.workspace_bytes, stream));
    };
    if (one_call) {
      gemm(a.data, b.data, c.data);
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
      gemm(static_cast<const char*>(a.data) + oa * m * k * esize,
           static_cast<const char*>(b.data) + ob * k * n * esize,
           static_cast<char*>(c.data) + bi * m * n * esize);
    }
  }
  std::string name() const override { return "cublaslt_matmul"; }

 private:
  std::string layer_;
  bool ta_, tb_;
};

}  // namespace

void register_matmul_cuda_kernel() {
  register_kernel("matmul", Backend::kCuda, [](const Layer& l) {
    return std::make_unique<CublasLtMatmul>(l.name, l.attrs.get_int("transpose_a", int64_t{0}) != 0,
                                            l.attrs.get_int("transpose_b", int64_t{0}) != 0);
  });
}

}  // namespace kiln
