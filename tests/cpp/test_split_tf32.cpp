// fully_connected's 3xTF32 tactics (kernels/cuda/matmul.cpp): the workspace arithmetic (host code,
// runs everywhere) and, on a GPU, every such tactic against float64 beside float32's own GEMM
// (tactic 0), with K in one chunk and in several, with each epilogue path, and the workspace the
// builder gives an engine whose layer takes one.
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/matmul_epilogue.h"
#include "test_util.h"

namespace kiln {
namespace {

constexpr int kFirstSplitTactic = 9;  // matmul.cpp's kSplitTactic
constexpr int kSplitTactics = 4;

TEST(SplitTf32, ChunksFitTheWorkspaceAndCoverK) {
  for (int64_t m : {1, 37, 4096, 65536}) {
    for (int64_t n : {1, 768, 3072}) {
      for (int64_t k : {1, 3, 255, 768, 3072, 10000}) {
        for (size_t ws : {size_t{0}, kSplitTf32LtBytes, size_t{32} << 20, size_t{68} << 20,
                          split_tf32_workspace(m, n, k)}) {
          SCOPED_TRACE(std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) + " in " +
                       std::to_string(ws));
          const SplitTf32Chunks c = split_tf32_chunks(m, n, k, ws);
          if (c.columns == 0) continue;
          EXPECT_GE(c.columns, std::min<int64_t>(k, kSplitTf32MinColumns));
          EXPECT_LE(c.columns, k);
          EXPECT_TRUE(c.columns == k || c.columns % 4 == 0);
          EXPECT_EQ(c.w_offset % 256, 0u);
          EXPECT_EQ(c.lt_offset % 256, 0u);
          EXPECT_GE(c.w_offset, 8 * static_cast<size_t>(m * c.columns));
          EXPECT_GE(c.lt_offset - c.w_offset, 8 * static_cast<size_t>(n * c.columns));
          EXPECT_LE(c.lt_offset + kSplitTf32LtBytes, ws);
        }
        // What the tactic asks for holds all of K when that is within the cap.
        const size_t want = split_tf32_workspace(m, n, k);
        const SplitTf32Chunks whole = split_tf32_chunks(m, n, k, want);
        if (8 * static_cast<size_t>((m + n) * k) + 512 <= kSplitTf32MaxScratch) {
          EXPECT_EQ(whole.columns, k) << m << "x" << n << "x" << k;
        }
      }
    }
  }
  EXPECT_EQ(split_tf32_chunks(4096, 768, 3072, size_t{32} << 20).columns, 616);  // 5 chunks
  EXPECT_EQ(split_tf32_chunks(4096, 768, 3072, split_tf32_workspace(4096, 768, 3072)).columns, 1024);
  EXPECT_EQ(split_tf32_chunks(4096, 3072, 768, split_tf32_workspace(4096, 3072, 768)).columns, 768);
  EXPECT_EQ(split_tf32_chunks(8, 8, 8, kSplitTf32LtBytes).columns, 0);  // nothing beside cuBLASLt's share
}

// KILN_SPLIT_TF32=0: the builder is offered no split tactic, and a layer that chose one (a plan
// built without the setting) runs float32's own GEMM under its float32 name. Kernel objects only:
// runs everywhere.
TEST(SplitTf32, TheSettingTakesTheTacticsAwayAndChosenOnesBecomeTheFloat32Kernel) {
  Network net;
  const std::vector<float> w(8 * 4, 0.5f);
  const TensorId x = net.add_input("x", DataType::kFloat32, {2, 4});
  const TensorId wt = net.add_constant("w", DataType::kFloat32, {8, 4}, w.data(), w.size() * 4);
  net.mark_output(net.add_layer("fully_connected", {x, wt}, {}, "fc").outputs[0], "y");
  Layer layer = net.layers()[0];
  layer.attrs.set("tactic", int64_t{kFirstSplitTactic});
  EXPECT_EQ(create_kernel(layer, Backend::kCuda)->num_tactics(), kFirstSplitTactic + kSplitTactics);
  EXPECT_EQ(create_kernel(layer, Backend::kCuda)->name(), "cublaslt_fully_connected_3xtf32");
  EXPECT_GT(create_kernel(layer, Backend::kCuda)
                ->workspace_wanted({{DataType::kFloat32, {2, 4}}, {DataType::kFloat32, {8, 4}}}),
            0u);
  setenv("KILN_SPLIT_TF32", "0", 1);
  const std::unique_ptr<Kernel> off = create_kernel(layer, Backend::kCuda);
  unsetenv("KILN_SPLIT_TF32");
  EXPECT_EQ(off->num_tactics(), kFirstSplitTactic);
  EXPECT_EQ(off->name(), "cublaslt_fully_connected");
  EXPECT_EQ(off->workspace_wanted({{DataType::kFloat32, {2, 4}}, {DataType::kFloat32, {8, 4}}}), 0u);
}

struct FcCase {
  int64_t m = 0, n = 0, k = 0;
  bool bias = true;
  std::string activation = "none";
  bool residual = false;
};

// y = act(x w^T + bias) + residual in float64, from the float32 values.
std::vector<double> fc_float64(const FcCase& c, const std::vector<float>& x, const std::vector<float>& w,
                               const std::vector<float>& b, const std::vector<float>& r) {
  std::vector<double> y(static_cast<size_t>(c.m * c.n));
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.n; ++j) {
      double s = c.bias ? b[static_cast<size_t>(j)] : 0.0;
      for (int64_t t = 0; t < c.k; ++t) {
        s += static_cast<double>(x[static_cast<size_t>(i * c.k + t)]) * w[static_cast<size_t>(j * c.k + t)];
      }
      if (c.activation == "relu") s = std::max(s, 0.0);
      if (c.activation == "gelu") s = 0.5 * s * (1.0 + std::erf(s / std::sqrt(2.0)));
      if (c.residual) s += r[static_cast<size_t>(i * c.n + j)];
      y[static_cast<size_t>(i * c.n + j)] = s;
    }
  }
  return y;
}

