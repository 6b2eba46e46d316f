// Builder passes outside the fusion slot: validate_network, eliminate_common_subexpressions,
// assign_precision, assign_layouts. Graph in, expected graph out, plus "nothing changes" cases
// (the pass returns false and graph_text is the same before and after).
#include <cstdint>
#include <limits>

#include "core/passes/passes.h"
#include "kernels/reference/host_access.h"
#include "test_util.h"

namespace kiln {
namespace test {
namespace {

// ---- validate_network ---------------------------------------------------------------------------

// x [-1, 6] -> reshape "r" [-1, 2, 3] -> relu "act" -> y.
Network reshape_relu_net() {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {-1, 6});
  TensorId r = net.add_layer("reshape", {x}, Attributes().set("shape", Dims{-1, 2, 3}), "r").outputs[0];
  net.mark_output(net.add_activation(r, "relu", 0, "act").outputs[0], "y");
  return net;
}

std::vector<OptimizationProfile> batch_profile() { return {{{{"x", {{1, 6}, {2, 6}, {4, 6}}}}}}; }

TEST(ValidateNetwork, ValidNetworkPassesUnchanged) {
  Network net = reshape_relu_net();
  const std::string before = graph_text(net);
  EXPECT_NO_THROW(validate_network(net, batch_profile()));
  EXPECT_EQ(graph_text(net), before);
}

TEST(ValidateNetwork, LayerEditedAfterAddingIsRefusedByName) {
  Network net = reshape_relu_net();
  net.mutable_layers()[0].attrs.set("shape", Dims{-1, 4, 2});  // 8 elements per row, x has 6
  try {
    validate_network(net, batch_profile());
    ADD_FAILURE() << "a reshape of 6 elements to [-1, 4, 2] was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'r'"), std::string::npos) << e.what();
  }
}

TEST(ValidateNetwork, DynamicInputWithoutProfileIsRefused) {
  Network net = reshape_relu_net();
  try {
    validate_network(net, {});
    ADD_FAILURE() << "a dynamic input without a profile was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimization profile"), std::string::npos) << e.what();
  }
}

TEST(ValidateNetwork, ProfileDisagreeingWithAStaticDimIsRefused) {
  Network net = reshape_relu_net();
  std::vector<OptimizationProfile> profiles = {{{{"x", {{1, 6}, {2, 7}, {4, 6}}}}}};  // dim 1 is 6
  EXPECT_THROW(validate_network(net, profiles), Error);
  profiles = {{{{"z", {{1, 6}, {2, 6}, {4, 6}}}}}};  // no input z
  EXPECT_THROW(validate_network(net, profiles), Error);
}

// ---- eliminate_common_subexpressions ------------------------------------------------------------

TEST(EliminateCommonSubexpressions, MergesChainsOfDuplicatesInOneSweep) {
  // a1 = relu(x), t1 = tanh(a1); a2 = relu(x), t2 = tanh(a2); y = t1 + t2
  //   -> a1, t1; y = t1 + t1 (t2 is t1 once a2 is a1).
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 3});
  TensorId a1 = net.add_activation(x, "relu", 0, "a1").outputs[0];
  TensorId t1 = net.add_activation(a1, "tanh", 0, "t1").outputs[0];
  TensorId a2 = net.add_activation(x, "relu", 0, "a2").outputs[0];
  TensorId t2 = net.add_activation(a2, "tanh", 0, "t2").outputs[0];
  net.mark_output(net.add_elementwise(t1, t2, "add", "sum").outputs[0], "y");
  EXPECT_TRUE(eliminate_common_subexpressions(net));
  EXPECT_EQ(layer_names(net), (std::vector<std::string>{"a1", "t1", "sum"}));
  EXPECT_EQ(input_names(net, layer_named(net, "t1")), std::vector<std::string>{"a1"});
  EXPECT_EQ(input_names(net, layer_named(net, "sum")), (std::vector<std::string>{"t1", "t1"}));
  EXPECT_EQ(net.find_tensor("a2"), -1);
  EXPECT_EQ(net.find_tensor("t2"), -1);
  net.revalidate();
}

TEST(EliminateCommonSubexpressions, EqualSmallConstantsAreOneValue) {
  // m1 = x * c1, m2 = x * c2 with c1 == c2 == [2]: m2 is m1, c2 goes.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 3});
  TensorId c1 = float_constant(net, "c1", {1}, {2.f});
  TensorId c2 = float_constant(net, "c2", {1}, {2.f});
  TensorId m1 = net.add_elementwise(x, c1, "mul", "m1").outputs[0];
  TensorId m2 = net.add_elementwise(x, c2, "mul", "m2").outputs[0];
  net.mark_output(net.add_elementwise(m1, m2, "sub", "diff").outputs[0], "y");
  EXPECT_TRUE(eliminate_common_subexpressions(net));
  EXPECT_EQ(layer_names(net), (std::vector<std::string>{"m1", "diff"}));
  EXPECT_EQ(input_names(net, layer_named(net, "m1")), (std::vector<std::string>{"x", "c1"}));
  EXPECT_EQ(input_names(net, layer_named(net, "diff")), (std::vector<std::string>{"m1", "m1"}));
  EXPECT_EQ(net.find_tensor("c2"), -1);
  net.revalidate();
}

