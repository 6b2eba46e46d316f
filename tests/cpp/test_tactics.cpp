// Build step 6 (choose_tactics): picks the fastest tactic, skips failing ones, answers from the
// timing cache, and the choice survives plan serialization. The selection logic runs on the CPU
// with a test op whose reference kernel has tactics and a scripted timer; the GPU tests time a
// test CUDA kernel for real through the Builder.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "core/tactics.h"
#include "core/timing_cache.h"
#include "ir/logging.h"
#include "ir/op_schema.h"
#include "kernels/reference/host_access.h"
#include "test_util.h"

namespace kiln {
namespace {

// "test_tactic_relu": y = max(x, 0), registered only in this test. Its kernels offer three
// tactics on both backends. CUDA tactic 0 runs the built-in relu once, tactic 1 runs it 50 times
// (same result, honestly slower), tactic 2 throws (cannot run). With g_wrong_tactics, tactic 3
// writes nothing and tactic 4 computes x instead (both faster than any right one).
std::vector<int> g_created_tactics;  // "tactic" of every TacticRelu created, in order
int g_tactic_count = 3;              // what TacticRelu offers (tactics past 2 run as tactic 0)
int g_less_precise = -1;             // the tactic TacticRelu calls less precise, if any
bool g_wrong_tactics = false;

class TacticRelu final : public Kernel {
 public:
  TacticRelu(const Layer& l, Backend backend)
      : tactic_(static_cast<int>(l.attrs.get_int("tactic", int64_t{-1}))) {
    Layer relu;
    relu.name = l.name;
    relu.op = "activation";
    relu.attrs.set("type", std::string("relu")).set("alpha", 0.0);
    relu_ = create_kernel(relu, backend);
    relu.attrs.set("type", std::string("leaky_relu")).set("alpha", 1.0);  // y = x
    identity_ = create_kernel(relu, backend);
    g_created_tactics.push_back(tactic_);
  }
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    KILN_CHECK(tactic_ != 2, "test_tactic_relu: tactic 2 cannot run");
    if (g_wrong_tactics && tactic_ == 3) return;
    if (g_wrong_tactics && tactic_ == 4) return identity_->run(in, out, ctx);
    const int repeats = tactic_ == 1 ? 50 : 1;
    for (int i = 0; i < repeats; ++i) relu_->run(in, out, ctx);
  }
  std::string name() const override { return "test_tactic_relu"; }
  int num_tactics() const override { return g_tactic_count; }
  bool less_precise_tactic(int t) const override { return t == g_less_precise; }

 private:
  int tactic_;
  std::unique_ptr<Kernel> relu_, identity_;
};

void register_test_op() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Its kernels have tactics, so it declares the "tactic" attribute the builder sets.
    register_schema({"test_tactic_relu",
                     1,
                     1,
                     [](const Layer&, const std::vector<TensorDesc>& in) {
                       return std::vector<TensorDesc>{{in[0].dtype, in[0].dims}};
                     },
                     {{"tactic", AttrType::kInt, AttrValue{int64_t{-1}}, "set by the builder"}}});
    for (Backend b : {Backend::kReference, Backend::kCuda}) {
      register_kernel("test_tactic_relu", b,
                      [b](const Layer& l) { return std::make_unique<TacticRelu>(l, b); });
    }
  });
}

// x [-1, 300] -> test_tactic_relu -> y, plus a second identical layer (same timing key).
Network tactic_network() {
  register_test_op();
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {-1, 300});
  TensorId h = net.add_layer("test_tactic_relu", {x}, {}, "first").outputs[0];
  TensorId y = net.add_layer("test_tactic_relu", {h}, {}, "second").outputs[0];
  net.mark_output(y, "y");
  return net;
}

std::vector<OptimizationProfile> profiles() { return {{{{"x", {{1, 300}, {64, 300}, {128, 300}}}}}}; }

