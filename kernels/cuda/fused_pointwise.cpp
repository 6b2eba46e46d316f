// CUDA fused_pointwise: CUDA C++ generated from the layer's program, compiled with NVRTC for the
// device's architecture and launched through the runtime's library API (cudaLibraryLoadData,
// cudaLibraryGetKernel, cudaLaunchKernel), so no driver-API link is needed.
//
// The module holds three kernels over the same per-element function:
//   kiln_fp_bcast  grid-stride over the iteration space, int64 index math, broadcast by strides;
//   kiln_fp_flat   every operand has the iteration space's shape: flat index;
//   kiln_fp_vec4   as flat, four elements per thread with vector loads/stores (all pointers
//                  aligned to four elements), then a scalar tail.
// Register math follows the single-op CUDA kernels: float for float32/float16/bfloat16 (a reduced
// register is rounded to its dtype after each instruction, as storing it would), int for int32,
// bool for bool. relu, clip and max/min propagate NaN as the single-op kernels do (kclamp, kmax,
// kmin: comparisons and selects, never fminf/fmaxf, which drop NaN). Compiled with --fmad=false
// so that a mul followed by an add rounds twice, as the unfused layers do.
//
// Compiled code is cached in-process by (arch, source). At build time the kernel stores its cubin
// in the layer (`cubin` base64, `cubin_arch`, `cubin_key` = hash of the source); a plan loaded on
// a GPU of that arch loads the cubin and never runs NVRTC. The key only says which source the
// cubin claims to come from (anyone can compute it), so the stored cubin is used only while
// trust_plan_kernels() holds (kernels/plan_kernel_trust.h); untrusted, the kernel is compiled
// from the program again, and a cubin from a plan never serves an untrusted load from the cache.
#include <cuda_runtime.h>
#include <nvrtc.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>

#include "ir/base64.h"
#include "ir/error.h"
#include "ir/logging.h"
#include "ir/op_schema.h"
#include "ir/ops/activation.h"
#include "ir/ops/fused_pointwise.h"
#include "kernels/broadcast.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/device.h"
#include "kernels/fused_pointwise_codegen.h"
#include "kernels/kernel.h"
#include "kernels/plan_kernel_trust.h"

