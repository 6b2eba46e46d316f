// INT8 calibration in the native C++ API (core/calibration.h): the range algorithms, the cache
// text, and a build with an Int8Calibrator (batches, then the cache alone; a foreign cache and a
// missing calibrator refused).
#include "core/calibration.h"

#include <cmath>

#include "ir/float8.h"
#include "ir/logging.h"

#include "test_util.h"

namespace kiln {
namespace {

using test::random_floats;

TEST(Calibration, RangeAlgorithmsOnKnownHistograms) {
  const std::vector<double> flat(1000, 1.0);
  EXPECT_DOUBLE_EQ(calibrated_range(flat, 0.01, CalibrationAlgorithm::kPercentile, 50.0), 500 * 0.01);
  EXPECT_DOUBLE_EQ(calibrated_range(flat, 0.01, CalibrationAlgorithm::kMinMax, 99.99), 1000 * 0.01);
  // All mass in the first 10 bins of 2048: at a threshold of 128 bins the 128 levels are the bins
  // themselves, so the quantized distribution is exact (KL 0) and nothing smaller is tried.
  std::vector<double> narrow(2048, 0.0);
  for (int k = 0; k < 10; ++k) narrow[k] = 1.0 + k;
  EXPECT_DOUBLE_EQ(calibrated_range(narrow, 0.5, CalibrationAlgorithm::kEntropy, 0), 128.5 * 0.5);
  // A long thin tail is clipped: the entropy threshold lies well inside the histogram.
  std::vector<double> tail(2048, 1e-3);
  for (int k = 0; k < 200; ++k) tail[k] = 1000.0;
  const double r = calibrated_range(tail, 1.0, CalibrationAlgorithm::kEntropy, 0);
  EXPECT_GE(r, 128.0);
  EXPECT_LT(r, 1024.0);
  EXPECT_THROW(calibrated_range(flat, 1.0, CalibrationAlgorithm::kPercentile, 0.0), Error);
  EXPECT_THROW(parse_calibration_algorithm("kl"), Error);
}

TEST(Calibration, CacheTextRoundTripsAndRefusesGarbage) {
  const std::vector<std::pair<std::string, double>> ranges = {{"x", 3.25}, {"conv/out", 0.1}};
  const std::string text = format_calibration_cache(ranges, CalibrationAlgorithm::kPercentile);
  EXPECT_EQ(text.rfind("# kiln calibration cache v1\nalgorithm percentile\n", 0), 0u) << text;
  EXPECT_EQ(parse_calibration_cache(text), ranges);  // hexadecimal floats: exact
  EXPECT_THROW(parse_calibration_cache("something else\n"), Error);
  EXPECT_THROW(parse_calibration_cache("# kiln calibration cache v1\nx\n"), Error);
  EXPECT_THROW(parse_calibration_cache("# kiln calibration cache v1\nx -1\n"), Error);
  EXPECT_THROW(parse_calibration_cache("# kiln calibration cache v1\nx 1 2\n"), Error);
}

// Batches of random float32 inputs named "x", and a cache kept in memory.
class VectorCalibrator : public Int8Calibrator {
 public:
  VectorCalibrator(int batches, Dims dims) : dims_(std::move(dims)) {
    for (int b = 0; b < batches; ++b)
      data_.push_back(random_floats(static_cast<size_t>(volume(dims_)), 10 + b));
  }
  bool get_batch(const std::vector<std::string>& names, std::vector<CalibrationInput>& batch) override {
    EXPECT_EQ(names, std::vector<std::string>{"x"});
    if (next_ == data_.size()) return false;
    batch.push_back({"x", DataType::kFloat32, dims_, data_[next_++].data()});
    return true;
  }
  std::string read_cache() override { return cache; }
  void write_cache(const std::string& text) override { cache = text; }
  CalibrationAlgorithm algorithm() const override { return CalibrationAlgorithm::kMinMax; }

  std::string cache;
  size_t batches_read() const { return next_; }