TEST(Tactics, PicksTheFastestAndSkipsFailures) {
  Network net = tactic_network();
  int calls = 0;
  TacticTimer timer = [&](const Layer& l, int n, const std::vector<TensorDesc>& in,
                          const std::vector<TensorDesc>& out) {
    ++calls;
    EXPECT_EQ(n, 3);
    EXPECT_EQ(in[0].dims, (Dims{64, 300})) << "timed at the profile's opt shapes";
    EXPECT_EQ(out[0].dims, (Dims{64, 300}));
    return std::vector<std::optional<double>>{0.5, std::nullopt, 0.25};
  };
  TimingCache cache;
  TacticStats stats;
  EXPECT_TRUE(
      choose_tactics(net, profiles(), Backend::kReference, timer, &cache, TimingEnvironment{}, &stats));
  EXPECT_EQ(calls, 1) << "the second layer has the same key: answered by the cache of this build";
  EXPECT_EQ(stats.layers, 2);
  EXPECT_EQ(stats.timed, 1);
  EXPECT_EQ(stats.cache_hits, 1);
  for (const auto& l : net.layers()) EXPECT_EQ(l.attrs.get_int("tactic", int64_t{-7}), 2) << l.name;
  EXPECT_EQ(cache.size(), 1u);
  // Nothing changes the second time.
  EXPECT_FALSE(choose_tactics(net, profiles(), Backend::kReference, timer, &cache, TimingEnvironment{}));
  EXPECT_EQ(calls, 1);
}

// A less precise tactic (a 16-bit convolution's plain cuDNN graph engine, which rounds before the
// bias) wins only when it beats every other by more than kLessPreciseMargin.
TEST(Tactics, LessPreciseTacticNeedsAMargin) {
  g_less_precise = 2;
  for (const auto& [other, want] : {std::pair<double, int>{0.31, 1}, {0.34, 2}}) {
    Network net = tactic_network();
    TacticTimer timer = [&, other = other](const Layer&, int, const std::vector<TensorDesc>&,
                                           const std::vector<TensorDesc>&) {
      return std::vector<std::optional<double>>{0.5, other, 0.3};
    };
    choose_tactics(net, profiles(), Backend::kReference, timer, nullptr, TimingEnvironment{});
    for (const auto& l : net.layers())
      EXPECT_EQ(l.attrs.get_int("tactic", int64_t{-7}), want) << "tactic 1 at " << other << " ms against 0.3";
  }
  g_less_precise = -1;
}

// KILN_LESS_PRECISE_MARGIN sets the margin ("inf": never such a tactic), with a timing cache entry
// of its own; a malformed value is refused, naming the variable.
TEST(Tactics, LessPreciseMarginFromTheEnvironment) {
  g_less_precise = 2;
  TimingCache cache;
  int calls = 0;
  TacticTimer timer = [&](const Layer&, int, const std::vector<TensorDesc>&, const std::vector<TensorDesc>&) {
    ++calls;
    return std::vector<std::optional<double>>{0.5, 0.5, 0.2};  // the less precise one 2.5x faster
  };
  for (const auto& [value, want] : {std::pair<const char*, int>{"", 2}, {"3", 0}, {"inf", 0}, {"2", 2}}) {
    setenv("KILN_LESS_PRECISE_MARGIN", value, 1);
    Network net = tactic_network();
    choose_tactics(net, profiles(), Backend::kReference, timer, &cache, TimingEnvironment{});
    for (const auto& l : net.layers())
      EXPECT_EQ(l.attrs.get_int("tactic", int64_t{-7}), want) << "KILN_LESS_PRECISE_MARGIN=" << value;
  }
  EXPECT_EQ(calls, 4);  // each margin timed once, not answered by another margin's entry
  for (const char* bad : {"0.5", "fast", "1.5x"}) {
    setenv("KILN_LESS_PRECISE_MARGIN", bad, 1);
    Network net = tactic_network();
    try {
      choose_tactics(net, profiles(), Backend::kReference, timer, nullptr, TimingEnvironment{});
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("KILN_LESS_PRECISE_MARGIN"), std::string::npos) << e.what();
    }
  }
  unsetenv("KILN_LESS_PRECISE_MARGIN");
  g_less_precise = -1;
}