namespace kiln {
namespace {

std::atomic<int64_t> g_compilations{0};

// Must match KilnFusedParams in the generated source, field by field.
struct FusedParams {
  const void* in[kMaxFusedInputs];
  void* out[kMaxFusedOutputs];
  long long n;
  long long rank;
  long long dims[kMaxRank];
  long long in_strides[kMaxFusedInputs][kMaxRank];
  long long out_strides[kMaxFusedOutputs][kMaxRank];
};

// ---- code generation ---------------------------------------------------------------------------

const char* kPrelude = R"(
struct KilnFusedParams {
  const void* in[%d];
  void* out[%d];
  long long n;
  long long rank;
  long long dims[%d];
  long long in_strides[%d][%d];
  long long out_strides[%d][%d];
};
__device__ __forceinline__ float kh2f(unsigned short h) { float f; asm("cvt.f32.f16 %%0, %%1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ unsigned short kf2h(float f) { unsigned short h; asm("cvt.rn.f16.f32 %%0, %%1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float kb2f(unsigned short b) { return __uint_as_float(((unsigned int)b) << 16); }
__device__ __forceinline__ unsigned short kf2b(float f) { unsigned short b; asm("cvt.rn.bf16.f32 %%0, %%1;" : "=h"(b) : "f"(f)); return b; }
__device__ __forceinline__ float ksigmoid(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ float kclamp(float x, float lo, float hi) { return x < lo ? lo : x > hi ? hi : x; }
__device__ __forceinline__ float krelu6(float x) { return kclamp(x, 0.f, 6.f); }
__device__ __forceinline__ float kmax(float a, float b) { return a < b || b != b ? b : a; }
__device__ __forceinline__ float kmin(float a, float b) { return a > b || b != b ? b : a; }
__device__ __forceinline__ float ksoftplus(float x, float beta, float threshold) {
  return beta * x > threshold ? x : log1pf(expf(beta * x)) / beta;
}
__device__ __forceinline__ int kwrap(long long v) { return (int)(unsigned int)(unsigned long long)v; }
__device__ __forceinline__ int kipow(int a, int b) {
  if (b < 0) return a == 1 ? 1 : a == -1 ? ((b & 1) ? -1 : 1) : 0;
  unsigned int r = 1, base = (unsigned int)a;
  while (b) { if (b & 1) r *= base; base *= base; b >>= 1; }
  return (int)r;
}
__device__ __forceinline__ int kfloordiv(int a, int b) {
  if (b == 0) return 0;
  if (a == -2147483647 - 1 && b == -1) return a;
  int q = a / b;
  return (a %% b != 0 && ((a %% b < 0) != (b < 0))) ? q - 1 : q;
}
struct alignas(16) KilnV16 { unsigned int w[4]; };
struct alignas(8) KilnV8 { unsigned int w[2]; };
struct alignas(4) KilnV4 { unsigned int w[1]; };
)";

const char* storage_type(DataType t) {
  switch (t) {
    case DataType::kFloat32:
      return "float";
    case DataType::kFloat16:
    case DataType::kBFloat16:
      return "unsigned short";
    case DataType::kInt32:
      return "int";
    default:
      return "unsigned char";  // bool
  }
}

const char* register_type(DataType t) {
  if (is_floating(t)) return "float";
  return t == DataType::kInt32 ? "int" : "bool";
}

// A 4-element vector of storage type `t`.
const char* vector_type(DataType t) {
  size_t bytes = 4 * dtype_size(t);
  return bytes == 16 ? "KilnV16" : bytes == 8 ? "KilnV8" : "KilnV4";
}

std::string float_literal(double v) {
  float f = static_cast<float>(v);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  char buf[48];
  std::snprintf(buf, sizeof(buf), "__int_as_float(0x%08x)", bits);
  return buf;
}

// A value of register dtype `from` (C expression `x`) as a value of register dtype `to`.
std::string convert_expr(DataType from, DataType to, const std::string& x) {
  if (is_floating(to)) {
    if (from == DataType::kBool) return "(" + x + " ? 1.f : 0.f)";
    return "(float)(" + x + ")";
  }
  if (to == DataType::kInt32) {
    if (is_floating(from)) return "(int)(" + x + ")";  // truncates toward zero
    return "(int)(" + x + ")";
  }
  return "(" + x + " != 0)";  // bool; NaN != 0 is true, as in torch
}

std::string load_expr(DataType t, const std::string& raw) {
  switch (t) {
    case DataType::kFloat16:
      return "kh2f(" + raw + ")";
    case DataType::kBFloat16:
      return "kb2f(" + raw + ")";
    case DataType::kBool:
      return "(" + raw + " != 0)";
    default:
      return raw;
  }
}

std::string store_expr(DataType t, const std::string& v) {
  switch (t) {
    case DataType::kFloat16:
      return "kf2h(" + v + ")";
    case DataType::kBFloat16:
      return "kf2b(" + v + ")";
    case DataType::kBool:
      return "(unsigned char)(" + v + ")";
    default:
      return v;
  }
}

std::string round_expr(DataType t, const std::string& v) {
  if (t == DataType::kFloat16) return "kh2f(kf2h(" + v + "))";
  if (t == DataType::kBFloat16) return "kb2f(kf2b(" + v + "))";
  return v;
}

std::string activation_expr(const PointwiseInstr& ins, const std::string& x) {
  const std::string& t = ins.op;
  std::string alpha = float_literal(ins.alpha), beta = float_literal(ins.beta);
  if (t == "relu") return "(" + x + " < 0.f ? 0.f : " + x + ")";
  if (t == "sigmoid") return "ksigmoid(" + x + ")";
  if (t == "tanh") return "tanhf(" + x + ")";
  if (t == "leaky_relu") return "(" + x + " >= 0.f ? " + x + " : " + alpha + " * " + x + ")";
  if (t == "gelu") return "(0.5f * " + x + " * (1.f + erff(" + x + " * 0.70710678118654752f)))";
  if (t == "gelu_tanh") {
    return "(0.5f * " + x + " * (1.f + tanhf(0.79788456080286536f * (" + x + " + 0.044715f * " + x + " * " +
           x + " * " + x + "))))";
  }
  if (t == "silu") return "(" + x + " * ksigmoid(" + x + "))";
  if (t == "hardswish") return "(" + x + " * krelu6(" + x + " + 3.f) / 6.f)";
  if (t == "hardsigmoid") return "(krelu6(" + x + " + 3.f) / 6.f)";
  if (t == "elu") return "(" + x + " > 0.f ? " + x + " : " + alpha + " * expm1f(" + x + "))";
  if (t == "softplus") return "ksoftplus(" + x + ", " + beta + ", " + float_literal(ins.threshold) + ")";
  if (t == "mish") return "(" + x + " * tanhf(ksoftplus(" + x + ", 1.f, 20.f)))";
  if (t == "clip") return "kclamp(" + x + ", " + alpha + ", " + beta + ")";
  if (t == "selu") {
    return "(" + float_literal(kSeluScale) + " * (" + x + " > 0.f ? " + x + " : " +
           float_literal(kSeluAlpha) + " * expm1f(" + x + ")))";
  }
  KILN_FAIL("fused_pointwise: no CUDA code for activation '" << t << "'");
}

std::string unary_expr(const std::string& op, DataType t, const std::string& x) {
  if (op == "not") return "(!" + x + ")";
  if (t == DataType::kInt32) {
    if (op == "abs") return "(" + x + " < 0 ? kwrap(-(long long)" + x + ") : " + x + ")";
    if (op == "neg") return "kwrap(-(long long)" + x + ")";
    if (op == "sign") return "((" + x + " > 0) - (" + x + " < 0))";
  }
  static const std::map<std::string, std::string> f = {
      {"exp", "expf(#)"},          {"log", "logf(#)"},
      {"sqrt", "sqrtf(#)"},        {"rsqrt", "(1.f / sqrtf(#))"},
      {"abs", "fabsf(#)"},         {"neg", "(-#)"},
      {"erf", "erff(#)"},          {"sin", "sinf(#)"},
      {"cos", "cosf(#)"},          {"floor", "floorf(#)"},
      {"ceil", "ceilf(#)"},        {"round", "rintf(#)"},
      {"reciprocal", "(1.f / #)"}, {"sign", "(float)((# > 0.f) - (# < 0.f))"},
      {"tan", "tanf(#)"},          {"asin", "asinf(#)"},
      {"acos", "acosf(#)"},        {"atan", "atanf(#)"},
      {"sinh", "sinhf(#)"},        {"cosh", "coshf(#)"},
      {"asinh", "asinhf(#)"},      {"acosh", "acoshf(#)"},
      {"atanh", "atanhf(#)"},      {"expm1", "expm1f(#)"},
      {"log1p", "log1pf(#)"},      {"log2", "log2f(#)"},
      {"log10", "log10f(#)"}};
  auto it = f.find(op);
  KILN_CHECK(it != f.end(), "fused_pointwise: no CUDA code for unary '" << op << "'");
  std::string s;
  for (char c : it->second) s += c == '#' ? x : std::string(1, c);
  return s;
}

std::string elementwise_expr(const std::string& op, DataType t, const std::string& a, const std::string& b) {
  static const std::map<std::string, std::string> cmp = {{"eq", "=="}, {"ne", "!="}, {"lt", "<"},
                                                         {"le", "<="}, {"gt", ">"},  {"ge", ">="}};
  if (cmp.count(op)) return "(" + a + " " + cmp.at(op) + " " + b + ")";
  if (op == "and") return "(" + a + " && " + b + ")";
  if (op == "or") return "(" + a + " || " + b + ")";
  if (op == "xor") return "(" + a + " != " + b + ")";
  if (is_floating(t)) {
    if (op == "add") return "(" + a + " + " + b + ")";
    if (op == "sub") return "(" + a + " - " + b + ")";
    if (op == "mul") return "(" + a + " * " + b + ")";
    if (op == "div") return "(" + a + " / " + b + ")";
    if (op == "floor_div") return "floorf(" + a + " / " + b + ")";
    if (op == "pow") return "powf(" + a + ", " + b + ")";
    if (op == "atan2") return "atan2f(" + a + ", " + b + ")";
    if (op == "max") return "kmax(" + a + ", " + b + ")";
    if (op == "min") return "kmin(" + a + ", " + b + ")";
  } else {  // int32: wraps on overflow; division by zero gives 0 (as the reference backend)
    if (op == "add") return "kwrap((long long)" + a + " + " + b + ")";
    if (op == "sub") return "kwrap((long long)" + a + " - " + b + ")";
    if (op == "mul") return "kwrap((long long)" + a + " * " + b + ")";
    if (op == "div") return "(" + b + " == 0 ? 0 : kwrap((long long)" + a + " / " + b + "))";
    if (op == "floor_div") return "kfloordiv(" + a + ", " + b + ")";
    if (op == "pow") return "kipow(" + a + ", " + b + ")";
    if (op == "max") return "(" + a + " > " + b + " ? " + a + " : " + b + ")";
    if (op == "min") return "(" + a + " < " + b + " ? " + a + " : " + b + ")";
  }
  KILN_FAIL("fused_pointwise: no CUDA code for elementwise '" << op << "'");
}

struct Signature {
  std::vector<DataType> inputs;   // per layer input (float32 for inputs the program never loads)
  std::vector<DataType> outputs;  // per layer output
};

// The per-element function: kiln_compute(x0, .., y0&, ..) over storage values.
std::string compute_function(const PointwiseProgram& p, const std::vector<DataType>& regs,
                             const Signature& sig) {
  std::ostringstream s;
  s << "__device__ __forceinline__ void kiln_compute(";
  std::string sep;
  for (size_t k = 0; k < sig.inputs.size(); ++k) {
    s << sep << storage_type(sig.inputs[k]) << " x" << k;
    sep = ", ";
  }
  for (size_t j = 0; j < sig.outputs.size(); ++j) {
    s << sep << storage_type(sig.outputs[j]) << "& y" << j;
    sep = ", ";
  }
  s << ") {\n";
  for (size_t i = 0; i < p.code.size(); ++i) {
    const PointwiseInstr& ins = p.code[i];
    DataType t = regs[i];
    auto r = [&](int k) { return "r" + std::to_string(ins.args[k]); };
    std::string e;
    if (ins.kind == "input") {
      e = load_expr(t, "x" + std::to_string(ins.input));
    } else if (ins.kind == "const") {
      e = is_floating(t)          ? float_literal(ins.value)
          : t == DataType::kInt32 ? "(" + std::to_string(static_cast<long long>(ins.value)) + ")"
                                  : (ins.value != 0 ? "true" : "false");
    } else if (ins.kind == "elementwise") {
      e = elementwise_expr(ins.op, regs[ins.args[0]], r(0), r(1));
    } else if (ins.kind == "activation") {
      e = activation_expr(ins, r(0));
    } else if (ins.kind == "unary") {
      e = unary_expr(ins.op, t, r(0));
    } else if (ins.kind == "cast") {
      e = convert_expr(regs[ins.args[0]], t, r(0));
    } else {  // where
      e = "(" + r(0) + " ? " + r(1) + " : " + r(2) + ")";
    }
    if (ins.kind != "input" && ins.kind != "const") e = round_expr(t, e);
    s << "  const " << register_type(t) << " r" << i << " = " << e << ";\n";
  }
  for (size_t j = 0; j < p.outputs.size(); ++j) {
    s << "  y" << j << " = " << store_expr(sig.outputs[j], "r" + std::to_string(p.outputs[j])) << ";\n";
  }
  s << "}\n";
  return s.str();
}

std::string generate_source(const PointwiseProgram& p, const std::vector<DataType>& regs,
                            const Signature& sig) {
  char prelude[4096];
  std::snprintf(prelude, sizeof(prelude), kPrelude, kMaxFusedInputs, kMaxFusedOutputs, kMaxRank,
                kMaxFusedInputs, kMaxRank, kMaxFusedOutputs, kMaxRank);
  std::ostringstream s;
  s << prelude << compute_function(p, regs, sig);
  const size_t ni = sig.inputs.size(), no = sig.outputs.size();
  auto pointers = [&] {
    std::ostringstream d;
    for (size_t k = 0; k < ni; ++k) {
      d << "  const " << storage_type(sig.inputs[k]) << "* __restrict__ p" << k << " = (const "
        << storage_type(sig.inputs[k]) << "*)P.in[" << k << "];\n";
    }
    for (size_t j = 0; j < no; ++j) {
      d << "  " << storage_type(sig.outputs[j]) << "* __restrict__ q" << j << " = ("
        << storage_type(sig.outputs[j]) << "*)P.out[" << j << "];\n";
    }
    return d.str();
  };
  // One call of kiln_compute with operand k at offset `in(k)` and output j at `out(j)`.
  auto call = [&](const std::function<std::string(size_t)>& in,
                  const std::function<std::string(size_t)>& out) {
    std::ostringstream c;
    c << "kiln_compute(";
    std::string sep;
    for (size_t k = 0; k < ni; ++k) {
      c << sep << in(k);
      sep = ", ";
    }
    for (size_t j = 0; j < no; ++j) {
      c << sep << out(j);
      sep = ", ";
    }
    c << ");";
    return c.str();
  };
  const char* loop =
      "  const long long stride = (long long)gridDim.x * blockDim.x;\n"
      "  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < P.n; i += stride) {\n";

  // Broadcast: decompose i over the iteration space, one offset per operand.
  s << "extern \"C\" __global__ void kiln_fp_bcast(const KilnFusedParams P) {\n" << pointers() << loop;
  s << "    long long rem = i;\n";
  for (size_t k = 0; k < ni; ++k) s << "    long long o" << k << " = 0;\n";
  for (size_t j = 0; j < no; ++j) s << "    long long w" << j << " = 0;\n";
  s << "    for (int d = (int)P.rank - 1; d >= 0; --d) {\n"
       "      const long long idx = rem % P.dims[d];\n"
       "      rem /= P.dims[d];\n";
  for (size_t k = 0; k < ni; ++k) s << "      o" << k << " += idx * P.in_strides[" << k << "][d];\n";
  for (size_t j = 0; j < no; ++j) s << "      w" << j << " += idx * P.out_strides[" << j << "][d];\n";
  s << "    }\n    "
    << call([](size_t k) { return "p" + std::to_string(k) + "[o" + std::to_string(k) + "]"; },
            [](size_t j) { return "q" + std::to_string(j) + "[w" + std::to_string(j) + "]"; })
    << "\n  }\n}\n";

  auto flat_call = call([](size_t k) { return "p" + std::to_string(k) + "[i]"; },
                        [](size_t j) { return "q" + std::to_string(j) + "[i]"; });
  s << "extern \"C\" __global__ void kiln_fp_flat(const KilnFusedParams P) {\n"
    << pointers() << loop << "    " << flat_call << "\n  }\n}\n";

  // Vectorized: element e of the 4-vector at v.
  s << "extern \"C\" __global__ void kiln_fp_vec4(const KilnFusedParams P) {\n" << pointers();
  s << "  const long long stride = (long long)gridDim.x * blockDim.x;\n"
       "  const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;\n"
       "  const long long nv = P.n / 4;\n"
       "  for (long long v = first; v < nv; v += stride) {\n";
  for (size_t k = 0; k < ni; ++k) {
    s << "    union { " << vector_type(sig.inputs[k]) << " v; " << storage_type(sig.inputs[k]) << " e[4]; } a"
      << k << ";\n    a" << k << ".v = ((const " << vector_type(sig.inputs[k]) << "*)p" << k << ")[v];\n";
  }
  for (size_t j = 0; j < no; ++j) {
    s << "    union { " << vector_type(sig.outputs[j]) << " v; " << storage_type(sig.outputs[j])
      << " e[4]; } b" << j << ";\n";
  }
  s << "#pragma unroll\n    for (int e = 0; e < 4; ++e) "
    << call([](size_t k) { return "a" + std::to_string(k) + ".e[e]"; },
            [](size_t j) { return "b" + std::to_string(j) + ".e[e]"; })
    << "\n";
  for (size_t j = 0; j < no; ++j) {
    s << "    ((" << vector_type(sig.outputs[j]) << "*)q" << j << ")[v] = b" << j << ".v;\n";
  }
  s << "  }\n"
       "  for (long long i = nv * 4 + first; i < P.n; i += stride) {\n    "
    << flat_call << "\n  }\n}\n";
  return s.str();
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string hex(uint64_t v) {
  char buf[20];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// ---- modules -------------------------------------------------------------------------------------

struct Module {
  std::vector<char> cubin;
  cudaLibrary_t library = nullptr;
  cudaKernel_t bcast = nullptr, flat = nullptr, vec4 = nullptr;
};

#define KILN_NVRTC_CHECK(expr)                                                                              \
  do {                                                                                                      \
    nvrtcResult kiln_nvrtc_r_ = (expr);                                                                     \
    KILN_CHECK(kiln_nvrtc_r_ == NVRTC_SUCCESS, #expr << " failed: " << nvrtcGetErrorString(kiln_nvrtc_r_)); \
  } while (0)

std::vector<char> compile_with_nvrtc(const std::string& source, int arch, const std::string& who) {
  nvrtcProgram prog = nullptr;
  KILN_NVRTC_CHECK(nvrtcCreateProgram(&prog, source.c_str(), "kiln_fused_pointwise.cu", 0, nullptr, nullptr));
  std::string gpu = "--gpu-architecture=sm_" + std::to_string(arch);
  const char* options[] = {gpu.c_str(), "--std=c++17", "--fmad=false"};
  nvrtcResult r = nvrtcCompileProgram(prog, 3, options);
  if (r != NVRTC_SUCCESS) {
    size_t log_size = 0;
    nvrtcGetProgramLogSize(prog, &log_size);
    std::string log(log_size, '\0');
    if (log_size) nvrtcGetProgramLog(prog, &log[0]);
    nvrtcDestroyProgram(&prog);
    KILN_FAIL(who << ": NVRTC could not compile the generated kernel (a Kiln bug): " << nvrtcGetErrorString(r)
                  << "\n"
                  << log << "\nsource:\n"
                  << source);
  }
  size_t size = 0;
  KILN_NVRTC_CHECK(nvrtcGetCUBINSize(prog, &size));
  std::vector<char> cubin(size);
  KILN_NVRTC_CHECK(nvrtcGetCUBIN(prog, cubin.data()));
  nvrtcDestroyProgram(&prog);
  g_compilations.fetch_add(1);
  KILN_LOG(kVerbose,
           "fused_pointwise: NVRTC compiled " << who << " for sm_" << arch << " (" << size << " bytes)");
  return cubin;
}

std::shared_ptr<const Module> load_module(std::vector<char> cubin) {
  auto m = std::make_shared<Module>();
  m->cubin = std::move(cubin);
  KILN_CUDA_CHECK(
      cudaLibraryLoadData(&m->library, m->cubin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0));
  KILN_CUDA_CHECK(cudaLibraryGetKernel(&m->bcast, m->library, "kiln_fp_bcast"));
  KILN_CUDA_CHECK(cudaLibraryGetKernel(&m->flat, m->library, "kiln_fp_flat"));
  KILN_CUDA_CHECK(cudaLibraryGetKernel(&m->vec4, m->library, "kiln_fp_vec4"));
  return m;
}

bool same_bytes(const std::vector<char>& a, const std::string& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
}

// In-process caches; modules live as long as the process.
//   compiled: (arch, source) -> the module NVRTC compiled from that source in this process;
//   loaded:   (arch, cubin)  -> a module loaded from a plan's cubin (trusted loads only).
// Kept apart because a stored cubin may hold any code: an untrusted load of the same source must
// get Kiln's own compilation, never a cubin an earlier trusted plan brought. `stored` is the
// plan's cubin for that source, or nullptr to compile (no usable cubin, or an untrusted load).
std::shared_ptr<const Module> module_for(const std::string& source, int arch, const std::string* stored,
                                         const std::string& who) {
  static std::mutex mu;
  static std::map<std::pair<int, std::string>, std::shared_ptr<const Module>> compiled, loaded;
  std::lock_guard<std::mutex> lock(mu);
  auto own = compiled.find(std::make_pair(arch, source));
  if (stored) {
    // A process reloading a plan it built holds the very bytes already.
    if (own != compiled.end() && same_bytes(own->second->cubin, *stored)) return own->second;
    auto key = std::make_pair(arch, *stored);
    auto it = loaded.find(key);
    if (it != loaded.end()) return it->second;
    auto m = load_module(std::vector<char>(stored->begin(), stored->end()));
    loaded[key] = m;
    return m;
  }
  if (own != compiled.end()) return own->second;
  auto m = load_module(compile_with_nvrtc(source, arch, who));
  compiled[std::make_pair(arch, source)] = m;
  return m;
}

class CudaFusedPointwise final : public Kernel {
 public:
  explicit CudaFusedPointwise(const Layer& layer) : who_(describe(layer)) {
    PointwiseProgram p = parse_pointwise_program(layer);
    std::vector<DataType> regs = pointwise_register_dtypes(layer, p);
    Signature sig;
    sig.inputs.assign(layer.inputs.size(), DataType::kFloat32);
    for (const auto& ins : p.code) {
      if (ins.kind == "input") sig.inputs[ins.input] = regs[&ins - p.code.data()];
    }
    for (int r : p.outputs) sig.outputs.push_back(regs[r]);
    source_ = generate_source(p, regs, sig);
    key_ = hex(fnv1a(source_));
    arch_ = cuda_device_arch();
    std::optional<std::string> stored;
    bool reuse = layer.attrs.get_int("cubin_arch", int64_t{-1}) == arch_ && layer.attrs.has("cubin") &&
                 layer.attrs.has("cubin_key") && layer.attrs.get_string("cubin_key", who_) == key_;
    if (reuse && !trust_plan_kernels()) {
      KILN_LOG(kVerbose, who_ << ": plan kernels are not trusted: compiling the kernel again instead of "
                              << "loading the plan's cubin");
      reuse = false;
    }
    if (reuse) {
      stored = base64_decode(layer.attrs.get_string("cubin", who_));
      if (stored && stored->empty()) stored.reset();
    }
    module_ = module_for(source_, arch_, stored ? &*stored : nullptr, who_);
  }

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    Dims space;
    for (const auto* list : {&in, &out}) {
      for (const auto& t : *list) {
        Dims next;
        KILN_CHECK(broadcast_shapes(space, t.dims, &next), who_ << ": operands do not broadcast");
        space = next;
      }
    }
    const int64_t n = volume(space);
    if (n == 0) return;
    FusedParams params;
    std::memset(&params, 0, sizeof(params));
    params.n = n;
    params.rank = static_cast<long long>(space.size());
    bool flat = true, aligned = true;
    for (size_t k = 0; k < in.size(); ++k) {
      params.in[k] = in[k].data;
      flat &= volume(in[k].dims) == n;
      aligned &= reinterpret_cast<uintptr_t>(in[k].data) % (4 * dtype_size(in[k].dtype)) == 0;
      BroadcastIndexer b = make_broadcast_indexer(in[k].dims, space);
      for (int d = 0; d < b.rank; ++d) params.in_strides[k][d] = b.in_strides[d];
    }
    for (size_t j = 0; j < out.size(); ++j) {
      params.out[j] = out[j].data;
      flat &= volume(out[j].dims) == n;
      aligned &= reinterpret_cast<uintptr_t>(out[j].data) % (4 * dtype_size(out[j].dtype)) == 0;
      BroadcastIndexer b = make_broadcast_indexer(out[j].dims, space);
      for (int d = 0; d < b.rank; ++d) params.out_strides[j][d] = b.in_strides[d];
    }
    for (size_t d = 0; d < space.size(); ++d) params.dims[d] = space[d];
    constexpr int kBlock = 256;
    cudaKernel_t kernel = !flat ? module_->bcast : aligned ? module_->vec4 : module_->flat;
    int64_t work = kernel == module_->vec4 ? std::max<int64_t>(n / 4, 1) : n;
    int64_t blocks = std::min<int64_t>((work + kBlock - 1) / kBlock, 65535 * 16);
    void* args[] = {&params};
    KILN_CUDA_CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(kernel),
                                     dim3(static_cast<unsigned>(blocks)), dim3(kBlock), args, 0,
                                     static_cast<cudaStream_t>(ctx.stream)));
    KILN_CUDA_CHECK_LAUNCH();
  }

  std::string name() const override { return "cuda_fused_pointwise"; }

  void store_artifacts(Attributes& attrs) const override {
    attrs.set("cubin", base64_encode(module_->cubin.data(), module_->cubin.size()));
    attrs.set("cubin_arch", static_cast<int64_t>(arch_));
    attrs.set("cubin_key", key_);
  }

 private:
  std::string who_;
  std::string source_;
  std::string key_;
  int arch_ = 0;
  std::shared_ptr<const Module> module_;
};

}  // namespace

int64_t nvrtc_compile_count() { return g_compilations.load(); }

std::string fused_pointwise_cuda_source(const Layer& layer) {
  PointwiseProgram p = parse_pointwise_program(layer);
  std::vector<DataType> regs = pointwise_register_dtypes(layer, p);
  Signature sig;
  sig.inputs.assign(layer.inputs.size(), DataType::kFloat32);
  for (size_t i = 0; i < p.code.size(); ++i) {
    if (p.code[i].kind == "input") sig.inputs[p.code[i].input] = regs[i];
  }
  for (int r : p.outputs) sig.outputs.push_back(regs[r]);
  return generate_source(p, regs, sig);
}

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("fused_pointwise", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaFusedPointwise>(l); });
});

}  // namespace kiln
