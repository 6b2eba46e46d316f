// Plan kernel trust (kernels/plan_kernel_trust.h): the per-thread switch, and on the GPU that a
// trusted engine runs the cubin its plan carries while an untrusted one compiles the kernel again
// from the layer's program, whatever cubin the plan holds under a valid key.
#include <algorithm>
#include <cmath>
#include <thread>

#include "kernels/fused_pointwise_codegen.h"
#include "kernels/plan_kernel_trust.h"
#include "test_util.h"

namespace kiln {
namespace {

TEST(PlanKernelTrust, ScopesNestAndRestore) {
  const bool process = trust_plan_kernels();  // true unless KILN_TRUST_PLAN_KERNELS=0
  {
    ScopedPlanKernelTrust untrusted(false);
    EXPECT_FALSE(trust_plan_kernels());
    {
      ScopedPlanKernelTrust trusted(true);
      EXPECT_TRUE(trust_plan_kernels());
    }
    EXPECT_FALSE(trust_plan_kernels());
  }
  EXPECT_EQ(trust_plan_kernels(), process);
}

TEST(PlanKernelTrust, ScopeCoversOnlyItsThread) {
  const bool process = trust_plan_kernels();
  ScopedPlanKernelTrust scope(!process);
  bool other = !process;
  std::thread([&] { other = trust_plan_kernels(); }).join();
  EXPECT_EQ(other, process);
  EXPECT_EQ(trust_plan_kernels(), !process);
}

// x, y, z [64, 32]: out = sigmoid((relu(x + y) @ w) * z). The matmul keeps the two pointwise
// chains apart: two fused_pointwise layers, each with two float32 inputs and one output of one
// shape, so either one's kernel runs on the other's operands without leaving its buffers.
Network two_chains(const std::vector<float>& w) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {64, 32});
  TensorId y = net.add_input("y", DataType::kFloat32, {64, 32});
  TensorId z = net.add_input("z", DataType::kFloat32, {64, 32});
  TensorId tw = net.add_constant("w", DataType::kFloat32, {32, 32}, w.data(), w.size() * 4);
  TensorId t = net.add_elementwise(x, y, "add", "sum").outputs[0];
  t = net.add_activation(t, "relu", std::nullopt, "relu").outputs[0];
  TensorId m = net.add_matmul(t, tw, false, false, "mm").outputs[0];
  TensorId o = net.add_elementwise(m, z, "mul", "gate").outputs[0];
  o = net.add_activation(o, "sigmoid", std::nullopt, "sigmoid").outputs[0];
  net.mark_output(o, "out");
  return net;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float d = 0.f;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

TEST(PlanKernelTrust, UntrustedEngineIgnoresASwappedCubin) {
  KILN_REQUIRE_GPU();
  const std::vector<float> w = test::random_floats(32 * 32, 1);
  const std::map<std::string, std::pair<Dims, std::vector<float>>> feed = {
      {"x", {{64, 32}, test::random_floats(64 * 32, 2)}},
      {"y", {{64, 32}, test::random_floats(64 * 32, 3)}},
      {"z", {{64, 32}, test::random_floats(64 * 32, 4, 1.f, 3.f)}}};
  BuilderConfig ref_config;
  ref_config.target = BuildTarget::kReference;
  const std::vector<float> want =
      test::run_float(Engine::create(Builder().build(two_chains(w), ref_config), Backend::kReference), feed)
          .at("out");

  BuilderConfig config;
  config.target = BuildTarget::kCuda;
  Plan plan = Builder().build(two_chains(w), config);
  const std::vector<float> built = test::run_float(Engine::create(plan, Backend::kCuda), feed).at("out");
  // float32 throughout; the GPU's expf and GEMM summation order differ from the CPU's by ulps.
  constexpr float kTolerance = 1e-4f;
  ASSERT_LT(max_abs_diff(built, want), kTolerance);

  // A crafted plan: each fused layer carries the other's cubin under its own, valid, key.
  std::vector<Layer*> fused;
  for (Layer& l : plan.network.mutable_layers()) {
    if (l.op == "fused_pointwise") fused.push_back(&l);
  }
  ASSERT_EQ(fused.size(), 2u) << "the matmul should keep the two chains in two fused layers";
  Attributes& a = fused[0]->attrs;
  Attributes& b = fused[1]->attrs;
  const std::string cubin_a = a.get_string("cubin", "a"), cubin_b = b.get_string("cubin", "b");
  ASSERT_NE(cubin_a, cubin_b);
  ASSERT_NE(a.get_string("cubin_key", "a"), b.get_string("cubin_key", "b"));
  a.set("cubin", cubin_b);
  b.set("cubin", cubin_a);
  const std::vector<uint8_t> crafted = plan.serialize();

  // Trusted (and the in-process cache already holds both kernels, compiled for the build): the
  // stored code runs, and the chains compute each other's function.
  std::vector<float> got;
  {
    ScopedPlanKernelTrust trusted(true);
    got = test::run_float(Engine::create(crafted, Backend::kCuda), feed).at("out");
  }
  EXPECT_GT(max_abs_diff(got, want), 0.01f) << "the swapped cubins did not run: this test proves nothing";

  // Untrusted, after the trusted load put the swapped cubins into the process: Kiln's own code.
  const int64_t compilations = nvrtc_compile_count();
  {
    ScopedPlanKernelTrust untrusted(false);
    got = test::run_float(Engine::create(crafted, Backend::kCuda), feed).at("out");
  }
  EXPECT_LT(max_abs_diff(got, want), kTolerance);
  EXPECT_EQ(std::memcmp(got.data(), built.data(), got.size() * 4), 0) << "the kernels Kiln compiled at build";
  EXPECT_EQ(nvrtc_compile_count(), compilations) << "the build's own compilations serve the untrusted load";
}

}  // namespace
}  // namespace kiln
