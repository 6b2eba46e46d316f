// Every algorithm cuBLASLt's heuristic offers for a fully_connected GEMM with a RELU epilogue
// either keeps NaN (torch's relu does) or is one relu_epilogue_drops_nan names, so the kernels
// run it without the epilogue. The GEMM is set up as matmul.cpp's LtGemmPlan sets up y = x w^T:
// row-major x [m, k] and w [n, k] in cuBLASLt's column-major view, w transposed first.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/cublaslt_relu.h"
#include "test_util.h"

namespace kiln {
namespace {

struct Shape {
  int64_t m, n, k;
};

// Host values stored as the GEMM's dtype (2 or 4 bytes each), and read back as float.
std::vector<char> encode(const std::vector<float>& v, cudaDataType_t t) {
  const size_t size = t == CUDA_R_32F ? 4 : 2;
  std::vector<char> out(v.size() * size);
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == CUDA_R_32F) {
      std::memcpy(&out[i * 4], &v[i], 4);
    } else if (t == CUDA_R_16F) {
      const __half h = __float2half(v[i]);
      std::memcpy(&out[i * 2], &h, 2);
    } else {
      const __nv_bfloat16 h = __float2bfloat16(v[i]);
      std::memcpy(&out[i * 2], &h, 2);
    }
  }
  return out;
}

float decode(const std::vector<char>& bytes, size_t i, cudaDataType_t t) {
  if (t == CUDA_R_32F) {
    float f;
    std::memcpy(&f, &bytes[i * 4], 4);
    return f;
  }
  if (t == CUDA_R_16F) {
    __half h;
    std::memcpy(&h, &bytes[i * 2], 2);
    return __half2float(h);
  }
  __nv_bfloat16 h;
  std::memcpy(&h, &bytes[i * 2], 2);
  return __bfloat162float(h);
}

struct DeviceBuffer {
  explicit DeviceBuffer(size_t bytes) { EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess); }
  ~DeviceBuffer() { cudaFree(p); }
  void* p = nullptr;
};

const char* type_name(cudaDataType_t t) {
  return t == CUDA_R_32F ? "float32" : t == CUDA_R_16F ? "float16" : "bfloat16";
}