 private:
  Dims dims_;
  std::vector<std::vector<float>> data_;
  size_t next_ = 0;
};

// x [2, 3, 5, 5] -> conv 4x3x3x3 -> relu -> flatten -> fully_connected 6.
Network conv_fc(const std::string& conv_name = "conv") {
  Network net;
  const TensorId x = net.add_input("x", DataType::kFloat32, {2, 3, 5, 5});
  const auto w = random_floats(4 * 3 * 9, 1, -0.5f, 0.5f), fw = random_floats(6 * 100, 2, -0.2f, 0.2f);
  const TensorId cw = net.add_constant("conv_w", DataType::kFloat32, {4, 3, 3, 3}, w.data(), w.size() * 4);
  const TensorId fcw = net.add_constant("fc_w", DataType::kFloat32, {6, 100}, fw.data(), fw.size() * 4);
  Attributes conv;
  conv.set("pads", std::vector<int64_t>{1, 1});
  TensorId t = net.add_layer("convolution", {x, cw}, conv, conv_name).outputs[0];
  t = net.add_activation(t, "relu", std::nullopt, "relu").outputs[0];
  Attributes flat;
  flat.set("start_dim", int64_t{1});
  t = net.add_layer("flatten", {t}, flat, "flat").outputs[0];
  net.mark_output(net.add_layer("fully_connected", {t, fcw}, {}, "fc").outputs[0], "y");
  return net;
}

BuilderConfig int8_config(std::shared_ptr<Int8Calibrator> calibrator) {
  BuilderConfig config;
  config.target = BuildTarget::kReference;
  enable_precision(config.precision, "int8");
  config.int8_calibrator = std::move(calibrator);
  return config;
}

std::vector<std::string> ops(const Plan& plan) {
  std::vector<std::string> out;
  for (const auto& l : plan.network.layers()) out.push_back(l.op);
  return out;
}

TEST(Calibration, BuildFakeQuantizesActivationsAndWeightsThenReusesTheCache) {
  auto calibrator = std::make_shared<VectorCalibrator>(3, Dims{2, 3, 5, 5});
  const Plan plan = Builder().build(conv_fc(), int8_config(calibrator));
  const auto layers = ops(plan);
  // Two quantized activations: x (the convolution's, which became an INT8 layer: a quantize) and
  // the fc's input (a fake_quantize: 100 features are no multiple of 16).
  const auto quantizations = [](const std::vector<std::string>& ops) {
    return std::count(ops.begin(), ops.end(), "fake_quantize") +
           std::count(ops.begin(), ops.end(), "quantize");
  };
  EXPECT_EQ(quantizations(layers), 2) << ::testing::PrintToString(layers);
  EXPECT_EQ(calibrator->batches_read(), 3u);
  const auto ranges = parse_calibration_cache(calibrator->cache);
  ASSERT_EQ(ranges.size(), 2u) << calibrator->cache;
  EXPECT_EQ(ranges[1].first, "x");
  EXPECT_GT(ranges[1].second, 0.9);  // minmax of uniform [-1, 1) samples
  EXPECT_LE(ranges[1].second, 1.0);
  // Each conv weight channel now lies on its own 127-step grid: the INT8 layer's int8 weight
  // reaches +-127 in every channel (its input channels zero-padded 3 -> 16), a float one is on the
  // grid.
  int grids = 0;
  for (const auto& t : plan.network.tensors()) {
    if (t.name.rfind("conv_w/int8_per_channel", 0) != 0 || !t.data ||
        t.name.find("int8_scale_bias") != std::string::npos)
      continue;
    ++grids;
    if (t.dtype == DataType::kInt8) {
      ASSERT_EQ(t.dims, (Dims{4, 3, 3, 16}));  // channels last: [K, R, S, C]
      const auto* q = reinterpret_cast<const int8_t*>(t.data->data());
      for (int k = 0; k < 4; ++k) {
        int top = 0;
        for (int j = 0; j < 16 * 9; ++j) top = std::max(top, std::abs(static_cast<int>(q[k * 144 + j])));
        EXPECT_EQ(top, 127) << k;
        for (int j = 0; j < 144; ++j) {
          if (j % 16 >= 3) EXPECT_EQ(q[k * 144 + j], 0) << k << " " << j;  // the padded channels
        }
      }
      continue;
    }
    const auto* w = reinterpret_cast<const float*>(t.data->data());
    for (int k = 0; k < 4; ++k) {
      float amax = 0;
      for (int j = 0; j < 27; ++j) amax = std::max(amax, std::fabs(w[k * 27 + j]));
      for (int j = 0; j < 27; ++j) {
        const float steps = w[k * 27 + j] / (amax / 127);
        EXPECT_NEAR(steps, std::nearbyint(steps), 1e-3) << k << " " << j;
      }
    }
  }
  EXPECT_GE(grids, 1);
  // A calibrator with no batches and the cache: the same engine, nothing run.
  auto cached = std::make_shared<VectorCalibrator>(0, Dims{2, 3, 5, 5});
  cached->cache = calibrator->cache;
  const Plan again = Builder().build(conv_fc(), int8_config(cached));
  EXPECT_EQ(ops(again), layers);
  const auto input = random_floats(150, 99);
  auto run = [&](const Plan& p) {
    return test::run_float(Engine::create(p, Backend::kReference), {{"x", {{2, 3, 5, 5}, input}}}).at("y");
  };
  EXPECT_EQ(run(again), run(plan));
  // Quantization moves the outputs, a little.
  const auto fp32 = run(Builder().build(conv_fc(), [] {
    BuilderConfig c;
    c.target = BuildTarget::kReference;
    return c;
  }()));
  float diff = 0;
  for (size_t i = 0; i < fp32.size(); ++i) diff = std::max(diff, std::fabs(fp32[i] - run(plan)[i]));
  EXPECT_GT(diff, 0.0f);
  EXPECT_LT(diff, 0.1f);
}

// A CUDA build calibrates on the GPU (the float32 network there, its observed tensors copied back):
// the ranges are the reference backend's, up to float32 rounding, and the INT8 engine it builds
// agrees with the reference-calibrated one run on the reference backend.
TEST(Calibration, CudaBuildCalibratesOnTheGpu) {
  KILN_REQUIRE_GPU();
  auto on_cpu = std::make_shared<VectorCalibrator>(3, Dims{2, 3, 5, 5});
  const Plan reference = Builder().build(conv_fc(), int8_config(on_cpu));
  auto on_gpu = std::make_shared<VectorCalibrator>(3, Dims{2, 3, 5, 5});
  BuilderConfig config = int8_config(on_gpu);
  config.target = BuildTarget::kCuda;
  std::vector<std::string> said;
  const Severity level = log_level();
  set_log_level(Severity::kInfo);
  set_log_sink([&](Severity, const std::string& m) { said.push_back(m); });
  const Plan plan = Builder().build(conv_fc(), config);
  set_log_sink({});
  set_log_level(level);
  EXPECT_EQ(on_gpu->batches_read(), 3u);
  int on_the_gpu = 0;
  for (const auto& m : said)
    on_the_gpu += m.find("INT8 calibration (minmax, on the GPU)") != std::string::npos;
  EXPECT_EQ(on_the_gpu, 3) << ::testing::PrintToString(said);
  const auto want = parse_calibration_cache(on_cpu->cache), got = parse_calibration_cache(on_gpu->cache);
  ASSERT_EQ(got.size(), want.size()) << on_gpu->cache;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].first, want[i].first);
    EXPECT_NEAR(got[i].second, want[i].second, 1e-5 * want[i].second) << got[i].first;
  }
  const auto input = random_floats(150, 99);
  const test::Feed feed = {{"x", {{2, 3, 5, 5}, input}}};
  const auto y = test::run_float(Engine::create(plan, Backend::kCuda), feed).at("y");
  const auto expected = test::run_float(Engine::create(reference, Backend::kReference), feed).at("y");
  ASSERT_EQ(y.size(), expected.size());
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], expected[i], 2e-2f) << i;
}