struct FcNet {
  Network net;
  test::Feed feed;
  std::vector<double> want;
};

FcNet fc_net(const FcCase& c, uint32_t seed) {
  FcNet f;
  const std::vector<float> x = test::random_floats(static_cast<size_t>(c.m * c.k), seed, -2.f, 2.f);
  const std::vector<float> w = test::random_floats(static_cast<size_t>(c.n * c.k), seed + 1, -0.1f, 0.1f);
  const std::vector<float> b = test::random_floats(static_cast<size_t>(c.n), seed + 2);
  const std::vector<float> r = test::random_floats(static_cast<size_t>(c.m * c.n), seed + 3);
  const TensorId xt = f.net.add_input("x", DataType::kFloat32, {c.m, c.k});
  std::vector<TensorId> in{xt,
                           f.net.add_constant("w", DataType::kFloat32, {c.n, c.k}, w.data(), w.size() * 4)};
  if (c.bias) in.push_back(f.net.add_constant("b", DataType::kFloat32, {c.n}, b.data(), b.size() * 4));
  Attributes a;
  a.set("activation", c.activation);
  if (c.residual) {
    in.push_back(f.net.add_input("r", DataType::kFloat32, {c.m, c.n}));
    a.set("residual", int64_t{1});
    f.feed["r"] = {{c.m, c.n}, r};
  }
  f.net.mark_output(f.net.add_layer("fully_connected", in, a, "fc").outputs[0], "y");
  f.feed["x"] = {{c.m, c.k}, x};
  f.want = fc_float64(c, x, w, b, r);
  return f;
}

// The largest error against float64, over the largest magnitude of the result.
double relative_max_error(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0.0, scale = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return err / scale;
}

Layer& fc_layer(Plan& plan) {
  for (Layer& l : plan.network.mutable_layers()) {
    if (l.op == "fully_connected") return l;
  }
  throw Error("no fully_connected layer in the plan");
}