TEST(Tactics, AllFailingKeepsTheHeuristic) {
  Network net = tactic_network();
  TacticTimer timer = [&](const Layer&, int n, const std::vector<TensorDesc>&,
                          const std::vector<TensorDesc>&) {
    return std::vector<std::optional<double>>(static_cast<size_t>(n));
  };
  TimingCache cache;
  EXPECT_FALSE(choose_tactics(net, profiles(), Backend::kReference, timer, &cache, TimingEnvironment{}));
  for (const auto& l : net.layers()) EXPECT_FALSE(l.attrs.has("tactic")) << l.name;
  EXPECT_EQ(cache.size(), 0u);
}

// A kernel that offers another set of tactics (the convolution's cuDNN graph tactics with
// KILN_CUDNN_GRAPH=1) is timed again rather than answered from the other set's entry.
TEST(Tactics, AnotherTacticCountIsTimedAgain) {
  TimingCache cache;
  int calls = 0, last_count = 0;
  TacticTimer timer = [&](const Layer&, int n, const std::vector<TensorDesc>&,
                          const std::vector<TensorDesc>&) {
    ++calls;
    last_count = n;
    return std::vector<std::optional<double>>(static_cast<size_t>(n), 0.5);
  };
  Network net = tactic_network();
  choose_tactics(net, profiles(), Backend::kReference, timer, &cache, TimingEnvironment{});
  EXPECT_EQ(calls, 1);
  g_tactic_count = 4;
  Network more = tactic_network();
  choose_tactics(more, profiles(), Backend::kReference, timer, &cache, TimingEnvironment{});
  g_tactic_count = 3;
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(last_count, 4);
  EXPECT_EQ(cache.size(), 2u);
}

TEST(Tactics, CacheFromAnotherEnvironmentIsNotUsed) {
  Network net = tactic_network();
  TimingCache cache;
  TacticTimer first = [&](const Layer&, int, const std::vector<TensorDesc>&, const std::vector<TensorDesc>&) {
    return std::vector<std::optional<double>>{0.1, 0.2, 0.3};
  };
  choose_tactics(net, profiles(), Backend::kReference, first, &cache, TimingEnvironment{90, 1, 1, 1, 1});
  int calls = 0;
  TacticTimer second = [&](const Layer&, int, const std::vector<TensorDesc>&,
                           const std::vector<TensorDesc>&) {
    ++calls;
    return std::vector<std::optional<double>>{0.3, 0.1, 0.2};
  };
  // Same GPU and libraries: from the cache, the timer is not called.
  Network again = tactic_network();
  choose_tactics(again, profiles(), Backend::kReference, second, &cache, TimingEnvironment{90, 1, 1, 1, 1});
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(again.layers()[0].attrs.get_int("tactic", int64_t{-1}), 0);
  // Another GPU: timed again.
  Network other = tactic_network();
  choose_tactics(other, profiles(), Backend::kReference, second, &cache, TimingEnvironment{80, 1, 1, 1, 1});
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(other.layers()[0].attrs.get_int("tactic", int64_t{-1}), 1);
}

TEST(Tactics, TacticAttributeSurvivesPlanSerialization) {
  Network net = tactic_network();
  net.mutable_layers()[0].attrs.set("tactic", int64_t{1});
  BuilderConfig config;
  config.target = BuildTarget::kReference;
  config.profiles = profiles();
  Plan plan = Builder().build(net, config);
  Plan back = Plan::deserialize(plan.serialize());
  ASSERT_EQ(back.network.layers().size(), 2u);
  EXPECT_EQ(back.network.layers()[0].attrs.get_int("tactic", int64_t{-1}), 1);
  EXPECT_FALSE(back.network.layers()[1].attrs.has("tactic"));
  // And the kernel of the loaded engine is created with it.
  g_created_tactics.clear();
  auto engine = Engine::create(back, Backend::kReference);
  EXPECT_EQ(g_created_tactics, (std::vector<int>{1, -1}));
  auto out = test::run_float(engine, {{"x", {{2, 300}, test::random_floats(600, 3)}}});
  for (float v : out["y"]) EXPECT_GE(v, 0.f);
}