TEST(Calibration, Fp8QuantizesFullyConnectedInputsAndWeightsPerTensorE4m3) {
  auto calibrator = std::make_shared<VectorCalibrator>(2, Dims{2, 3, 5, 5});
  BuilderConfig config;
  config.target = BuildTarget::kReference;
  enable_precision(config.precision, "fp8");
  config.int8_calibrator = calibrator;
  const Plan plan = Builder().build(conv_fc(), config);
  int e4m3 = 0;
  for (const auto& l : plan.network.layers()) {
    if (l.op == "fake_quantize") {
      EXPECT_EQ(l.attrs.get_string("format", l.name), "e4m3") << l.name;
      ++e4m3;
    }
  }
  EXPECT_EQ(e4m3, 1);  // the fully_connected input only: FP8 leaves convolutions alone
  ASSERT_EQ(parse_calibration_cache(calibrator->cache).size(), 1u) << calibrator->cache;
  bool found = false;
  for (const auto& t : plan.network.tensors()) {
    if (t.name.rfind("fc_w/fp8_per_tensor", 0) != 0) continue;
    found = true;
    const auto* w = reinterpret_cast<const float*>(t.data->data());
    float amax = 0;
    for (int j = 0; j < 600; ++j) amax = std::max(amax, std::fabs(w[j]));
    for (int j = 0; j < 600; ++j) {
      const float v = w[j] / (amax / kFloat8E4M3Max);
      EXPECT_NEAR(v, e4m3_to_float(float_to_e4m3(v)), 1e-4f * (1 + std::fabs(v))) << j;  // on the grid
    }
  }
  EXPECT_TRUE(found);
  // INT8 and FP8 with one calibrator: refused.
  enable_precision(config.precision, "int8");
  try {
    Builder().build(conv_fc(), config);
    FAIL() << "int8 and fp8 with a calibrator were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("choose one"), std::string::npos) << e.what();
  }
}

