// The vertical slice: inputs + weights -> matmul -> bias add -> relu, through Network, Builder,
// Plan bytes and Engine, on the reference backend and (where present) on the GPU, checked
// against a plain loop written here.
#include "test_util.h"

namespace kiln {
namespace {

struct Mlp {
  int64_t k = 37, n = 19;  // odd sizes: no vector-width tails hidden
  std::vector<float> w = test::random_floats(k * n, 1), b = test::random_floats(n, 2);

  Network network() const {
    Network net;
    TensorId x = net.add_input("x", DataType::kFloat32, {-1, k});
    TensorId tw = net.add_constant("w", DataType::kFloat32, {k, n}, w.data(), w.size() * 4);
    TensorId tb = net.add_constant("b", DataType::kFloat32, {1, n}, b.data(), b.size() * 4);
    TensorId y = net.add_matmul(x, tw, false, false, "fc").outputs[0];
    y = net.add_elementwise(y, tb, "add", "bias").outputs[0];
    y = net.add_activation(y, "relu", 0.0, "relu").outputs[0];
    net.mark_output(y, "y");
    return net;
  }

  BuilderConfig config(BuildTarget target) const {
    BuilderConfig c;
    c.target = target;
    c.profiles.push_back({{{"x", {{1, k}, {8, k}, {64, k}}}}});
    return c;
  }

  std::vector<float> expected(const std::vector<float>& x, int64_t m) const {
    std::vector<float> y(m * n);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = b[j];
        for (int64_t p = 0; p < k; ++p) acc += double{x[i * k + p]} * w[p * n + j];
        y[i * n + j] = acc > 0 ? static_cast<float>(acc) : 0.f;
      }
    }
    return y;
  }
};

void check_slice(BuildTarget target, Backend backend) {
  Mlp mlp;
  Plan built = Builder().build(mlp.network(), mlp.config(target));
  std::vector<uint8_t> bytes = built.serialize();
  auto engine = Engine::create(Plan::deserialize(bytes), backend);
  for (int64_t m : {1, 5, 64}) {
    auto x = test::random_floats(m * mlp.k, 100 + static_cast<uint32_t>(m));
    auto out = test::run_float(engine, {{"x", {{m, mlp.k}, x}}});
    auto want = mlp.expected(x, m);
    ASSERT_EQ(out["y"].size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      // FP32 with FP32 accumulation over k=37 terms of magnitude <= 1: rounding stays far below 1e-5.
      ASSERT_NEAR(out["y"][i], want[i], 1e-5f) << "m=" << m << " i=" << i;
    }
  }
}

TEST(VerticalSlice, ReferenceBackendMatchesLoop) {
  check_slice(BuildTarget::kReference, Backend::kReference);
}

TEST(VerticalSlice, CudaMatchesLoop) {
  KILN_REQUIRE_GPU();
  check_slice(BuildTarget::kCuda, Backend::kCuda);
}

TEST(VerticalSlice, CudaPlanRunsOnReferenceBackend) {
  KILN_REQUIRE_GPU();
  check_slice(BuildTarget::kCuda, Backend::kReference);
}

TEST(VerticalSlice, ShapeOutsideProfileIsRefused) {
  Mlp mlp;
  auto engine = Engine::create(Builder().build(mlp.network(), mlp.config(BuildTarget::kReference)),
                               Backend::kReference);
  auto ctx = engine->create_execution_context();
  try {
    ctx->set_input_shape("x", {65, mlp.k});
    FAIL() << "a shape above the profile's max was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside optimization profile"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ctx->set_input_shape("x", {4, mlp.k + 1}), Error);
  EXPECT_THROW(ctx->set_input_shape("nope", {4, mlp.k}), Error);
}

TEST(VerticalSlice, ReferencePlanRefusedByCuda) {
  KILN_REQUIRE_GPU();
  Mlp mlp;
  Plan plan = Builder().build(mlp.network(), mlp.config(BuildTarget::kReference));
  EXPECT_THROW(Engine::create(plan, Backend::kCuda), Error);
}

TEST(VerticalSlice, MissingProfileIsRefusedAtBuild) {
  Mlp mlp;
  BuilderConfig c;
  c.target = BuildTarget::kReference;
  try {
    Builder().build(mlp.network(), c);
    FAIL() << "a dynamic network without a profile was built";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no optimization profile"), std::string::npos) << e.what();
  }
}

TEST(VerticalSlice, BadLayersAreRefusedWhenAdded) {
  Network net;
  TensorId a = net.add_input("a", DataType::kFloat32, {4, 5});
  TensorId b = net.add_input("b", DataType::kFloat32, {6, 7});
  try {
    net.add_matmul(a, b, false, false, "mm");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 'mm' (matmul)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(net.add_elementwise(a, b, "add"), Error);
  EXPECT_THROW(net.add_activation(a, "nonsense"), Error);
  TensorId i = net.add_input("i", DataType::kInt32, {4, 5});
  EXPECT_THROW(net.add_elementwise(a, i, "add"), Error);
}

}  // namespace
}  // namespace kiln