// GPU: the builder times the test kernel for real: tactic 1 runs 50 relus, tactic 2 throws.
// What the CUDA timer compares: samples of each output (all of a small one, every s-th of a large
// one with s prime to 210), agreeing within a relative L2 distance of kTacticAgreement, NaN or
// infinity where the other has a finite value counting against it.
TEST(Tactics, OutputsAgreeOrSayWhy) {
  EXPECT_EQ(tactic_sample_stride(1000), 1u);
  EXPECT_EQ(tactic_sample_stride(kTacticSamples), 1u);
  for (size_t n :
       {kTacticSamples + 1, 3 * kTacticSamples, 100 * kTacticSamples, size_t{256} * 56 * 56 * 256}) {
    const size_t s = tactic_sample_stride(n);
    EXPECT_TRUE(s % 2 && s % 3 && s % 5 && s % 7) << n << ": " << s;
    EXPECT_LE((n - 1) / s + 1, kTacticSamples) << n;
    EXPECT_GT((n - 1) / s + 1, kTacticSamples / 12) << n;  // at most 10 past the ratio
  }
  const auto bytes = [](DataType t, const std::vector<double>& v) {
    std::vector<uint8_t> b(v.size() * dtype_size(t));
    const TensorView view{b.data(), t, {static_cast<int64_t>(v.size())}};
    for (size_t i = 0; i < v.size(); ++i) store_element(view, static_cast<int64_t>(i), v[i]);
    return b;
  };
  const std::vector<float> random = test::random_floats(4000, 3);
  std::vector<double> x(random.begin(), random.end()), close = x, relu = x, shifted = x;
  for (size_t i = 0; i < x.size(); ++i) {
    close[i] = x[i] * (1 + 1e-3 * ((i % 3) - 1.0));
    relu[i] = std::max(x[i], 0.0);
    shifted[i] = x[(i + 1) % x.size()];
  }
  for (DataType t : {DataType::kFloat32, DataType::kFloat16, DataType::kBFloat16, DataType::kFloat8E4M3}) {
    SCOPED_TRACE(dtype_name(t));
    EXPECT_EQ(tactic_outputs_disagree(t, bytes(t, x), bytes(t, x)), "");
    EXPECT_EQ(tactic_outputs_disagree(t, bytes(t, x), bytes(t, close)), "");
    EXPECT_NE(tactic_outputs_disagree(t, bytes(t, x), bytes(t, relu)).find("relative L2 distance"),
              std::string::npos);
    EXPECT_NE(tactic_outputs_disagree(t, bytes(t, x), bytes(t, shifted)), "");
    EXPECT_NE(tactic_outputs_disagree(t, bytes(t, x), std::vector<uint8_t>(x.size() * dtype_size(t), 0)), "");
    // Unwritten (the NaN bytes the timer fills outputs with).
    const std::string nan =
        tactic_outputs_disagree(t, bytes(t, x), std::vector<uint8_t>(x.size() * dtype_size(t), 0xff));
    EXPECT_NE(nan.find("4000 of 4000 compared values are NaN or infinite"), std::string::npos) << nan;
    // Both NaN at the same places agree; a few overflows where the other is finite are tolerated.
    std::vector<double> some_nan = x, few_inf = x;
    for (size_t i = 0; i < x.size(); i += 100) some_nan[i] = NAN;
    few_inf[7] = INFINITY;
    EXPECT_EQ(tactic_outputs_disagree(t, bytes(t, some_nan), bytes(t, some_nan)), "");
    if (t != DataType::kFloat8E4M3) EXPECT_EQ(tactic_outputs_disagree(t, bytes(t, x), bytes(t, few_inf)), "");
  }
  // int8: a value one step off here and there (rounding to the other neighbour) agrees.
  std::vector<double> q(4000), q_off;
  for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<double>(static_cast<int>(i * 37 % 255) - 127);
  q_off = q;
  for (size_t i = 0; i < q.size(); i += 10) q_off[i] += q[i] < 127 ? 1 : -1;
  EXPECT_EQ(
      tactic_outputs_disagree(DataType::kInt8, bytes(DataType::kInt8, q), bytes(DataType::kInt8, q_off)), "");
  EXPECT_NE(tactic_outputs_disagree(DataType::kInt8, bytes(DataType::kInt8, q),
                                    std::vector<uint8_t>(q.size(), 0xff)),
            "");
  EXPECT_EQ(tactic_outputs_disagree(DataType::kFloat32, {}, {}), "") << "nothing to compare";
  EXPECT_THROW(tactic_outputs_disagree(DataType::kFloat32, bytes(DataType::kFloat32, x), {}), Error);
}