// Each 3xTF32 tactic, with K whole and in chunks, is close to float32's own GEMM: its largest error
// against float64 (relative to the largest output) is within 16 times tactic 0's and below 1e-5,
// where one TF32 pass is near 3e-4 (a CPU simulation). Not as close as the products' 2^-21 would give: the
// tensor cores accumulate a chunk's sums with truncation (an H100, K = 1000 in one chunk: 2.7e-6 against
// float32's 2.9e-7; in chunks of 256 columns, each added to y in float32: 7.2e-7).
TEST(SplitTf32, CudaTacticsAreAsAccurateAsFloat32) {
  KILN_REQUIRE_GPU();
  std::vector<FcCase> cases;
  cases.push_back({300, 200, 1000, true, "relu", false});
  cases.push_back({256, 96, 768, true, "none", true});   // residual on the first GEMM's beta
  cases.push_back({130, 64, 515, true, "gelu", true});   // erf GELU and residual in our epilogue
  cases.push_back({64, 33, 100, false, "none", false});  // K and N not multiples of 4
  for (const FcCase& c : cases) {
    const FcNet f = fc_net(c, 11);
    BuilderConfig config;
    config.target = BuildTarget::kCuda;
    config.tactic_timing = false;
    Plan plan = Builder().build(f.net, config);
    fc_layer(plan).attrs.set("tactic", int64_t{0});
    const double fp32 =
        relative_max_error(test::run_float(Engine::create(plan, Backend::kCuda), f.feed).at("y"), f.want);
    EXPECT_LT(fp32, 1e-5);
    // All of K in one chunk, then chunks of kSplitTf32MinColumns columns (where K has more).
    const size_t whole = split_tf32_workspace(c.m, c.n, c.k);
    const size_t chunked =
        kSplitTf32LtBytes + 8 * static_cast<size_t>((c.m + c.n) * kSplitTf32MinColumns) + 512;
    for (size_t ws : {whole, chunked}) {
      for (int t = kFirstSplitTactic; t < kFirstSplitTactic + kSplitTactics; ++t) {
        SCOPED_TRACE(std::to_string(c.m) + "x" + std::to_string(c.n) + "x" + std::to_string(c.k) + " " +
                     c.activation + (c.residual ? " residual" : "") + " tactic " + std::to_string(t) +
                     " workspace " + std::to_string(ws));
        Plan p = plan;
        fc_layer(p).attrs.set("tactic", int64_t{t});
        p.memory.workspace_bytes = static_cast<int64_t>(ws);
        std::map<std::string, std::vector<float>> out;
        try {
          out = test::run_float(Engine::create(p, Backend::kCuda), f.feed);
        } catch (const Error& e) {  // cuBLASLt offers fewer algorithms for this shape
          EXPECT_NE(std::string(e.what()).find("is not available"), std::string::npos) << e.what();
          continue;
        }
        const double split = relative_max_error(out.at("y"), f.want);
        EXPECT_LE(split, 16.0 * fp32) << "float32 " << fp32 << ", 3xTF32 " << split;
        EXPECT_LE(split, 1e-5) << "float32 " << fp32 << ", 3xTF32 " << split;
      }
    }
  }
}

// A NaN in x reaches the same outputs through the split as through float32's GEMM (hi keeps it).
TEST(SplitTf32, CudaNanPropagatesAsInFloat32) {
  KILN_REQUIRE_GPU();
  FcNet f = fc_net({64, 40, 300, true, "relu", false}, 5);
  f.feed["x"].second[7 * 300 + 11] = NAN;
  BuilderConfig config;
  config.target = BuildTarget::kCuda;
  config.tactic_timing = false;
  Plan plan = Builder().build(f.net, config);
  fc_layer(plan).attrs.set("tactic", int64_t{kFirstSplitTactic});
  plan.memory.workspace_bytes = static_cast<int64_t>(split_tf32_workspace(64, 40, 300));
  const std::vector<float> y = test::run_float(Engine::create(plan, Backend::kCuda), f.feed).at("y");
  for (int64_t i = 0; i < 64; ++i) {
    for (int64_t j = 0; j < 40; ++j) {
      EXPECT_EQ(std::isnan(y[static_cast<size_t>(i * 40 + j)]), i == 7) << i << ", " << j;
    }
  }
}

// The engine's workspace is what the layer's tactic wants, where that is more than the configured
// size, and the configured size where the tactic wants less.
TEST(SplitTf32, CudaBuilderSizesTheWorkspaceForTheChosenTactic) {
  KILN_REQUIRE_GPU();
  FcNet f = fc_net({512, 768, 768, true, "none", false}, 3);
  for (Layer& l : f.net.mutable_layers()) {
    if (l.op == "fully_connected") l.attrs.set("tactic", int64_t{kFirstSplitTactic});
  }
  BuilderConfig config;
  config.target = BuildTarget::kCuda;
  config.tactic_timing = false;
  Plan first = Builder().build(f.net, config);
  ASSERT_EQ(fc_layer(first).attrs.get_int("tactic", int64_t{-1}), kFirstSplitTactic);
  EXPECT_EQ(first.memory.workspace_bytes, int64_t{32} << 20);  // the tactic wants 11.9 MB
  config.workspace_bytes = size_t{1} << 20;
  const Plan plan = Builder().build(f.net, config);
  EXPECT_EQ(plan.memory.workspace_bytes, static_cast<int64_t>(split_tf32_workspace(512, 768, 768)));
  const std::vector<float> y = test::run_float(Engine::create(plan, Backend::kCuda), f.feed).at("y");
  EXPECT_LT(relative_max_error(y, f.want), 1e-5);
}

}  // namespace
}  // namespace kiln
