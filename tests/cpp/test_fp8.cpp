// FP8 (float8 e4m3fn): the host conversions (ir/float8.h), the quantize_fp8_gemms pass (graph in,
// graph out, and the rewritten network computing what the fake-quantized one computes on the
// reference backend), the FP8 GEMM on CUDA against the reference, and the error on a GPU
// without FP8.
#include <cmath>
#include <string>

#include "core/passes/passes.h"
#include "ir/float8.h"
#include "kernels/reference/host_access.h"
#include "test_util.h"

namespace kiln {
namespace {

using test::random_floats;

TEST(Float8, EveryCodeRoundTripsAndRoundingIsNearestEvenSaturating) {
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) {  // NaN
      EXPECT_TRUE(std::isnan(e4m3_to_float(static_cast<uint8_t>(b))));
      continue;
    }
    const float v = e4m3_to_float(static_cast<uint8_t>(b));
    EXPECT_EQ(float_to_e4m3(v), b) << b << " " << v;
  }
  EXPECT_EQ(e4m3_to_float(0x7e), 448.f);
  EXPECT_EQ(e4m3_to_float(0x01), std::ldexp(1.f, -9));  // smallest subnormal
  EXPECT_EQ(e4m3_to_float(0x08), std::ldexp(1.f, -6));  // smallest normal
  EXPECT_EQ(float_to_e4m3(1000.f), 0x7e);               // saturates
  EXPECT_EQ(float_to_e4m3(-INFINITY), 0xfe);
  EXPECT_EQ(float_to_e4m3(460.f), 0x7e);
  // Ties go to the even mantissa: 1.0625 lies between 1 (mantissa 0) and 1.125 (mantissa 1).
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(1.0625f)), 1.f);
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(1.1875f)), 1.25f);  // between 1.125 and 1.25: to 1.25 (even)
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(1.07f)), 1.125f);
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(std::ldexp(1.5f, -10))), std::ldexp(1.f, -9));  // 0.75 ulp up
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(std::ldexp(1.f, -10))), 0.f);                   // tie to 0 (even)
  EXPECT_TRUE(std::isnan(e4m3_to_float(float_to_e4m3(NAN))));
}

// x [8, 32] float32 -> cast float16 -> e4m3 fake_quantize -> [reshape [2, 4, 32]] ->
// fully_connected(W [16, 32], bias, relu) -> cast float32 -> y.
Network fp8_linear(bool view = false, const std::string& activation = "relu") {
  Network net;
  const TensorId x = net.add_input("x", DataType::kFloat32, {8, 32});
  Attributes to16;
  to16.set("to", std::string("float16"));
  TensorId t = net.add_layer("cast", {x}, to16, "to16").outputs[0];
  const float scale = 2.0f / 448;
  const TensorId s = net.add_constant("s", DataType::kFloat32, {}, &scale, sizeof scale);
  Attributes fq;
  fq.set("format", std::string("e4m3"));
  t = net.add_layer("fake_quantize", {t, s}, fq, "fq").outputs[0];
  if (view) {
    t = net.add_layer("reshape", {t}, Attributes().set("shape", std::vector<int64_t>{2, 4, 32}), "v")
            .outputs[0];
  }
  // The weight on its per-tensor e4m3 grid (max |W| = 0.3 = 448 steps), as FP8 calibration
  // leaves it: the pass then keeps its values.
  std::vector<uint16_t> w16, b16;
  std::vector<float> wv = random_floats(16 * 32, 3, -0.3f, 0.3f);
  wv[0] = 0.3f;
  const float step = 0.3f / kFloat8E4M3Max;
  for (float v : wv) w16.push_back(float_to_half_bits(e4m3_to_float(float_to_e4m3(v / step)) * step));
  for (float v : random_floats(16, 4)) b16.push_back(float_to_half_bits(v));
  const TensorId w = net.add_constant("w", DataType::kFloat16, {16, 32}, w16.data(), w16.size() * 2);
  const TensorId b = net.add_constant("b", DataType::kFloat16, {16}, b16.data(), b16.size() * 2);
  Attributes fc;
  fc.set("activation", activation);
  t = net.add_layer("fully_connected", {t, w, b}, fc, "fc").outputs[0];
  Attributes to32;
  to32.set("to", std::string("float32"));
  net.mark_output(net.add_layer("cast", {t}, to32, "to32").outputs[0], "y");
  return net;
}