// The CUDA timer runs each tactic once on the same inputs and does not take one whose output
// disagrees with the first tactic's: one that writes nothing and one that computes x instead of
// relu(x), both faster than the right ones, are left out with a warning saying why.
TEST(Tactics, CudaTacticThatDisagreesIsNotTaken) {
  KILN_REQUIRE_GPU();
  g_wrong_tactics = true;
  g_tactic_count = 5;
  std::vector<std::string> warnings;
  std::mutex mutex;
  set_log_sink([&](Severity s, const std::string& m) {
    std::lock_guard<std::mutex> lock(mutex);
    if (s == Severity::kWarning) warnings.push_back(m);
  });
  BuilderConfig config;
  config.target = BuildTarget::kCuda;
  config.profiles = profiles();
  Plan plan = Builder().build(tactic_network(), config);
  set_log_sink(nullptr);
  g_wrong_tactics = false;
  g_tactic_count = 3;
  for (const auto& l : plan.network.layers())
    EXPECT_EQ(l.attrs.get_int("tactic", int64_t{-1}), 0) << l.name << ": tactics 3 and 4 are wrong";
  bool unwritten = false, other_values = false;
  for (const auto& m : warnings) {
    unwritten |= m.find("tactic 3 not taken") != std::string::npos &&
                 m.find("NaN or infinite") != std::string::npos &&
                 m.find("against tactic 0") != std::string::npos;
    other_values |= m.find("tactic 4 not taken") != std::string::npos &&
                    m.find("relative L2 distance") != std::string::npos;
  }
  EXPECT_TRUE(unwritten) << ::testing::PrintToString(warnings);
  EXPECT_TRUE(other_values) << ::testing::PrintToString(warnings);
}

TEST(Tactics, CudaBuilderTimesAndCaches) {
  KILN_REQUIRE_GPU();
  const std::string cache_path =
      ::testing::TempDir() + "kiln_tactics_" + std::to_string(::getpid()) + ".cache";
  std::remove(cache_path.c_str());
  BuilderConfig config;
  config.target = BuildTarget::kCuda;
  config.profiles = profiles();
  config.timing_cache_path = cache_path;
  Plan plan = Builder().build(tactic_network(), config);
  for (const auto& l : plan.network.layers()) {
    EXPECT_EQ(l.attrs.get_int("tactic", int64_t{-1}), 0) << l.name << ": 1 relu beats 50, tactic 2 throws";
  }
  TimingCache cache = TimingCache::load(cache_path);
  EXPECT_EQ(cache.size(), 1u);
  // A rebuild reads the cache: the log says so and nothing is timed.
  std::vector<std::string> lines;
  std::mutex mutex;
  set_log_level(Severity::kVerbose);
  set_log_sink([&](Severity, const std::string& m) {
    std::lock_guard<std::mutex> lock(mutex);
    lines.push_back(m);
  });
  Plan again = Builder().build(tactic_network(), config);
  set_log_sink(nullptr);
  set_log_level(Severity::kWarning);
  bool from_cache = false;
  for (const auto& m : lines) from_cache |= m.find("2 from the timing cache") != std::string::npos;
  EXPECT_TRUE(from_cache);
  EXPECT_EQ(again.network.layers()[0].attrs.get_int("tactic", int64_t{-1}), 0);
  // Timing off: heuristics only, no attribute.
  config.tactic_timing = false;
  Plan heuristic = Builder().build(tactic_network(), config);
  EXPECT_FALSE(heuristic.network.layers()[0].attrs.has("tactic"));
  auto engine = Engine::create(plan, Backend::kCuda);
  auto x = test::random_floats(64 * 300, 9);
  auto out = test::run_float(engine, {{"x", {{64, 300}, x}}});
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(out["y"][i], std::max(x[i], 0.f)) << i;
  std::remove(cache_path.c_str());
}

}  // namespace
}  // namespace kiln
