// Helpers shared by the C++ tests: random data, building and running a network on a backend.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "core/builder.h"
#include "core/engine.h"
#include "ir/error.h"
#include "ir/network.h"
#include "kernels/device.h"

namespace kiln::test {

inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

inline bool have_gpu() { return cuda_device_count() > 0; }

// Skips a GPU test where no GPU is visible, unless KILN_REQUIRE_GPU=1 (set by tools/gpu_check.sh),
// where a missing GPU is a failure, so that a GPU run can never pass by skipping.
#define KILN_REQUIRE_GPU()                                                             \
  do {                                                                                 \
    if (!::kiln::test::have_gpu()) {                                                   \
      const char* kiln_req_ = std::getenv("KILN_REQUIRE_GPU");                         \
      if (kiln_req_ && std::string(kiln_req_) == "1") FAIL() << "no CUDA GPU visible"; \
      GTEST_SKIP() << "no CUDA GPU visible";                                           \
    }                                                                                  \
  } while (0)

// Runs a float32 engine on host data; on CUDA it copies in and out around a synchronous run.
inline std::map<std::string, std::vector<float>> run_float(
    const std::shared_ptr<Engine>& engine,
    const std::map<std::string, std::pair<Dims, std::vector<float>>>& inputs) {
  auto ctx = engine->create_execution_context();
  bool cuda = engine->backend() == Backend::kCuda;
  std::vector<void*> device;
  for (const auto& [name, v] : inputs) {
    ctx->set_input_shape(name, v.first);
    void* p = const_cast<float*>(v.second.data());
    if (cuda) {
      p = device_alloc(v.second.size() * 4);
      copy_to_device(p, v.second.data(), v.second.size() * 4);
      device.push_back(p);
    }
    ctx->set_tensor_address(name, p);
  }
  std::map<std::string, std::vector<float>> out;
  std::map<std::string, void*> out_dev;
  for (const auto& name : engine->output_names()) {
    out[name].resize(volume(ctx->tensor_shape(name)));
    void* p = out[name].data();
    if (cuda) {
      p = device_alloc(out[name].size() * 4);
      device.push_back(p);
      out_dev[name] = p;
    }
    ctx->set_tensor_address(name, p);
  }
  ctx->enqueue(nullptr);
  if (cuda) {
    synchronize_stream(nullptr);
    for (auto& [name, v] : out) copy_to_host(v.data(), out_dev[name], v.size() * 4);
  }
  for (void* p : device) device_free(p);
  return out;
}

using Feed = std::map<std::string, std::pair<Dims, std::vector<float>>>;

// `net` built for the reference backend as given (no optional pass: optimization_level 0) or with
// every pass, and run on `feed`: a pass test's expected outputs and its results.
inline std::map<std::string, std::vector<float>> run_reference(const Network& net, const Feed& feed,
                                                               bool passes) {
  BuilderConfig config;
  config.target = BuildTarget::kReference;
  config.optimization_level = passes ? 3 : 0;
  return run_float(Engine::create(Builder().build(net, config), Backend::kReference), feed);
}

// `net` built for CUDA with every pass and the given precisions enabled ("fp16", "int8", "fp8").
inline Plan build_cuda(const Network& net, const std::vector<std::string>& precisions) {
  BuilderConfig config;
  config.target = BuildTarget::kCuda;
  for (const std::string& p : precisions) enable_precision(config.precision, p);
  return Builder().build(net, config);
}

// ---- pass tests: graph in, graph out ------------------------------------------------------------

inline std::vector<std::string> ops_of(const Network& net) {
  std::vector<std::string> ops;
  for (const auto& l : net.layers()) ops.push_back(l.op);
  return ops;
}

inline std::vector<std::string> layer_names(const Network& net) {
  std::vector<std::string> names;
  for (const auto& l : net.layers()) names.push_back(l.name);
  return names;
}

// The layer called `name`, or nullptr.
inline const Layer* find_layer(const Network& net, const std::string& name) {
  for (const auto& l : net.layers()) {
    if (l.name == name) return &l;
  }
  return nullptr;
}

// The layer called `name`; throws (the test fails) when there is none.
inline const Layer& layer_named(const Network& net, const std::string& name) {
  const Layer* l = find_layer(net, name);
  if (!l) throw std::out_of_range("the network has no layer '" + name + "'");
  return *l;
}

// The names of the tensors `l` reads.
inline std::vector<std::string> input_names(const Network& net, const Layer& l) {
  std::vector<std::string> names;
  for (TensorId t : l.inputs) names.push_back(net.tensor(t).name);
  return names;
}

inline TensorId float_constant(Network& net, const std::string& name, const Dims& dims,
                               const std::vector<float>& v) {
  return net.add_constant(name, DataType::kFloat32, dims, v.data(), v.size() * sizeof(float));
}

inline std::vector<float> float_values(const Tensor& t) {
  std::vector<float> v(t.data ? t.data->size() / sizeof(float) : 0);
  if (!v.empty()) std::memcpy(v.data(), t.data->data(), v.size() * sizeof(float));
  return v;
}

// Everything a pass could change, as text: each tensor (name, kind, dtype, dims, constant bytes),
// each layer in order (name, op, inputs, outputs, attributes) and the bindings. Equal text: the
// same graph. A "nothing changes" case compares it before and after the pass.
inline std::string graph_text(const Network& net) {
  std::ostringstream s;
  for (const Tensor& t : net.tensors()) {
    s << "tensor " << t.id << " " << t.name << " kind=" << static_cast<int>(t.kind) << " "
      << dtype_name(t.dtype) << to_string(t.dims);
    if (t.data) {
      s << " bytes=";
      for (uint8_t b : *t.data) s << static_cast<int>(b) << ",";
    }
    s << "\n";
  }
  auto names = [&](const std::vector<TensorId>& ids) {
    std::string out;
    for (TensorId t : ids) out += net.tensor(t).name + ",";
    return out;
  };
  for (const Layer& l : net.layers()) {
    s << "layer " << l.name << " " << l.op << " (" << names(l.inputs) << ") -> (" << names(l.outputs) << ")";
    for (const auto& [key, value] : l.attrs.values()) {
      s << " " << key << "=";
      std::visit(
          [&](const auto& v) {
            using V = std::decay_t<decltype(v)>;
            if constexpr (std::is_same_v<V, int64_t> || std::is_same_v<V, std::string>) {
              s << v;
            } else if constexpr (std::is_same_v<V, double>) {
              char buf[32];
              std::snprintf(buf, sizeof(buf), "%.17g", v);
              s << buf;
            } else {
              for (const auto& x : v) s << x << ",";
            }
          },
          value);
    }
    s << "\n";
  }
  s << "inputs " << names(net.inputs()) << "\noutputs " << names(net.outputs()) << "\n";
  return s.str();
}

}  // namespace kiln::test