std::vector<float> run_reference(const Network& net, const std::vector<float>& x,
                                 const Dims& dims = {8, 32}) {
  BuilderConfig config;
  config.target = BuildTarget::kReference;
  config.optimization_level = 0;  // the network as it is
  const Plan plan = Builder().build(net, config);
  return test::run_float(Engine::create(plan, Backend::kReference), {{"x", {dims, x}}}).at("y");
}

TEST(Fp8Gemms, ViewsBetweenTheFakeQuantizeAndTheGemmAreRepeatedOnTheFloat8Tensor) {
  Network net = fp8_linear(/*view=*/true);
  const std::vector<float> x = random_floats(8 * 32, 7, -2.5f, 2.5f);
  const std::vector<float> before = run_reference(net, x);
  ASSERT_TRUE(quantize_fp8_gemms(net));
  eliminate_dead_layers(net);
  EXPECT_EQ(test::ops_of(net),
            (std::vector<std::string>{"cast", "quantize", "reshape", "fully_connected", "cast"}));
  const Layer& fc = test::layer_named(net, "fc");
  EXPECT_EQ(net.tensor(fc.inputs[0]).dtype, DataType::kFloat8E4M3);
  EXPECT_EQ(net.tensor(fc.inputs[0]).dims, (Dims{2, 4, 32}));
  ASSERT_EQ(before.size(), 2u * 4 * 16);
  const std::vector<float> after = run_reference(net, x);
  for (size_t i = 0; i < before.size(); ++i)
    EXPECT_NEAR(after[i], before[i], 2e-3f * (1 + std::fabs(before[i])));
}

void expect_close(const std::vector<float>& a, const std::vector<float>& b, float tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], tol * (1 + std::fabs(b[i]))) << i;
}

TEST(Fp8Gemms, FakeQuantizedLinearBecomesQuantizePlusFp8FullyConnected) {
  Network net = fp8_linear();
  const std::vector<float> x = random_floats(8 * 32, 5, -2.5f, 2.5f);  // saturates some
  const std::vector<float> before = run_reference(net, x);
  ASSERT_TRUE(quantize_fp8_gemms(net));
  eliminate_dead_layers(net);
  EXPECT_EQ(test::ops_of(net), (std::vector<std::string>{"cast", "quantize", "fully_connected", "cast"}));
  const Layer& fc = test::layer_named(net, "fc");
  EXPECT_EQ(net.tensor(fc.inputs[0]).dtype, DataType::kFloat8E4M3);
  EXPECT_EQ(net.tensor(fc.inputs[1]).dtype, DataType::kFloat8E4M3);
  EXPECT_EQ(fc.attrs.get_string("out_dtype", "fc"), "float16");
  EXPECT_FLOAT_EQ(static_cast<float>(fc.attrs.get_float("input_scale", "fc")), 2.0f / 448);
  EXPECT_GT(fc.attrs.get_float("weight_scale", "fc"), 0.0);
  // The rewritten network computes the fake-quantized one's values (which rounded the quantized
  // input through float16, and accumulated in another order).
  expect_close(run_reference(net, x), before, 2e-3f);
  // Nothing to do the second time; a float32 output (no cuBLASLt FP8 kernel) is left alone.
  EXPECT_FALSE(quantize_fp8_gemms(net));
}

