// Helpers shared by the C++ tests: random data, building and running a network on a backend.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/builder.h"
#include "core/engine.h"
#include "core/error.h"
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

}  // namespace kiln::test