// Runs each of the heuristic's (up to 8) algorithms on x with a NaN row and w with a NaN row;
// returns a line per algorithm that lost a NaN and relu_epilogue_drops_nan did not name.
std::vector<std::string> unflagged_nan_drops(cublasLtHandle_t lt, Shape s, cudaDataType_t type,
                                             cublasLtEpilogue_t epilogue, int* tried) {
  const int64_t m = s.m, n = s.n, k = s.k;
  std::vector<float> x = test::random_floats(static_cast<size_t>(m * k), 1);
  std::vector<float> w = test::random_floats(static_cast<size_t>(n * k), 2);
  std::vector<float> bias = test::random_floats(static_cast<size_t>(n), 3);
  const int64_t nan_row = m / 2, nan_col = n - 1;
  for (int64_t j = 0; j < k; ++j) {
    x[static_cast<size_t>(nan_row * k + j)] = NAN;
    w[static_cast<size_t>(nan_col * k + j)] = NAN;
  }
  const size_t esize = type == CUDA_R_32F ? 4 : 2;
  DeviceBuffer dx(x.size() * esize), dw(w.size() * esize), db(bias.size() * esize),
      dy(static_cast<size_t>(m * n) * esize), ws(32 << 20);
  const std::vector<char> hx = encode(x, type), hw = encode(w, type), hb = encode(bias, type);
  cudaMemcpy(dx.p, hx.data(), hx.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(dw.p, hw.data(), hw.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(db.p, hb.data(), hb.size(), cudaMemcpyHostToDevice);

  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  EXPECT_EQ(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
  const cublasOperation_t t = CUBLAS_OP_T, nt = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t));
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof(nt));
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
  if (epilogue == CUBLASLT_EPILOGUE_RELU_BIAS) {
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &db.p, sizeof(db.p));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &type, sizeof(type));
  }
  cublasLtMatrixLayoutCreate(&la, type, k, n, k);
  cublasLtMatrixLayoutCreate(&lb, type, k, m, k);
  cublasLtMatrixLayoutCreate(&lc, type, n, m, n);
  cublasLtMatmulPreferenceCreate(&pref);
  const uint64_t ws_bytes = 32 << 20;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                       sizeof(ws_bytes));
  cublasLtMatmulHeuristicResult_t results[8] = {};
  int found = 0;
  cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 8, results, &found);

  std::vector<std::string> bad;
  const float one = 1.f, zero = 0.f;
  for (int a = 0; a < found; ++a) {
    cudaMemset(dy.p, 0, static_cast<size_t>(m * n) * esize);
    const cublasStatus_t st = cublasLtMatmul(lt, op, &one, dw.p, la, dx.p, lb, &zero, dy.p, lc, dy.p, lc,
                                             &results[a].algo, ws.p, ws_bytes, nullptr);
    if (st != CUBLAS_STATUS_SUCCESS) continue;
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ++*tried;
    std::vector<char> hy(static_cast<size_t>(m * n) * esize);
    cudaMemcpy(hy.data(), dy.p, hy.size(), cudaMemcpyDeviceToHost);
    int64_t lost = 0;
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c) {
        const bool want_nan = r == nan_row || c == nan_col;
        const float got = decode(hy, static_cast<size_t>(r * n + c), type);
        if (want_nan && !std::isnan(got)) ++lost;
        if (!want_nan) EXPECT_TRUE(got >= 0.f) << "relu gave " << got;
      }
    if (lost == 0 || relu_epilogue_drops_nan(results[a].algo)) continue;
    int id = -1, tile = -1, split_k = -1, stages = -1, scheme = -1;
    size_t written = 0;
    const cublasLtMatmulAlgo_t& algo = results[a].algo;
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &written);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &written);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split_k, sizeof(split_k),
                                         &written);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages),
                                         &written);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                         sizeof(scheme), &written);
    std::ostringstream line;
    line << type_name(type) << " " << m << "x" << n << "x" << k
         << (epilogue == CUBLASLT_EPILOGUE_RELU_BIAS ? " RELU_BIAS" : " RELU") << ": heuristic rank " << a
         << ", algorithm " << id << " tile " << tile << " split-k " << split_k << " stages " << stages
         << " reduction " << scheme << " lost " << lost << " NaN";
    bad.push_back(line.str());
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(op);
  return bad;
}

TEST(CublasLtReluNan, EveryOfferedAlgorithmKeepsNanOrIsNamed) {
  KILN_REQUIRE_GPU();
  cublasLtHandle_t lt = nullptr;
  ASSERT_EQ(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
  const std::vector<Shape> shapes = {{8, 8, 8},      {16, 16, 16},   {17, 9, 40},   {17, 9, 48},
                                     {33, 9, 40},    {37, 24, 72},   {64, 24, 40},  {3, 1000, 440},
                                     {1, 512, 4096}, {128, 128, 64}, {256, 96, 24}, {2, 32, 16}};
  std::vector<std::string> bad;
  int tried = 0;
  for (cudaDataType_t type : {CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF})
    for (cublasLtEpilogue_t e : {CUBLASLT_EPILOGUE_RELU, CUBLASLT_EPILOGUE_RELU_BIAS})
      for (const Shape& s : shapes)
        for (const std::string& line : unflagged_nan_drops(lt, s, type, e, &tried)) bad.push_back(line);
  cublasLtDestroy(lt);
  std::ostringstream all;
  for (const std::string& line : bad) all << "\n  " << line;
  EXPECT_GT(tried, 100) << "too few algorithms ran";
  EXPECT_TRUE(bad.empty()) << bad.size() << " algorithm(s) of " << tried
                           << " turned NaN into 0 and relu_epilogue_drops_nan does not name them:"
                           << all.str();
}

}  // namespace
}  // namespace kiln