TEST(EliminateCommonSubexpressions, DistinctLayersStay) {
  // Same op and inputs but another attribute; a duplicate that writes an output; a kept
  // duplicate; equal weights above the compared size (300 floats): nothing merges.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 300});
  TensorId l1 = net.add_activation(x, "leaky_relu", 0.1, "l1").outputs[0];
  TensorId l2 = net.add_activation(x, "leaky_relu", 0.2, "l2").outputs[0];
  net.mark_output(net.add_elementwise(l1, l2, "add", "sum").outputs[0], "y");
  net.mark_output(net.add_activation(x, "relu", 0, "r1").outputs[0], "y1");
  net.mark_output(net.add_activation(x, "relu", 0, "r2").outputs[0], "y2");  // writes an output
  TensorId s1 = net.add_activation(x, "sigmoid", 0, "s1").outputs[0];
  TensorId s2 = net.add_activation(x, "sigmoid", 0, "s2").outputs[0];  // kept
  net.mark_output(net.add_elementwise(s1, s2, "add", "sigmoids").outputs[0], "z");
  std::vector<float> w(300, 0.5f);
  TensorId w1 = float_constant(net, "w1", {300}, w);
  TensorId w2 = float_constant(net, "w2", {300}, w);
  TensorId p1 = net.add_elementwise(x, w1, "mul", "p1").outputs[0];
  TensorId p2 = net.add_elementwise(x, w2, "mul", "p2").outputs[0];
  net.mark_output(net.add_elementwise(p1, p2, "add", "products").outputs[0], "p");
  const std::string before = graph_text(net);
  EXPECT_FALSE(eliminate_common_subexpressions(net, {"s2"}));
  EXPECT_EQ(graph_text(net), before);
}

// ---- assign_precision ---------------------------------------------------------------------------

// x [2, 4] -> fully_connected "fc" (w [3, 4], b [3]) -> relu "act" -> y, all float32. The weights
// are exact in float16.
Network fc_relu_net() {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 4});
  TensorId w =
      float_constant(net, "w", {3, 4}, {0.5f, -2.f, 1.f, 0.25f, 2.f, -1.f, 0.f, 4.f, -0.5f, 1.5f, 3.f, -4.f});
  TensorId b = float_constant(net, "b", {3}, {1.f, -1.f, 0.5f});
  TensorId fc = net.add_layer("fully_connected", {x, w, b}, Attributes(), "fc").outputs[0];
  net.mark_output(net.add_activation(fc, "relu", 0, "act").outputs[0], "y");
  return net;
}

uint16_t half_at(const Tensor& t, size_t i) {
  uint16_t h = 0;
  std::memcpy(&h, t.data->data() + 2 * i, 2);
  return h;
}

TEST(AssignPrecision, Fp16RunsLayersInHalfBehindCasts) {
  Network net = fc_relu_net();
  PrecisionConfig config;
  config.fp16 = true;
  config.bf16 = true;  // float16 wins when both are allowed
  EXPECT_TRUE(assign_precision(net, config));
  EXPECT_EQ(layer_names(net), (std::vector<std::string>{"x/to_float16", "fc", "act", "y/to_float32"}));
  EXPECT_EQ(ops_of(net), (std::vector<std::string>{"cast", "fully_connected", "activation", "cast"}));
  const Layer& fc = layer_named(net, "fc");
  EXPECT_EQ(input_names(net, fc), (std::vector<std::string>{"x/to_float16", "w/float16", "b/float16"}));
  const Tensor& w = net.tensor(fc.inputs[1]);
  ASSERT_EQ(w.dtype, DataType::kFloat16);
  EXPECT_EQ(w.dims, (Dims{3, 4}));
  EXPECT_EQ(half_at(w, 0), float_to_half_bits(0.5f));
  EXPECT_EQ(half_at(w, 1), float_to_half_bits(-2.f));
  EXPECT_EQ(half_at(w, 11), float_to_half_bits(-4.f));
  EXPECT_EQ(net.tensor(fc.outputs[0]).dtype, DataType::kFloat16);
  EXPECT_EQ(net.tensor(layer_named(net, "act").outputs[0]).name, "y/float16");
  // The bindings keep their names and dtypes.
  EXPECT_EQ(net.tensor(net.inputs()[0]).name, "x");
  EXPECT_EQ(net.tensor(net.inputs()[0]).dtype, DataType::kFloat32);
  ASSERT_EQ(net.outputs().size(), 1u);
  EXPECT_EQ(net.tensor(net.outputs()[0]).name, "y");
  EXPECT_EQ(net.tensor(net.outputs()[0]).dtype, DataType::kFloat32);
  EXPECT_EQ(layer_named(net, "y/to_float32").outputs[0], net.outputs()[0]);
  net.revalidate();
}

