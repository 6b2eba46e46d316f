// INT8 fully_connected layers: quantize_int8_layers on linear layers (a transformer MLP's two
// GEMMs: views between the fake_quantize and the GEMM repeated on the int8 tensor, the first
// GEMM writing the second's int8 input itself), the rewritten network against the fake-quantized
// one on the reference backend, and on CUDA the INT8 kernel (as a 1x1 convolution over the rows)
// against the reference on every tile.
#include <cmath>

#include "core/passes/passes.h"
#include "kernels/cuda/int8_convolution.h"
#include "kernels/reference/host_access.h"
#include "test_util.h"

namespace kiln {
namespace {

using test::random_floats;

struct MlpCase {
  int64_t batch = 3, seq = 7, hidden = 32, ffn = 64;
  std::string activation = "gelu";
  bool second_quantized = true;            // the second GEMM behind its own fake_quantize
  bool residual = true;                    // the second GEMM adds x
  std::string second_activation = "none";  // fc2's own (its residual is added after it)
  bool views_between =
      false;  // fc1's rows back to [B, S, F] before the fake_quantize, and to rows after (BERT)
};

// A constant weight [n, k] of float16 on a per-row int8 grid (integers times the row's step).
TensorId grid_weight(Network& net, const std::string& name, int64_t n, int64_t k, uint32_t seed) {
  std::vector<float> q = random_floats(static_cast<size_t>(n * k), seed, -127.f, 127.f);
  std::vector<float> steps = random_floats(static_cast<size_t>(n), seed + 1, 0.05f / 127, 0.5f / 127);
  std::vector<uint16_t> w;
  for (int64_t o = 0; o < n; ++o) {
    for (int64_t i = 0; i < k; ++i) {
      const float qi = i == 0 ? 127.f : std::nearbyint(q[static_cast<size_t>(o * k + i)]);
      w.push_back(float_to_half_bits(qi * steps[static_cast<size_t>(o)]));
    }
  }
  return net.add_constant(name, DataType::kFloat16, {n, k}, w.data(), w.size() * 2);
}

TensorId half_vector(Network& net, const std::string& name, int64_t n, uint32_t seed) {
  std::vector<uint16_t> b;
  for (float v : random_floats(static_cast<size_t>(n), seed)) b.push_back(float_to_half_bits(v));
  return net.add_constant(name, DataType::kFloat16, {n}, b.data(), b.size() * 2);
}

// x [B, S, H] float32 -> cast float16 -> fake_quantize -> reshape [B*S, H] -> fc1 (bias, activation)
// -> [fake_quantize] -> fc2 (bias, [+ x as residual]) -> reshape [B, S, H] -> cast float32 -> y.
Network fake_quantized_mlp(const MlpCase& c) {
  Network net;
  const TensorId x = net.add_input("x", DataType::kFloat32, {c.batch, c.seq, c.hidden});
  TensorId t = net.add_layer("cast", {x}, Attributes().set("to", std::string("float16")), "to16").outputs[0];
  const float s1 = 3.0f / 127, s2 = 1.5f / 127;
  const TensorId scale1 = net.add_constant("s1", DataType::kFloat32, {1}, &s1, sizeof s1);
  const TensorId scale2 = net.add_constant("s2", DataType::kFloat32, {1}, &s2, sizeof s2);
  Attributes fq;
  fq.set("quant_min", int64_t{-127});
  fq.set("quant_max", int64_t{127});
  TensorId h = net.add_layer("fake_quantize", {t, scale1}, fq, "fq1").outputs[0];
  h = net.add_layer("reshape", {h}, Attributes().set("shape", std::vector<int64_t>{-1, c.hidden}), "flat")
          .outputs[0];
  Attributes a1;
  a1.set("activation", c.activation);
  h = net.add_layer("fully_connected",
                    {h, grid_weight(net, "w1", c.ffn, c.hidden, 3), half_vector(net, "b1", c.ffn, 5)}, a1,
                    "fc1")
          .outputs[0];
  const auto reshape = [&](TensorId t, std::vector<int64_t> shape, const std::string& name) {
    return net.add_layer("reshape", {t}, Attributes().set("shape", std::move(shape)), name).outputs[0];
  };
  if (c.views_between) h = reshape(h, {c.batch, c.seq, c.ffn}, "unflat1");
  if (c.second_quantized) h = net.add_layer("fake_quantize", {h, scale2}, fq, "fq2").outputs[0];
  if (c.views_between) h = reshape(h, {-1, c.ffn}, "flat2");
  std::vector<TensorId> in = {h, grid_weight(net, "w2", c.hidden, c.ffn, 7),
                              half_vector(net, "b2", c.hidden, 9)};
  Attributes a2;
  if (c.second_activation != "none") a2.set("activation", c.second_activation);
  if (c.residual) {
    in.push_back(
        net.add_layer("reshape", {t}, Attributes().set("shape", std::vector<int64_t>{-1, c.hidden}), "flat_x")
            .outputs[0]);
    a2.set("residual", int64_t{1});
  }
  h = net.add_layer("fully_connected", in, a2, "fc2").outputs[0];
  h = net.add_layer("reshape", {h}, Attributes().set("shape", std::vector<int64_t>{c.batch, c.seq, c.hidden}),
                    "unflat")
          .outputs[0];
  net.mark_output(
      net.add_layer("cast", {h}, Attributes().set("to", std::string("float32")), "to32").outputs[0], "y");
  return net;
}

test::Feed feed(const MlpCase& c, uint32_t seed) {
  test::Feed f;
  f["x"] = {{c.batch, c.seq, c.hidden},
            random_floats(static_cast<size_t>(c.batch * c.seq * c.hidden), seed, -3.f, 3.f)};
  return f;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, float tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol * (1 + std::fabs(want[i]))) << i;
}

TEST(Int8FullyConnected, FakeQuantizedLinearLayersBecomeInt8WithTheFirstWritingTheSecondsInput) {
  const MlpCase c;
  Network net = fake_quantized_mlp(c);
  const test::Feed f = feed(c, 21);
  const std::vector<float> before = test::run_reference(net, f, false).at("y");
  ASSERT_TRUE(quantize_int8_layers(net));
  eliminate_dead_layers(net);
  // The reshape between the fake_quantize and fc1 is repeated on the int8 tensor; fc1 writes fc2's
  // int8 input (its value rounded to float16, then quantized as fq2's quantize would).
  EXPECT_EQ(test::ops_of(net), (std::vector<std::string>{"cast", "quantize", "reshape", "fully_connected",
                                                         "reshape", "fully_connected", "reshape", "cast"}))
      << test::graph_text(net);
  const Layer& fc1 = test::layer_named(net, "fc1");
  const Layer& fc2 = test::layer_named(net, "fc2");
  for (const Layer* fc : {&fc1, &fc2}) {
    EXPECT_EQ(fc->attrs.get_int("quantized", fc->name), 1);
    EXPECT_EQ(net.tensor(fc->inputs[0]).dtype, DataType::kInt8);
    EXPECT_EQ(net.tensor(fc->inputs[1]).dtype, DataType::kInt8);
    EXPECT_EQ(fc->attrs.get_string("out_dtype", fc->name), "float16");
  }
  EXPECT_EQ(net.tensor(fc1.outputs[0]).dtype, DataType::kInt8);
  EXPECT_EQ(fc1.outputs[0], fc2.inputs[0]);
  EXPECT_FLOAT_EQ(static_cast<float>(fc1.attrs.get_float("output_inv_scale", "fc1")), 127 / 1.5f);
  EXPECT_EQ(net.tensor(fc2.inputs[3]).dtype, DataType::kFloat16);  // the residual stays float
  const std::vector<float> after = test::run_reference(net, f, false).at("y");
  // Bit for bit the layers with the quantize between them, and the fake-quantized network up to
  // the values fc1's float16 rounding moves across a step.
  Network unfolded = fake_quantized_mlp(c);
  ASSERT_TRUE(quantize_int8_layers(unfolded, /*fold_requantize=*/false));
  EXPECT_EQ(after, test::run_reference(unfolded, f, false).at("y"));
  expect_close(after, before, 5e-2f);
  EXPECT_FALSE(quantize_int8_layers(net));  // nothing left to do
}

// A linear layer with both an activation and a residual adds the residual after the activation,
// as its float form does (a convolution adds it before): relu(fc2) + x, quantized or not.
TEST(Int8FullyConnected, ResidualIsAddedAfterTheActivation) {
  MlpCase c;
  c.second_activation = "relu";
  Network net = fake_quantized_mlp(c);
  const test::Feed f = feed(c, 27);
  const std::vector<float> before = test::run_reference(net, f, false).at("y");
  ASSERT_TRUE(quantize_int8_layers(net));
  const Layer& fc2 = test::layer_named(net, "fc2");
  ASSERT_EQ(fc2.attrs.get_int("quantized", fc2.name), 1);
  ASSERT_EQ(fc2.attrs.get_string("activation", fc2.name), "relu");
  const std::vector<float> after = test::run_reference(net, f, false).at("y");
  expect_close(after, before, 5e-2f);
  // Some outputs are x where fc2's pre-activation is negative: relu(fc2 + x) would differ there.
  const std::vector<float>& x = f.at("x").second;
  size_t residual_only = 0;
  for (size_t i = 0; i < after.size(); ++i)
    residual_only += after[i] == half_bits_to_float(float_to_half_bits(x[i]));
  EXPECT_GT(residual_only, 0u);
}

// BERT's MLP: fc1's rows reshaped to [B, S, F], fake-quantized, reshaped back to rows for fc2.
// fc1 still writes fc2's int8 input; the reshapes move onto the int8 tensor.
TEST(Int8FullyConnected, FirstLayerWritesTheInt8InputThroughViews) {
  MlpCase c;
  c.views_between = true;
  Network net = fake_quantized_mlp(c);
  const test::Feed f = feed(c, 25);
  const std::vector<float> before = test::run_reference(net, f, false).at("y");
  ASSERT_TRUE(quantize_int8_layers(net));
  eliminate_dead_layers(net);
  EXPECT_EQ(test::ops_of(net),
            (std::vector<std::string>{"cast", "quantize", "reshape", "fully_connected", "reshape", "reshape",
                                      "reshape", "fully_connected", "reshape", "cast"}));
  const Layer& fc1 = test::layer_named(net, "fc1");
  const Layer& unflat = test::layer_named(net, "unflat1");
  const Layer& fc2 = test::layer_named(net, "fc2");
  EXPECT_TRUE(fc1.attrs.has("output_inv_scale"));
  EXPECT_EQ(net.tensor(fc1.outputs[0]).dtype, DataType::kInt8);
  EXPECT_EQ(net.tensor(fc1.outputs[0]).dims, (Dims{c.batch * c.seq, c.ffn}));
  EXPECT_EQ(unflat.inputs[0], fc1.outputs[0]);
  EXPECT_EQ(net.tensor(unflat.outputs[0]).dtype, DataType::kInt8);
  EXPECT_EQ(net.tensor(fc2.inputs[0]).dtype, DataType::kInt8);
  const std::vector<float> after = test::run_reference(net, f, false).at("y");
  Network unfolded = fake_quantized_mlp(c);
  ASSERT_TRUE(quantize_int8_layers(unfolded, /*fold_requantize=*/false));
  EXPECT_EQ(after, test::run_reference(unfolded, f, false).at("y"));
  expect_close(after, before, 5e-2f);
}

TEST(Int8FullyConnected, OnlyWhereTheInt8KernelRuns) {
  MlpCase odd;
  odd.hidden = 24;  // fc1's input features not a multiple of 16; fc2 (64 in, 24 out) qualifies
  Network net = fake_quantized_mlp(odd);
  ASSERT_TRUE(quantize_int8_layers(net));
  EXPECT_EQ(test::layer_named(net, "fc1").attrs.get_int("quantized", int64_t{0}), 0);
  EXPECT_EQ(test::layer_named(net, "fc2").attrs.get_int("quantized", int64_t{0}), 1);
  Network pinned = fake_quantized_mlp(MlpCase{});
  ASSERT_TRUE(quantize_int8_layers(pinned, true, {"fc1"}));
  EXPECT_EQ(test::layer_named(pinned, "fc1").attrs.get_int("quantized", int64_t{0}), 0);
}

TEST(Int8FullyConnected, QuantizedLayerValidatesItsInputs) {
  Network net = fake_quantized_mlp(MlpCase{});
  ASSERT_TRUE(quantize_int8_layers(net));
  for (auto& l : net.mutable_layers()) {
    if (l.name == "fc2") l.attrs.set("out_dtype", std::string("int8"));
  }
  try {
    net.revalidate();
    FAIL() << "out_dtype int8 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out_dtype"), std::string::npos) << e.what();
  }
}