// A transformer MLP: fc1 (GELU) -> rows reshaped -> e4m3 fake_quantize -> fc2. fc1's value only
// the quantize reads, so fold_quantize_copies makes fc1 write the float8 tensor itself.
Network fp8_mlp() {
  Network net;
  const TensorId x = net.add_input("x", DataType::kFloat32, {8, 32});
  TensorId t = net.add_layer("cast", {x}, Attributes().set("to", std::string("float16")), "to16").outputs[0];
  auto add_fq = [&](TensorId v, float range, const std::string& name) {
    const float scale = range / kFloat8E4M3Max;
    const TensorId s = net.add_constant(name + "_s", DataType::kFloat32, {}, &scale, sizeof scale);
    return net.add_layer("fake_quantize", {v, s}, Attributes().set("format", std::string("e4m3")), name)
        .outputs[0];
  };
  auto add_fc = [&](TensorId v, int64_t n, int64_t k, const std::string& act, const std::string& name) {
    const float step = 1.0f / 2048, top = kFloat8E4M3Max * step;  // max |W| = 448 steps of 2^-11
    std::vector<float> wv =
        random_floats(static_cast<size_t>(n * k), static_cast<uint32_t>(n + k), -top, top);
    wv[0] = top;
    std::vector<uint16_t> w16, b16;
    for (float f : wv) w16.push_back(float_to_half_bits(e4m3_to_float(float_to_e4m3(f / step)) * step));
    for (float f : random_floats(static_cast<size_t>(n), static_cast<uint32_t>(n)))
      b16.push_back(float_to_half_bits(f));
    const TensorId w = net.add_constant(name + "_w", DataType::kFloat16, {n, k}, w16.data(), w16.size() * 2);
    const TensorId b = net.add_constant(name + "_b", DataType::kFloat16, {n}, b16.data(), b16.size() * 2);
    return net.add_layer("fully_connected", {v, w, b}, Attributes().set("activation", act), name).outputs[0];
  };
  // Scales and weight steps are powers of two, so every dequantized value is exact in float16 and
  // the fake-quantized network computes bit for bit what the FP8 one does (up to summation order).
  t = add_fc(add_fq(t, kFloat8E4M3Max / 128, "fq1"), 64, 32, "gelu", "fc1");
  t = net.add_layer("reshape", {t}, Attributes().set("shape", std::vector<int64_t>{2, 4, 64}), "rows")
          .outputs[0];
  t = add_fc(add_fq(t, kFloat8E4M3Max / 64, "fq2"), 16, 64, "none", "fc2");
  net.mark_output(
      net.add_layer("cast", {t}, Attributes().set("to", std::string("float32")), "to32").outputs[0], "y");
  return net;
}

TEST(Fp8Gemms, AGemmWhoseValueOnlyAQuantizeReadsWritesFloat8) {
  Network net = fp8_mlp();
  const std::vector<float> x = random_floats(8 * 32, 8, -2.5f, 2.5f);
  const std::vector<float> before = run_reference(net, x);
  ASSERT_TRUE(quantize_fp8_gemms(net));
  eliminate_dead_layers(net);
  ASSERT_TRUE(fold_quantize_copies(net));
  EXPECT_EQ(test::ops_of(net), (std::vector<std::string>{"cast", "quantize", "fully_connected", "reshape",
                                                         "fully_connected", "cast"}));
  const Layer& fc1 = test::layer_named(net, "fc1");
  EXPECT_EQ(net.tensor(fc1.outputs[0]).dtype, DataType::kFloat8E4M3);
  EXPECT_EQ(fc1.attrs.get_float("output_inv_scale", "fc1"), 64.0);
  EXPECT_EQ(net.tensor(test::layer_named(net, "fc2").inputs[0]).dtype, DataType::kFloat8E4M3);
  EXPECT_FALSE(test::layer_named(net, "fc2").attrs.has("output_inv_scale"));  // its value is the output
  expect_close(run_reference(net, x), before, 1e-6f);
  EXPECT_FALSE(fold_quantize_copies(net));
}

// qkv [2, 16, 3, 2, 64] -> float16 -> packed_attention -> rows [2, 16, 128] -> e4m3 quantize
// (scale 2^-5) -> dequantize -> float32: an FP8 output projection's input, as BERT has it.
Network fp8_attention(const std::string& dtype = "float16") {
  Network net;
  const TensorId x = net.add_input("x", DataType::kFloat32, {2, 16, 3, 2, 64});
  TensorId t = net.add_layer("cast", {x}, Attributes().set("to", dtype), "to16").outputs[0];
  t = net.add_layer("packed_attention", {t}, Attributes(), "attn").outputs[0];
  t = net.add_layer("reshape", {t}, Attributes().set("shape", std::vector<int64_t>{2, 16, 128}), "rows")
          .outputs[0];
  const float scale = 1.0f / 32;
  const TensorId s = net.add_constant("s", DataType::kFloat32, {}, &scale, sizeof scale);
  const Attributes e4m3 = Attributes().set("format", std::string("e4m3"));
  t = net.add_layer("quantize", {t, s}, e4m3, "q").outputs[0];
  t = net.add_layer("dequantize", {t, s}, e4m3, "dq").outputs[0];
  net.mark_output(
      net.add_layer("cast", {t}, Attributes().set("to", std::string("float32")), "to32").outputs[0], "y");
  return net;
}

