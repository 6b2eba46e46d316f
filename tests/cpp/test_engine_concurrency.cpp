// One engine, several optimization profiles and several execution contexts: profile selection,
// out-of-profile shapes, and 4 threads each running its own context on its own CUDA stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "test_util.h"

namespace kiln {
namespace {

// x [-1, k] -> fully_connected(w, b) -> tanh -> * x2 (broadcast row) -> y [-1, n]
struct Net {
  int64_t k = 96, n = 160;
  std::vector<float> w = test::random_floats(n * k, 11), b = test::random_floats(n, 12),
                     s = test::random_floats(n, 13);

  Network network() const {
    Network net;
    TensorId x = net.add_input("x", DataType::kFloat32, {-1, k});
    TensorId tw = net.add_constant("w", DataType::kFloat32, {n, k}, w.data(), w.size() * 4);
    TensorId tb = net.add_constant("b", DataType::kFloat32, {n}, b.data(), b.size() * 4);
    TensorId ts = net.add_constant("s", DataType::kFloat32, {n}, s.data(), s.size() * 4);
    TensorId y = net.add_layer("fully_connected", {x, tw, tb}, {}, "fc").outputs[0];
    y = net.add_activation(y, "tanh", 0.0, "tanh").outputs[0];
    y = net.add_elementwise(y, ts, "mul", "scale").outputs[0];
    net.mark_output(y, "y");
    return net;
  }

  // Profile 0: batch 1..16, profile 1: batch 17..256.
  BuilderConfig config(BuildTarget target) const {
    BuilderConfig c;
    c.target = target;
    c.profiles.push_back({{{"x", {{1, k}, {8, k}, {16, k}}}}});
    c.profiles.push_back({{{"x", {{17, k}, {128, k}, {256, k}}}}});
    return c;
  }

  std::vector<float> expected(const std::vector<float>& x, int64_t m) const {
    std::vector<float> y(m * n);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = b[j];
        for (int64_t p = 0; p < k; ++p) acc += double{x[i * k + p]} * w[j * k + p];
        y[i * n + j] = static_cast<float>(std::tanh(acc) * s[j]);
      }
    }
    return y;
  }
};

void expect_close(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i) {
    // FP32 (no TF32) over k=96 terms of magnitude <= 1, then tanh and a scale: far below 1e-5.
    ASSERT_NEAR(got[i], want[i], 1e-5f) << what << " at " << i;
  }
}

void check_profiles(BuildTarget target, Backend backend) {
  Net net;
  auto engine = Engine::create(Builder().build(net.network(), net.config(target)), backend);
  ASSERT_EQ(engine->num_profiles(), 2);
  auto ctx = engine->create_execution_context();
  // Profile 0 is active: batch 40 lies outside it.
  EXPECT_THROW(
      {
        try {
          ctx->set_input_shape("x", {40, net.k});
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("outside optimization profile 0"), std::string::npos)
              << e.what();
          throw;
        }
      },
      Error);
  ctx->set_optimization_profile(1);
  ctx->set_input_shape("x", {40, net.k});
  EXPECT_EQ(ctx->tensor_shape("y"), (Dims{40, net.n}));
  EXPECT_THROW(ctx->set_input_shape("x", {3, net.k}), Error);  // below profile 1's min
  EXPECT_THROW(ctx->set_optimization_profile(2), Error);
  for (int profile : {0, 1}) {
    for (int64_t m : profile == 0 ? std::vector<int64_t>{1, 16} : std::vector<int64_t>{17, 256}) {
      auto x = test::random_floats(m * net.k, 200 + static_cast<uint32_t>(m));
      auto c = engine->create_execution_context();
      c->set_optimization_profile(profile);
      c->set_input_shape("x", {m, net.k});
      std::vector<float> y(m * net.n);
      void *dx = x.data(), *dy = y.data();
      if (backend == Backend::kCuda) {
        dx = device_alloc(x.size() * 4);
        dy = device_alloc(y.size() * 4);
        copy_to_device(dx, x.data(), x.size() * 4);
      }
      c->set_tensor_address("x", dx);
      c->set_tensor_address("y", dy);
      c->enqueue(nullptr);
      if (backend == Backend::kCuda) {
        synchronize_stream(nullptr);
        copy_to_host(y.data(), dy, y.size() * 4);
        device_free(dx);
        device_free(dy);
      }
      expect_close(y, net.expected(x, m), "profile " + std::to_string(profile) + " m=" + std::to_string(m));
    }
  }
}

TEST(Profiles, ReferenceSelectsProfiles) { check_profiles(BuildTarget::kReference, Backend::kReference); }

TEST(Profiles, CudaSelectsProfiles) {
  KILN_REQUIRE_GPU();
  check_profiles(BuildTarget::kCuda, Backend::kCuda);
}

// Each thread: its own context (and CUDA stream), many runs with its own batch sizes and data,
// every result checked. Contexts run concurrently on one shared engine.
void check_threads(BuildTarget target, Backend backend, int iterations) {
  Net net;
  auto engine = Engine::create(Builder().build(net.network(), net.config(target)), backend);
  const bool cuda = backend == Backend::kCuda;
  std::vector<std::string> failures(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      try {
        cudaStream_t stream = nullptr;
        if (cuda) {
          cudaSetDevice(engine->device());
          if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
            throw Error("cudaStreamCreate failed");
          }
        }
        auto ctx = engine->create_execution_context();
        ctx->set_optimization_profile(1);
        for (int it = 0; it < iterations; ++it) {
          const int64_t m = 17 + (t * 61 + it * 37) % 240;
          auto x = test::random_floats(m * net.k, static_cast<uint32_t>(1000 * t + it));
          std::vector<float> y(m * net.n, NAN);
          void *dx = x.data(), *dy = y.data();
          if (cuda) {
            dx = device_alloc(x.size() * 4);
            dy = device_alloc(y.size() * 4);
            cudaMemcpyAsync(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice, stream);
          }
          ctx->set_input_shape("x", {m, net.k});
          ctx->set_tensor_address("x", dx);
          ctx->set_tensor_address("y", dy);
          ctx->enqueue(stream);
          if (cuda) {
            cudaMemcpyAsync(y.data(), dy, y.size() * 4, cudaMemcpyDeviceToHost, stream);
            synchronize_stream(stream);
            device_free(dx);
            device_free(dy);
          }
          auto want = net.expected(x, m);
          for (size_t i = 0; i < want.size(); ++i) {
            if (!(std::fabs(y[i] - want[i]) <= 1e-5f)) {
              throw Error("thread " + std::to_string(t) + " iteration " + std::to_string(it) + " element " +
                          std::to_string(i) + ": " + std::to_string(y[i]) + " vs " + std::to_string(want[i]));
            }
          }
        }
        if (cuda) cudaStreamDestroy(stream);
      } catch (const std::exception& e) {
        failures[t] = e.what();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(failures[t], "") << "thread " << t;
}

TEST(Concurrency, ReferenceFourThreads) { check_threads(BuildTarget::kReference, Backend::kReference, 3); }

TEST(Concurrency, CudaFourThreadsFourStreams) {
  KILN_REQUIRE_GPU();
  check_threads(BuildTarget::kCuda, Backend::kCuda, 25);
}

}  // namespace
}  // namespace kiln

namespace kiln {

// copy_pieces_to_device (engine loads and refits): pieces smaller than a staging buffer, pieces
// straddling buffers, one larger than both buffers together, empty ones, each at its own device
// address; read back byte for byte. Twice: the second call reuses the process's staging.
TEST(Upload, StagedPiecesArriveWhole) {
  KILN_REQUIRE_GPU();
  const std::vector<size_t> sizes = {3, 0, 1000, (size_t{8} << 20) - 5, 7, (size_t{19} << 20) + 1, 4096};
  size_t total = 0;
  for (size_t s : sizes) total += s + 256;
  std::mt19937 rng(5);
  std::vector<std::vector<uint8_t>> host;
  for (size_t s : sizes) {
    std::vector<uint8_t> v(s);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    host.push_back(std::move(v));
  }
  uint8_t* device = static_cast<uint8_t*>(device_alloc(total));
  for (int round = 0; round < 2; ++round) {
    std::vector<HostPiece> pieces;
    size_t at = 0;
    for (size_t i = sizes.size(); i-- > 0;) {  // device addresses in the opposite order
      pieces.push_back({device + at, host[i].data(), host[i].size()});
      at += sizes[i] + 256;
    }
    copy_pieces_to_device(pieces.data(), pieces.size());
    for (const HostPiece& p : pieces) {
      std::vector<uint8_t> back(p.bytes);
      copy_to_host(back.data(), p.dst, p.bytes);
      EXPECT_TRUE(std::memcmp(back.data(), p.src, p.bytes) == 0) << p.bytes << " bytes, round " << round;
    }
    for (auto& v : host) std::reverse(v.begin(), v.end());
  }
  device_free(device);
}

}  // namespace kiln