// CUDA: the built network runs both INT8 GEMMs with each tile and agrees with the quantized layers
// on the reference backend up to float16 rounding (and a requantized value a rounding away from a
// step landing one step over).
TEST(Int8FullyConnected, CudaKernelMatchesTheReferenceOnEveryTile) {
  KILN_REQUIRE_GPU();
  // gelu, relu and silu take the epilogue's compiled-in activations, hardswish the run-time one.
  for (const std::string act : {"gelu", "relu", "silu", "hardswish"}) {
    MlpCase c;
    c.activation = act;
    c.batch = 5;
    c.seq = 37;  // 185 rows: inside every tile's M
    c.hidden = 48;
    c.ffn = 144;
    c.views_between = act == "gelu";
    // act(fc2) + x, not act(fc2 + x)
    c.second_activation = act == "relu" || act == "hardswish" ? act : "none";
    const Network net = fake_quantized_mlp(c);
    const test::Feed f = feed(c, 23);
    Network quantized = net;
    ASSERT_TRUE(quantize_int8_layers(quantized));
    const std::vector<float> want = test::run_reference(quantized, f, false).at("y");
    Plan plan = test::build_cuda(net, {"fp16", "int8"});
    std::vector<Layer*> fcs;
    for (auto& l : plan.network.mutable_layers()) {
      if (l.op == "fully_connected" && l.attrs.get_int("quantized", int64_t{0}) == 1) fcs.push_back(&l);
    }
    ASSERT_EQ(fcs.size(), 2u) << test::graph_text(plan.network);
    for (int tile = -1; tile < kInt8ConvTiles; ++tile) {
      if (!int8_tile_refusal(tile).empty()) continue;  // a wgmma tile off an sm_90 GPU
      for (Layer* fc : fcs) fc->attrs.set("tactic", int64_t{tile});
      SCOPED_TRACE(act + " tile " + std::to_string(tile));
      expect_close(test::run_float(Engine::create(plan, Backend::kCuda), f).at("y"), want, 3e-2f);
    }
  }
}

}  // namespace
}  // namespace kiln