TEST(Fp8Gemms, AttentionReadOnlyByAnE4m3QuantizeWritesFloat8) {
  Network net = fp8_attention();
  const std::vector<float> x = random_floats(2 * 16 * 3 * 2 * 64, 12, -2.f, 2.f);
  const Dims dims{2, 16, 3, 2, 64};
  const std::vector<float> before = run_reference(net, x, dims);
  ASSERT_TRUE(fold_quantize_copies(net));
  EXPECT_EQ(test::ops_of(net),
            (std::vector<std::string>{"cast", "packed_attention", "reshape", "dequantize", "cast"}));
  const Layer& attn = test::layer_named(net, "attn");
  EXPECT_EQ(net.tensor(attn.outputs[0]).dtype, DataType::kFloat8E4M3);
  EXPECT_EQ(attn.attrs.get_float("output_inv_scale", "attn"), 32.0);
  EXPECT_EQ(run_reference(net, x, dims), before);  // the same rounding: to float16, then e4m3
  // Not with a float32 attention (the CUDA kernel has no float8 output for it).
  Network f32 = fp8_attention("float32");
  EXPECT_FALSE(fold_quantize_copies(f32));
}

TEST(Fp8Gemms, CudaAttentionWritesFloat8) {
  KILN_REQUIRE_GPU();
  if (cuda_device_arch() < 89) GTEST_SKIP() << "FP8 needs sm_89+";
  const Network net = fp8_attention();
  const std::vector<float> x = random_floats(2 * 16 * 3 * 2 * 64, 13, -2.f, 2.f);
  BuilderConfig config;
  config.target = BuildTarget::kCuda;
  enable_precision(config.precision, "fp16");
  enable_precision(config.precision, "fp8");
  const Plan plan = Builder().build(net, config);
  int folded = 0;
  for (const auto& l : plan.network.layers()) folded += l.attrs.has("output_inv_scale");
  EXPECT_EQ(folded, 1) << test::graph_text(plan.network);
  const auto y =
      test::run_float(Engine::create(plan, Backend::kCuda), {{"x", {{2, 16, 3, 2, 64}, x}}}).at("y");
  const std::vector<float> want = run_reference(net, x, {2, 16, 3, 2, 64});
  // float16 rounding inside the attention (its probabilities, its sums) may move a value across
  // an e4m3 rounding boundary: one step, an eighth of the value at most, or near zero, where the
  // kernel's absolute error (about 1e-4) spans subnormal steps of 2^-9 * scale, a few of those (the
  // H100 showed 4 of 4096 values 1 or 2 subnormal steps apart). Most values agree exactly.
  ASSERT_EQ(y.size(), want.size());
  const float subnormal_step = std::ldexp(1.f, -9) / 32;
  size_t same = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    same += y[i] == want[i];
    EXPECT_NEAR(y[i], want[i], 0.13f * std::fabs(want[i]) + 4 * subnormal_step) << i;
  }
  EXPECT_GT(same, y.size() * 9 / 10);
}

// The network API's FP16 + FP8 build: the calibrated fake_quantize takes a float32 scale, so
// assign_precision keeps it in float32 between casts, and the GEMM reads a cast to float16.
TEST(Fp8Gemms, LooksThroughFloatCastsBetweenTheFakeQuantizeAndTheGemm) {
  Network net;
  const TensorId x = net.add_input("x", DataType::kFloat32, {8, 32});
  const float scale = 2.0f / 448;
  const TensorId s = net.add_constant("s", DataType::kFloat32, {}, &scale, sizeof scale);
  TensorId t = net.add_layer("fake_quantize", {x, s}, Attributes().set("format", std::string("e4m3")), "fq")
                   .outputs[0];
  t = net.add_layer("cast", {t}, Attributes().set("to", std::string("float16")), "to16").outputs[0];
  std::vector<uint16_t> w16;
  std::vector<float> wv = random_floats(16 * 32, 3, -0.3f, 0.3f);
  wv[0] = 0.3f;  // on the per-tensor e4m3 grid, as calibration leaves it
  for (float v : wv)
    w16.push_back(float_to_half_bits(e4m3_to_float(float_to_e4m3(v / (0.3f / kFloat8E4M3Max))) *
                                     (0.3f / kFloat8E4M3Max)));
  const TensorId w = net.add_constant("w", DataType::kFloat16, {16, 32}, w16.data(), w16.size() * 2);
  t = net.add_layer("fully_connected", {t, w}, {}, "fc").outputs[0];
  net.mark_output(
      net.add_layer("cast", {t}, Attributes().set("to", std::string("float32")), "to32").outputs[0], "y");
  const std::vector<float> x_values = random_floats(8 * 32, 5, -2.5f, 2.5f);
  const std::vector<float> before = run_reference(net, x_values);
  ASSERT_TRUE(quantize_fp8_gemms(net));
  eliminate_dead_layers(net);
  const Layer& fc = test::layer_named(net, "fc");
  EXPECT_EQ(net.tensor(fc.inputs[0]).dtype, DataType::kFloat8E4M3);
  EXPECT_FLOAT_EQ(static_cast<float>(fc.attrs.get_float("input_scale", "fc")), scale);
  expect_close(run_reference(net, x_values), before, 2e-3f);
}

TEST(Fp8Gemms, OnlyE4m3FakeQuantizeWithConstantWeightAndAlignedShapes) {
  Network net = fp8_linear();
  for (auto& l : net.mutable_layers()) {
    if (l.name == "fq") l.attrs.set("format", std::string("int"));  // an INT8 fake quantization
  }
  net.revalidate();
  EXPECT_FALSE(quantize_fp8_gemms(net));
}

TEST(Fp8Gemms, OlderGpusAreRefusedWithWhatToDo) {
  EXPECT_NO_THROW(check_fp8_support(89));
  EXPECT_NO_THROW(check_fp8_support(90));
  try {
    check_fp8_support(80);
    FAIL() << "FP8 accepted on sm_80";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("compute capability 8.9"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("sm_80"), std::string::npos) << e.what();
  }
}

TEST(Fp8Gemms, CudaFp8GemmMatchesTheReference) {
  KILN_REQUIRE_GPU();
  if (cuda_device_arch() < 89) GTEST_SKIP() << "FP8 needs sm_89+";
  // gelu: the FP8 GEMM applies it in cuBLASLt's epilogue, in its tanh form (within 5e-4 of erf's).
  // fp8_mlp: fc1 writes float8 (cuBLASLt's D scale), fc2 reads it.
  for (const std::string activation : {"relu", "gelu", "mlp"}) {
    SCOPED_TRACE(activation);
    const Network net = activation == "mlp" ? fp8_mlp() : fp8_linear(false, activation);
    const std::vector<float> x = random_floats(8 * 32, 6, -2.5f, 2.5f);
    BuilderConfig config;
    config.target = BuildTarget::kCuda;
    enable_precision(config.precision, "fp16");
    enable_precision(config.precision, "fp8");
    const Plan plan = Builder().build(net, config);
    bool fp8 = false;
    int float8_out = 0;
    for (const auto& l : plan.network.layers()) {
      fp8 |= l.op == "fully_connected" && l.attrs.has("out_dtype");
      float8_out += l.op == "fully_connected" && l.attrs.has("output_inv_scale");
    }
    EXPECT_TRUE(fp8) << test::graph_text(plan.network);
    EXPECT_EQ(float8_out, activation == "mlp" ? 1 : 0) << test::graph_text(plan.network);
    const auto y = test::run_float(Engine::create(plan, Backend::kCuda), {{"x", {{8, 32}, x}}}).at("y");
    // mlp: GELU's tanh form moves a few of fc1's values across an e4m3 rounding boundary (one
    // step, 1/16 of the value), which fc2 sums into its outputs.
    expect_close(y, run_reference(net, x), activation == "mlp" ? 5e-2f : 1e-2f);
  }
}

}  // namespace
}  // namespace kiln