TEST(Calibration, LayersPinnedToAPrecisionStayUnquantized) {
  // set_layer_precision("fc", float32): calibration quantizes the convolution only.
  auto calibrator = std::make_shared<VectorCalibrator>(1, Dims{2, 3, 5, 5});
  BuilderConfig config = int8_config(calibrator);
  config.precision.layer_precisions["fc"] = DataType::kFloat32;
  const Plan plan = Builder().build(conv_fc(), config);
  const auto layers = ops(plan);
  // The convolution's input only (an INT8 layer's quantize; the fc keeps no fake_quantize).
  EXPECT_EQ(std::count(layers.begin(), layers.end(), "fake_quantize") +
                std::count(layers.begin(), layers.end(), "quantize"),
            1)
      << ::testing::PrintToString(layers);
  const auto ranges = parse_calibration_cache(calibrator->cache);
  ASSERT_EQ(ranges.size(), 1u) << calibrator->cache;
  EXPECT_EQ(ranges[0].first, "x");  // the convolution's input; the fc's input is not calibrated
  for (const auto& t : plan.network.tensors())
    EXPECT_EQ(t.name.rfind("fc_w/int8", 0), std::string::npos) << t.name;
}

TEST(Calibration, ForeignCacheMissingCalibratorAndNoBatchesAreRefused) {
  auto calibrator = std::make_shared<VectorCalibrator>(0, Dims{2, 3, 5, 5});
  calibrator->cache = format_calibration_cache({{"x", 1.0}, {"other", 2.0}}, CalibrationAlgorithm::kMinMax);
  try {
    Builder().build(conv_fc(), int8_config(calibrator));
    FAIL() << "a cache of another network was used";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("made for another network"), std::string::npos) << e.what();
  }
  try {
    Builder().build(conv_fc(), int8_config(nullptr));
    FAIL() << "INT8 without a calibrator or Q/DQ layers was built";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("INT8 needs either a calibrator"), std::string::npos) << e.what();
  }
  BuilderConfig no_int8;
  no_int8.target = BuildTarget::kReference;
  no_int8.int8_calibrator = std::make_shared<VectorCalibrator>(1, Dims{2, 3, 5, 5});
  EXPECT_THROW(Builder().build(conv_fc(), no_int8), Error);
  auto empty = std::make_shared<VectorCalibrator>(0, Dims{2, 3, 5, 5});
  try {
    Builder().build(conv_fc(), int8_config(empty));
    FAIL() << "a calibration without batches was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gave no batches"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln
