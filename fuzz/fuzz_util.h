// What the fuzz targets share: a reader that turns fuzz bytes into choices, and a bounded run of
// a plan on the reference backend.
//
// The contract every target checks: whatever the bytes, Kiln either succeeds or throws a
// kiln::Error. Any other exception escapes LLVMFuzzerTestOneInput and libFuzzer reports it (as
// it reports crashes, sanitizer findings, leaks, timeouts and allocations past -malloc_limit_mb).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/engine.h"
#include "core/plan.h"
#include "ir/dims.h"
#include "ir/error.h"
#include "ir/network.h"

namespace kiln::fuzz {

// Bounds on what a target runs, so that a valid plan describing a large model is skipped rather
// than making one execution allocate gigabytes or run for seconds: at most kMaxElements per
// tensor (a matmul's cost is then at most kMaxElements^1.5 multiply-adds) and kMaxArenaBytes of
// activation arena.
constexpr int64_t kMaxElements = int64_t{1} << 14;
constexpr int64_t kMaxArenaBytes = int64_t{16} << 20;

// The names string attributes and fused_pointwise programs use: the op, activation, mode and
// layout names of docs/ops.md and the dtype names (network.cpp picks from them; fuzz_make_seeds
// writes them into the dictionaries).
inline const char* const kNames[] = {
    "add",         "sub",      "mul",       "div",        "floor_div",
    "pow",         "max",      "min",       "eq",         "ne",
    "lt",          "le",       "gt",        "ge",         "and",
    "or",          "xor",      "relu",      "sigmoid",    "tanh",
    "leaky_relu",  "gelu",     "gelu_tanh", "silu",       "hardswish",
    "hardsigmoid", "elu",      "softplus",  "mish",       "clip",
    "selu",        "exp",      "log",       "sqrt",       "rsqrt",
    "abs",         "neg",      "erf",       "sin",        "cos",
    "floor",       "ceil",     "round",     "reciprocal", "sign",
    "not",         "sum",      "mean",      "prod",       "var",
    "argmax",      "argmin",   "avg",       "nearest",    "nearest_exact",
    "linear",      "constant", "reflect",   "replicate",  "nchw",
    "nhwc",        "bhsd",     "bshd",      "sbhd",       "tan",
    "asin",        "acos",     "atan",      "sinh",       "cosh",
    "asinh",       "acosh",    "atanh",     "expm1",      "log1p",
    "log2",        "log10",    "atan2",     "none",       "float32",
    "float16",     "bfloat16", "int32",     "int64",      "bool",
    "int8",        "bilinear", "bicubic",   "zeros",      "border",
    "reflection",  "",
};

// Consumes fuzz bytes front to back; past the end every read gives zeros, so any prefix of a
// valid stream still decodes.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  bool empty() const { return p_ == end_; }
  size_t left() const { return static_cast<size_t>(end_ - p_); }
  uint8_t u8() { return p_ < end_ ? *p_++ : 0; }
  template <typename T>
  T raw() {
    T v{};
    size_t n = std::min(sizeof(T), left());
    std::memcpy(&v, p_, n);
    p_ += n;
    return v;
  }
  // A number in [0, n), n > 0.
  size_t pick(size_t n) { return n <= 256 ? u8() % n : raw<uint16_t>() % n; }
  // `n` bytes as a string (fewer at the end of the input).
  std::string bytes(size_t n) {
    n = std::min(n, left());
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }
  const uint8_t* rest() const { return p_; }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// `n` elements of `dtype` cycling through values that exercise the edges of the math (zero, signs,
// a fraction, float16's largest finite value, infinity, NaN), starting at `seed`.
inline std::vector<uint8_t> pattern_bytes(DataType dtype, int64_t n, uint8_t seed) {
  static const float kFloats[] = {0.f, 1.f, -1.f, 2.5f, -3.75f, 65504.f, 1e-3f, -7.f, INFINITY, NAN};
  static const uint16_t kHalves[] = {0x0000, 0x3C00, 0xBC00, 0x4100, 0xC380,
                                     0x7BFF, 0x1419, 0xC700, 0x7C00, 0x7E00};
  static const int64_t kInts[] = {0, 1, -1, 2, 3, -3, 7, 100, -100, 5};
  constexpr int kCount = 10;
  std::vector<uint8_t> out(static_cast<size_t>(tensor_bytes({n}, dtype_size(dtype))));
  for (int64_t i = 0; i < n; ++i) {
    const int k = static_cast<int>((seed + i) % kCount);
    uint8_t* p = out.data() + i * static_cast<int64_t>(dtype_size(dtype));
    switch (dtype) {
      case DataType::kFloat32:
        std::memcpy(p, &kFloats[k], 4);
        break;
      case DataType::kFloat16:
        std::memcpy(p, &kHalves[k], 2);
        break;
      case DataType::kBFloat16: {
        uint32_t bits;
        std::memcpy(&bits, &kFloats[k], 4);
        uint16_t top = static_cast<uint16_t>(bits >> 16);
        std::memcpy(p, &top, 2);
        break;
      }
      case DataType::kInt32: {
        int32_t v = static_cast<int32_t>(kInts[k]);
        std::memcpy(p, &v, 4);
        break;
      }
      case DataType::kInt64:
        std::memcpy(p, &kInts[k], 8);
        break;
      case DataType::kBool:
        *p = static_cast<uint8_t>(k % 2);
        break;
      case DataType::kInt8:
        *p = static_cast<uint8_t>(static_cast<int8_t>(kInts[k]));
        break;
    }
  }
  return out;
}

// Runs `plan` on the reference backend once, with zero-filled inputs at the first profile's
// min corner (static inputs at their own shape), when every tensor and the arena are within the
// bounds above; returns false when it skipped the plan. Errors propagate.
inline bool run_plan_if_small(Plan plan) {
  const Network& net = plan.network;
  std::map<std::string, Dims> shapes;
  if (!plan.profiles.empty()) shapes = profile_shapes(net, plan.profiles[0], "min");
  for (TensorId id : net.inputs()) {
    const Tensor& t = net.tensor(id);
    if (!shapes.count(t.name)) shapes[t.name] = t.dims;
    if (!is_static(shapes[t.name])) return false;
  }
  for (const Dims& d : infer_shapes(net, shapes)) {
    if (!is_static(d) || volume(d) > kMaxElements) return false;
  }
  if (plan.memory.arena_bytes > kMaxArenaBytes) return false;

  auto engine = Engine::create(std::move(plan), Backend::kReference);
  auto ctx = engine->create_execution_context();
  std::vector<std::vector<uint8_t>> buffers;
  for (const auto& name : engine->input_names()) {
    ctx->set_input_shape(name, shapes[name]);
    buffers.emplace_back(tensor_bytes(shapes[name], dtype_size(engine->binding(name).dtype)), 0);
    ctx->set_tensor_address(name, buffers.back().data());
  }
  for (const auto& name : engine->output_names()) {
    buffers.emplace_back(tensor_bytes(ctx->tensor_shape(name), dtype_size(engine->binding(name).dtype)));
    ctx->set_tensor_address(name, buffers.back().data());
  }
  ctx->enqueue(nullptr);
  return true;
}

// A plan that parsed must serialize to bytes that parse to the same plan: the format has one
// encoding per plan. A mismatch is a finding (the parser accepted something it cannot write).
inline void check_round_trip(const Plan& plan) {
  std::vector<uint8_t> bytes = plan.serialize();
  std::vector<uint8_t> again = Plan::deserialize(bytes.data(), bytes.size(), false).serialize();
  if (again != bytes) __builtin_trap();
}

}  // namespace kiln::fuzz