TEST(AssignPrecision, LayerOverrideKeepsItsPrecision) {
  Network net = fc_relu_net();
  PrecisionConfig config;
  config.bf16 = true;
  config.layer_precisions["act"] = DataType::kFloat32;
  EXPECT_TRUE(assign_precision(net, config));
  // fc runs in bfloat16; act reads it cast back and writes the float32 output itself.
  EXPECT_EQ(layer_names(net), (std::vector<std::string>{"x/to_bfloat16", "fc", "fc/to_float32", "act"}));
  EXPECT_EQ(net.tensor(layer_named(net, "fc").outputs[0]).dtype, DataType::kBFloat16);
  EXPECT_EQ(input_names(net, layer_named(net, "act")), std::vector<std::string>{"fc/to_float32"});
  EXPECT_EQ(net.tensor(net.outputs()[0]).name, "y");
  EXPECT_EQ(layer_named(net, "act").outputs[0], net.outputs()[0]);
  net.revalidate();
}

TEST(AssignPrecision, Tf32MarksGemmsOnly) {
  Network net = fc_relu_net();
  PrecisionConfig config;
  config.tf32 = true;
  EXPECT_TRUE(assign_precision(net, config));
  EXPECT_EQ(layer_names(net), (std::vector<std::string>{"fc", "act"}));
  EXPECT_EQ(layer_named(net, "fc").attrs.get_int("allow_tf32", int64_t{0}), 1);
  EXPECT_FALSE(layer_named(net, "act").attrs.has("allow_tf32"));
  for (const Tensor& t : net.tensors()) EXPECT_EQ(t.dtype, DataType::kFloat32) << t.name;
  net.revalidate();
}

TEST(AssignPrecision, NothingAllowedChangesNothing) {
  Network net = fc_relu_net();
  const std::string before = graph_text(net);
  EXPECT_FALSE(assign_precision(net, PrecisionConfig()));
  EXPECT_EQ(graph_text(net), before);
}

TEST(AssignPrecision, DeclaredHalfNetworkStaysUnderFp16) {
  // Float16 inputs and weights are left alone: there is nothing float32 to reduce.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat16, {2, 4});
  std::vector<uint16_t> w(3 * 4, float_to_half_bits(0.5f));
  TensorId wt = net.add_constant("w", DataType::kFloat16, {3, 4}, w.data(), w.size() * 2);
  TensorId fc = net.add_layer("fully_connected", {x, wt}, Attributes(), "fc").outputs[0];
  net.mark_output(net.add_activation(fc, "relu", 0, "act").outputs[0], "y");
  const std::string before = graph_text(net);
  PrecisionConfig config;
  config.fp16 = true;
  EXPECT_FALSE(assign_precision(net, config));
  EXPECT_EQ(graph_text(net), before);
}

TEST(AssignPrecision, Tf32WithoutGemmsChangesNothing) {
  // TF32 marks only GEMMs and convolutions: a network without them is left as it was, and the
  // pass says so (it used to report a change whenever the TF32 flag was on).
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 4});
  net.mark_output(net.add_activation(x, "relu", 0, "act").outputs[0], "y");
  const std::string before = graph_text(net);
  PrecisionConfig config;
  config.tf32 = true;
  EXPECT_FALSE(assign_precision(net, config));
  EXPECT_EQ(graph_text(net), before);
}

TEST(AssignPrecision, NonFloatingLayerPrecisionIsRefused) {
  Network net = fc_relu_net();
  PrecisionConfig config;
  config.layer_precisions["fc"] = DataType::kInt32;
  const std::string before = graph_text(net);
  EXPECT_THROW(assign_precision(net, config), Error);
  EXPECT_EQ(graph_text(net), before);
}

// ---- assign_layouts (rewrite and float32 cases in test_passes.cpp) -------------------------------

TEST(AssignLayouts, HalfPointwiseWithoutConvolutionStays) {
  // Pointwise layers go channels last only next to a channels-last producer; here there is none.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat16, {1, 8, 4, 4});
  TensorId r = net.add_activation(x, "relu", 0, "relu").outputs[0];
  TensorId p = net.add_layer("pooling", {r},
                             Attributes()
                                 .set("type", std::string("max"))
                                 .set("kernel", std::vector<int64_t>{2, 2})
                                 .set("strides", std::vector<int64_t>{2, 2}),
                             "pool")
                   .outputs[0];
  net.mark_output(p, "y");
  const std::string before = graph_text(net);
  EXPECT_FALSE(assign_layouts(net));
  EXPECT_EQ(graph_text(net), before);
}

}  // namespace
}  // namespace test
}  // namespace kiln
