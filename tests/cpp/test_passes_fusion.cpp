// Fusion-slot builder passes: the pattern passes (fuse_gelu, fuse_rms_norm), GEMM fusion
// (fuse_gemm_epilogue, fuse_parallel_gemms), attention (drop_trivial_attention_masks,
// fold_repeat_kv, fold_attention_transposes, pack_qkv_attention, pack_attention_views),
// patchify_convolutions, collapse_transposes and fuse_pointwise. Graph in, expected graph out, plus "nothing
// changes" cases (the pass returns false and graph_text is the same before and after).
#include <algorithm>
#include <cstdint>
#include <limits>

#include "core/passes/passes.h"
#include "kernels/reference/host_access.h"
#include "test_util.h"

namespace kiln {
namespace test {
namespace {

TensorId scalar(Network& net, const std::string& name, double v) {
  return float_constant(net, name, {1}, {static_cast<float>(v)});
}

TensorId int64_constant(Network& net, const std::string& name, const Dims& dims,
                        const std::vector<int64_t>& v) {
  return net.add_constant(name, DataType::kInt64, dims, v.data(), v.size() * sizeof(int64_t));
}

// ---- fuse_gelu ----------------------------------------------------------------------------------

// y = (x * 0.5) * (1 + erf(x / c)), x [2, 8]; c = sqrt(2) makes it GELU.
Network erf_gelu_net(double c, bool erf_is_output = false) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 8});
  TensorId half = net.add_elementwise(x, scalar(net, "c_half", 0.5), "mul", "half").outputs[0];
  TensorId d = net.add_elementwise(x, scalar(net, "c_sqrt2", c), "div", "scaled").outputs[0];
  TensorId e = net.add_layer("unary", {d}, Attributes().set("op", std::string("erf")), "erf").outputs[0];
  if (erf_is_output) net.mark_output(e, "erf_out");
  TensorId a = net.add_elementwise(e, scalar(net, "c_one", 1.0), "add", "plus_one").outputs[0];
  net.mark_output(net.add_elementwise(half, a, "mul", "gelu").outputs[0], "y");
  return net;
}

TEST(FuseGelu, ErfFormBecomesGeluActivation) {
  Network net = erf_gelu_net(1.4142135623730951);
  EXPECT_TRUE(fuse_gelu(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"activation"});
  const Layer& l = net.layers()[0];
  EXPECT_EQ(l.name, "gelu");
  EXPECT_EQ(l.attrs.get_string("type", l.name), "gelu");
  EXPECT_EQ(input_names(net, l), std::vector<std::string>{"x"});
  EXPECT_EQ(net.tensor(l.outputs[0]).name, "y");
  EXPECT_EQ(net.tensor(l.outputs[0]).dims, (Dims{2, 8}));
  EXPECT_EQ(net.tensors().size(), 2u);  // x, y: the constants went with their layers
  net.revalidate();
}

// y = (x * (erf(x / sqrt(2)) + 1)) * 0.5, torch.onnx's TorchScript exporter's grouping;
// `product_is_output`: x * (erf(..) + 1) is a network output too.
Network halved_last_gelu_net(bool product_is_output = false) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 8});
  TensorId d = net.add_elementwise(x, scalar(net, "c_sqrt2", 1.4142135623730951), "div", "scaled").outputs[0];
  TensorId e = net.add_layer("unary", {d}, Attributes().set("op", std::string("erf")), "erf").outputs[0];
  TensorId a = net.add_elementwise(e, scalar(net, "c_one", 1.0), "add", "plus_one").outputs[0];
  TensorId p = net.add_elementwise(x, a, "mul", "product").outputs[0];
  if (product_is_output) net.mark_output(p, "product_out");
  net.mark_output(net.add_elementwise(p, scalar(net, "c_half", 0.5), "mul", "gelu").outputs[0], "y");
  return net;
}

TEST(FuseGelu, ErfFormHalvedLastBecomesGeluActivation) {
  Network net = halved_last_gelu_net();
  EXPECT_TRUE(fuse_gelu(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"activation"});
  EXPECT_EQ(net.layers()[0].attrs.get_string("type", "gelu"), "gelu");
  EXPECT_EQ(input_names(net, net.layers()[0]), std::vector<std::string>{"x"});
  EXPECT_EQ(net.tensor(net.layers()[0].outputs[0]).name, "y");
  net.revalidate();
}

TEST(FuseGelu, HalvedLastWithTheProductReadElsewhereStays) {
  Network net = halved_last_gelu_net(/*product_is_output=*/true);
  const std::string before = graph_text(net);
  EXPECT_FALSE(fuse_gelu(net));
  EXPECT_EQ(graph_text(net), before);
}

TEST(FuseGelu, TanhFormWithConstantsFirstBecomesGeluTanh) {
  // y = (0.5 * x) * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3)))), constants on the left.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 8});
  TensorId half = net.add_elementwise(scalar(net, "c_half", 0.5), x, "mul", "half").outputs[0];
  TensorId cube = net.add_elementwise(x, scalar(net, "c_three", 3.0), "pow", "cube").outputs[0];
  TensorId k = net.add_elementwise(scalar(net, "c_k", 0.044715), cube, "mul", "k_cube").outputs[0];
  TensorId inner = net.add_elementwise(x, k, "add", "inner").outputs[0];
  TensorId u =
      net.add_elementwise(scalar(net, "c_s", 0.79788456080286536), inner, "mul", "scaled").outputs[0];
  TensorId t = net.add_activation(u, "tanh", 0, "tanh").outputs[0];
  TensorId a = net.add_elementwise(scalar(net, "c_one", 1.0), t, "add", "plus_one").outputs[0];
  net.mark_output(net.add_elementwise(half, a, "mul", "gelu").outputs[0], "y");
  EXPECT_TRUE(fuse_gelu(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"activation"});
  EXPECT_EQ(net.layers()[0].attrs.get_string("type", "gelu"), "gelu_tanh");
  EXPECT_EQ(input_names(net, net.layers()[0]), std::vector<std::string>{"x"});
  EXPECT_EQ(net.tensor(net.layers()[0].outputs[0]).name, "y");
  net.revalidate();
}

TEST(FuseGelu, WrongConstantOrSharedIntermediateStays) {
  for (bool shared : {false, true}) {
    SCOPED_TRACE(shared ? "erf output is also a network output" : "x / 2 instead of x / sqrt(2)");
    Network net = shared ? erf_gelu_net(1.4142135623730951, true) : erf_gelu_net(2.0);
    const std::string before = graph_text(net);
    EXPECT_FALSE(fuse_gelu(net));
    EXPECT_EQ(graph_text(net), before);
  }
}

// ---- fuse_rms_norm ------------------------------------------------------------------------------

TEST(FuseRmsNorm, T5FormWithCastsBecomesRmsNorm) {
  // x float16 [2, 8]; xf = cast(x, float32); y = w * cast(xf * rsqrt(mean(pow(xf, 2), -1) + eps), float16)
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat16, {2, 8});
  std::vector<uint16_t> w(8, float_to_half_bits(1.5f));
  TensorId wt = net.add_constant("w", DataType::kFloat16, {8}, w.data(), w.size() * 2);
  TensorId xf = net.add_layer("cast", {x}, Attributes().set("to", std::string("float32")), "xf").outputs[0];
  TensorId sq = net.add_elementwise(xf, scalar(net, "c_two", 2.0), "pow", "sq").outputs[0];
  TensorId ms = net.add_layer("reduce", {sq},
                              Attributes()
                                  .set("op", std::string("mean"))
                                  .set("axes", std::vector<int64_t>{-1})
                                  .set("keepdim", int64_t{1}),
                              "ms")
                    .outputs[0];
  TensorId a = net.add_elementwise(ms, scalar(net, "c_eps", 1e-6), "add", "add_eps").outputs[0];
  TensorId r = net.add_layer("unary", {a}, Attributes().set("op", std::string("rsqrt")), "rs").outputs[0];
  TensorId n = net.add_elementwise(xf, r, "mul", "norm").outputs[0];
  TensorId back =
      net.add_layer("cast", {n}, Attributes().set("to", std::string("float16")), "back").outputs[0];
  net.mark_output(net.add_elementwise(wt, back, "mul", "scaled").outputs[0], "y");
  EXPECT_TRUE(fuse_rms_norm(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"rms_norm"});
  const Layer& l = net.layers()[0];
  EXPECT_EQ(l.name, "scaled");
  EXPECT_EQ(input_names(net, l), (std::vector<std::string>{"x", "w"}));
  EXPECT_EQ(l.attrs.get_float("eps", l.name), static_cast<double>(1e-6f));  // the stored float32 value
  EXPECT_EQ(l.attrs.get_int("normalized_ndim", l.name), 1);
  EXPECT_EQ(net.tensor(l.outputs[0]).name, "y");
  EXPECT_EQ(net.tensor(l.outputs[0]).dtype, DataType::kFloat16);
  net.revalidate();
}

// x [4, 4] float32; y = (x * rsqrt(mean(x * x, axes) + 1e-5)) * w.
Network rms_net(std::vector<int64_t> axes) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {4, 4});
  TensorId w = float_constant(net, "w", {4}, {1.f, 2.f, 3.f, 4.f});
  TensorId sq = net.add_elementwise(x, x, "mul", "sq").outputs[0];
  TensorId ms = net.add_layer("reduce", {sq},
                              Attributes()
                                  .set("op", std::string("mean"))
                                  .set("axes", std::move(axes))
                                  .set("keepdim", int64_t{1}),
                              "ms")
                    .outputs[0];
  TensorId a = net.add_elementwise(ms, scalar(net, "c_eps", 1e-5), "add", "add_eps").outputs[0];
  TensorId r = net.add_layer("unary", {a}, Attributes().set("op", std::string("rsqrt")), "rs").outputs[0];
  TensorId n = net.add_elementwise(r, x, "mul", "norm").outputs[0];
  net.mark_output(net.add_elementwise(n, w, "mul", "scaled").outputs[0], "y");
  return net;
}

TEST(FuseRmsNorm, SquareAsProductAndWeightOnTheRight) {
  Network net = rms_net({1});
  EXPECT_TRUE(fuse_rms_norm(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"rms_norm"});
  EXPECT_EQ(input_names(net, net.layers()[0]), (std::vector<std::string>{"x", "w"}));
  EXPECT_EQ(net.layers()[0].attrs.get_float("eps", "rms"), static_cast<double>(1e-5f));
  net.revalidate();
}

TEST(FuseRmsNorm, MeanOverAnotherAxisStays) {
  Network net = rms_net({0});  // statistics per column: not RMS norm over the features
  const std::string before = graph_text(net);
  EXPECT_FALSE(fuse_rms_norm(net));
  EXPECT_EQ(graph_text(net), before);
}

// ---- fuse_gemm_epilogue -------------------------------------------------------------------------

// x [2, 4] -> matmul "mm" (w [4, 3] constant) -> + b [3] "bias" -> relu "act" -> + r [2, 3] "res".
Network gemm_chain_net() {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 4});
  TensorId r = net.add_input("r", DataType::kFloat32, {2, 3});
  TensorId w = float_constant(net, "w", {4, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  TensorId b = float_constant(net, "b", {3}, {0.5f, -0.5f, 1.f});
  TensorId mm = net.add_matmul(x, w, false, false, "mm").outputs[0];
  TensorId biased = net.add_elementwise(mm, b, "add", "bias").outputs[0];
  TensorId act = net.add_activation(biased, "relu", 0, "act").outputs[0];
  net.mark_output(net.add_elementwise(r, act, "add", "res").outputs[0], "y");
  return net;
}

TEST(FuseGemmEpilogue, MatmulBiasActivationResidualBecomeOneLayer) {
  Network net = gemm_chain_net();
  EXPECT_TRUE(fuse_gemm_epilogue(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"fully_connected"});
  const Layer& fc = net.layers()[0];
  EXPECT_EQ(fc.name, "mm");
  EXPECT_EQ(input_names(net, fc), (std::vector<std::string>{"x", "w_transposed", "b", "r"}));
  const Tensor& wt = net.tensor(fc.inputs[1]);
  EXPECT_EQ(wt.dims, (Dims{3, 4}));  // W^T, [N, K]
  EXPECT_EQ(float_values(wt), (std::vector<float>{1, 4, 7, 10, 2, 5, 8, 11, 3, 6, 9, 12}));
  EXPECT_EQ(fc.attrs.get_string("activation", fc.name), "relu");
  EXPECT_EQ(fc.attrs.get_int("residual", fc.name), 1);
  EXPECT_EQ(fc.attrs.get_string("fused", fc.name), "mm,bias,act,res");
  EXPECT_FALSE(fc.attrs.has("transpose_b"));
  EXPECT_EQ(net.tensor(fc.outputs[0]).name, "y");
  EXPECT_EQ(net.find_tensor("w"), -1);  // the [K, N] original has no reader left
  net.revalidate();
}

TEST(FuseGemmEpilogue, KeptLayerEndsTheChain) {
  Network net = gemm_chain_net();
  EXPECT_TRUE(fuse_gemm_epilogue(net, {"act"}));
  EXPECT_EQ(layer_names(net), (std::vector<std::string>{"mm", "act", "res"}));
  const Layer& fc = layer_named(net, "mm");
  EXPECT_EQ(fc.op, "fully_connected");
  EXPECT_EQ(input_names(net, fc), (std::vector<std::string>{"x", "w_transposed", "b"}));
  EXPECT_EQ(fc.attrs.get_string("fused", fc.name), "mm,bias");
  EXPECT_FALSE(fc.attrs.has("activation"));
  EXPECT_EQ(input_names(net, layer_named(net, "act")), std::vector<std::string>{"bias"});
  net.revalidate();
}

TEST(FuseGemmEpilogue, GemmBetweenRowReshapesReadsTheUnreshapedInput) {
  // x [2, 5, 4] -> reshape [10, 4] -> matmul -> reshape [2, 5, 3] -> + b: torch's Linear on 3-D.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 5, 4});
  TensorId w = float_constant(net, "w", {3, 4}, random_floats(12, 1));
  TensorId b = float_constant(net, "b", {1, 3}, {1.f, 2.f, 3.f});
  TensorId flat = net.add_layer("reshape", {x}, Attributes().set("shape", Dims{10, 4}), "flat").outputs[0];
  TensorId mm = net.add_matmul(flat, w, false, true, "mm").outputs[0];
  TensorId rows =
      net.add_layer("reshape", {mm}, Attributes().set("shape", Dims{2, 5, 3}), "unflat").outputs[0];
  net.mark_output(net.add_elementwise(rows, b, "add", "bias").outputs[0], "y");
  EXPECT_TRUE(fuse_gemm_epilogue(net));
  // The first reshape has no reader left; eliminate_dead_layers removes it.
  EXPECT_EQ(ops_of(net), (std::vector<std::string>{"reshape", "fully_connected"}));
  const Layer& fc = layer_named(net, "mm");
  EXPECT_EQ(input_names(net, fc), (std::vector<std::string>{"x", "w", "b_vector"}));  // tb=1: w as is
  EXPECT_EQ(net.tensor(fc.inputs[2]).dims, (Dims{3}));
  EXPECT_EQ(fc.attrs.get_string("fused", fc.name), "mm,unflat,bias");
  EXPECT_EQ(net.tensor(fc.outputs[0]).name, "y");
  EXPECT_EQ(net.tensor(fc.outputs[0]).dims, (Dims{2, 5, 3}));
  net.revalidate();
  EXPECT_TRUE(eliminate_dead_layers(net));
  EXPECT_EQ(ops_of(net), std::vector<std::string>{"fully_connected"});
}

TEST(FuseGemmEpilogue, GemmOnPlainRowsGetsARowsViewInFront) {
  // x [10, 4] (not a reshape) -> matmul -> reshape [2, 5, 3] -> + b: the fused layer reads
  // reshape(x, [2, 5, 4]) and writes [2, 5, 3] itself.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {10, 4});
  TensorId w = float_constant(net, "w", {3, 4}, random_floats(12, 6));
  TensorId b = float_constant(net, "b", {3}, {1.f, 2.f, 3.f});
  TensorId mm = net.add_matmul(x, w, false, true, "mm").outputs[0];
  TensorId rows =
      net.add_layer("reshape", {mm}, Attributes().set("shape", Dims{2, 5, 3}), "unflat").outputs[0];
  net.mark_output(net.add_elementwise(rows, b, "add", "bias").outputs[0], "y");
  EXPECT_TRUE(fuse_gemm_epilogue(net));
  EXPECT_EQ(layer_names(net), (std::vector<std::string>{"mm/rows", "mm"}));
  const Layer& view = net.layers()[0];
  EXPECT_EQ(view.op, "reshape");
  EXPECT_EQ(input_names(net, view), std::vector<std::string>{"x"});
  EXPECT_EQ(view.attrs.get_ints("shape", view.name), (std::vector<int64_t>{2, 5, 4}));
  const Layer& fc = net.layers()[1];
  EXPECT_EQ(fc.op, "fully_connected");
  EXPECT_EQ(fc.inputs, (std::vector<TensorId>{view.outputs[0], net.find_tensor("w"), net.find_tensor("b")}));
  EXPECT_EQ(fc.attrs.get_string("fused", fc.name), "mm,unflat,bias");
  EXPECT_EQ(net.tensor(fc.outputs[0]).name, "y");
  EXPECT_EQ(net.tensor(fc.outputs[0]).dims, (Dims{2, 5, 3}));
  net.revalidate();
}

TEST(FuseGemmEpilogue, RuntimeWeightOrVisibleIntermediateStays) {
  for (int variant = 0; variant < 2; ++variant) {
    SCOPED_TRACE(variant == 0 ? "weight is a network input" : "the GEMM output is a network output");
    Network net;
    TensorId x = net.add_input("x", DataType::kFloat32, {2, 4});
    TensorId w = variant == 0 ? net.add_input("w", DataType::kFloat32, {4, 3})
                              : float_constant(net, "w", {4, 3}, random_floats(12, 2));
    TensorId b = float_constant(net, "b", {3}, {0.5f, -0.5f, 1.f});
    TensorId mm = net.add_matmul(x, w, false, false, "mm").outputs[0];
    if (variant == 1) net.mark_output(mm, "mm_out");
    net.mark_output(
        net.add_activation(net.add_elementwise(mm, b, "add", "bias").outputs[0], "relu", 0, "act").outputs[0],
        "y");
    const std::string before = graph_text(net);
    EXPECT_FALSE(fuse_gemm_epilogue(net));
    EXPECT_EQ(graph_text(net), before);
  }
}

// ---- fuse_parallel_gemms ------------------------------------------------------------------------

// x [2, 4] read by fully_connected "q" (w [3, 4], b [3]) and "k" (w [5, 4], b [5]), each -> relu.
// `k_activation`: k carries a fused activation (not a plain GEMM).
Network parallel_fc_net(bool k_activation = false) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 4});
  TensorId wq = float_constant(net, "wq", {3, 4}, random_floats(12, 3));
  TensorId bq = float_constant(net, "bq", {3}, {1, 2, 3});
  TensorId wk = float_constant(net, "wk", {5, 4}, random_floats(20, 4));
  TensorId bk = float_constant(net, "bk", {5}, {4, 5, 6, 7, 8});
  Attributes k_attrs;
  if (k_activation) k_attrs.set("activation", std::string("relu"));
  TensorId q = net.add_layer("fully_connected", {x, wq, bq}, Attributes(), "q").outputs[0];
  TensorId k = net.add_layer("fully_connected", {x, wk, bk}, k_attrs, "k").outputs[0];
  net.mark_output(net.add_activation(q, "relu", 0, "rq").outputs[0], "yq");
  net.mark_output(net.add_activation(k, "relu", 0, "rk").outputs[0], "yk");
  return net;
}

TEST(FuseParallelGemms, GemmsOnOneInputBecomeOneGemmAndASplit) {
  Network net = parallel_fc_net();
  std::vector<float> weights = float_values(net.tensor(net.find_tensor("wq")));
  for (float v : float_values(net.tensor(net.find_tensor("wk")))) weights.push_back(v);
  EXPECT_TRUE(fuse_parallel_gemms(net));
  EXPECT_EQ(layer_names(net), (std::vector<std::string>{"q_merged", "q_split", "rq", "rk"}));
  const Layer& fc = layer_named(net, "q_merged");
  EXPECT_EQ(fc.op, "fully_connected");
  EXPECT_EQ(input_names(net, fc), (std::vector<std::string>{"x", "q_merged.weight", "q_merged.bias"}));
  EXPECT_EQ(net.tensor(fc.inputs[1]).dims, (Dims{8, 4}));
  EXPECT_EQ(float_values(net.tensor(fc.inputs[1])), weights);  // wq's rows, then wk's
  EXPECT_EQ(float_values(net.tensor(fc.inputs[2])), (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(fc.attrs.get_string("fused", fc.name), "q,k");
  const Layer& split = layer_named(net, "q_split");
  EXPECT_EQ(split.op, "split");
  EXPECT_EQ(input_names(net, split), std::vector<std::string>{"q_merged"});
  EXPECT_EQ(split.attrs.get_int("axis", split.name), 1);
  EXPECT_EQ(split.attrs.get_ints("sizes", split.name), (std::vector<int64_t>{3, 5}));
  // The split writes the original output tensors: their readers are untouched.
  ASSERT_EQ(split.outputs.size(), 2u);
  EXPECT_EQ(net.tensor(split.outputs[0]).name, "q");
  EXPECT_EQ(net.tensor(split.outputs[1]).name, "k");
  EXPECT_EQ(input_names(net, layer_named(net, "rk")), std::vector<std::string>{"k"});
  net.revalidate();
}

// A Linear without bias is a matmul on a constant weight (Llama's Q, K and V): x [1, 3, 4] times
// wq [4, 6], wk [4, 2] and wv [2, 4] with transpose_b. They merge as fully_connected layers and
// compute what they did.
TEST(FuseParallelGemms, MatmulsOnConstantWeightsMergeToo) {
  auto make = [] {
    Network net;
    TensorId x = net.add_input("x", DataType::kFloat32, {1, 3, 4});
    TensorId wq = float_constant(net, "wq", {4, 6}, random_floats(24, 5));
    TensorId wk = float_constant(net, "wk", {4, 2}, random_floats(8, 6));
    TensorId wv = float_constant(net, "wv", {2, 4}, random_floats(8, 7));
    net.mark_output(net.add_layer("matmul", {x, wq}, Attributes(), "q").outputs[0], "yq");
    net.mark_output(net.add_layer("matmul", {x, wk}, Attributes(), "k").outputs[0], "yk");
    net.mark_output(
        net.add_layer("matmul", {x, wv}, Attributes().set("transpose_b", int64_t{1}), "v").outputs[0], "yv");
    return net;
  };
  Network net = make();
  EXPECT_TRUE(fuse_parallel_gemms(net));
  EXPECT_EQ(ops_of(net), (std::vector<std::string>{"fully_connected", "split"}));
  EXPECT_EQ(net.tensor(net.layers()[0].inputs[1]).dims, (Dims{10, 4}));
  EXPECT_EQ(layer_named(net, "q_split").attrs.get_ints("sizes", "q_split"), (std::vector<int64_t>{6, 2, 2}));
  net.revalidate();
  const Feed feed = {{"x", {{1, 3, 4}, random_floats(12, 8)}}};
  const auto want = run_reference(make(), feed, false), got = run_reference(make(), feed, true);
  for (const char* y : {"yq", "yk", "yv"}) {
    ASSERT_EQ(want.at(y).size(), got.at(y).size()) << y;
    for (size_t i = 0; i < want.at(y).size(); ++i) EXPECT_NEAR(want.at(y)[i], got.at(y)[i], 1e-5) << y << i;
  }
}

TEST(FuseParallelGemms, GemmWithEpilogueOrKeptStaysAlone) {
  for (bool kept : {false, true}) {
    SCOPED_TRACE(kept ? "k is kept" : "k has an activation");
    Network net = parallel_fc_net(!kept);
    const std::string before = graph_text(net);
    EXPECT_FALSE(fuse_parallel_gemms(net, kept ? std::set<std::string>{"k"} : std::set<std::string>{}));
    EXPECT_EQ(graph_text(net), before);
  }
}

// ---- drop_trivial_attention_masks ---------------------------------------------------------------

// attention(q, k, v [1, 2, 3, 4]; mask) -> y, the mask a constant of `dtype` [3, 3] holding `values`.
Network masked_attention_net(DataType dtype, const std::vector<float>& values, bool mask_is_input = false) {
  Network net;
  TensorId q = net.add_input("q", DataType::kFloat32, {1, 2, 3, 4});
  TensorId k = net.add_input("k", DataType::kFloat32, {1, 2, 3, 4});
  TensorId v = net.add_input("v", DataType::kFloat32, {1, 2, 3, 4});
  TensorId mask;
  if (mask_is_input) {
    mask = net.add_input("mask", dtype, {3, 3});
  } else if (dtype == DataType::kBool) {
    std::vector<uint8_t> b;
    for (float x : values) b.push_back(x != 0);
    mask = net.add_constant("mask", dtype, {3, 3}, b.data(), b.size());
  } else {
    mask = float_constant(net, "mask", {3, 3}, values);
  }
  net.mark_output(net.add_layer("attention", {q, k, v, mask}, Attributes(), "att").outputs[0], "y");
  return net;
}

TEST(DropTrivialAttentionMasks, AllTrueBoolMaskGoes) {
  Network net = masked_attention_net(DataType::kBool, std::vector<float>(9, 1.f));
  EXPECT_TRUE(drop_trivial_attention_masks(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"attention"});
  EXPECT_EQ(input_names(net, net.layers()[0]), (std::vector<std::string>{"q", "k", "v"}));
  EXPECT_EQ(net.find_tensor("mask"), -1);
  net.revalidate();
}

TEST(DropTrivialAttentionMasks, ZeroAdditiveMaskOfPackedAttentionGoes) {
  Network net;
  TensorId qkv = net.add_input("qkv", DataType::kFloat32, {1, 3, 3, 2, 4});
  TensorId mask = float_constant(net, "mask", {1, 1, 3, 3}, {0.f, -0.f, 0.f, 0.f, 0.f, -0.f, 0.f, 0.f, 0.f});
  net.mark_output(net.add_layer("packed_attention", {qkv, mask}, Attributes(), "att").outputs[0], "y");
  EXPECT_TRUE(drop_trivial_attention_masks(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"packed_attention"});
  EXPECT_EQ(input_names(net, net.layers()[0]), std::vector<std::string>{"qkv"});
  EXPECT_EQ(net.find_tensor("mask"), -1);
  net.revalidate();
}

TEST(DropTrivialAttentionMasks, MaskThatHidesSomethingStays) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> ones(9, 1.f), zeros(9, 0.f);
  std::vector<float> one_false = ones, one_tiny = zeros;
  one_false[4] = 0.f;
  one_tiny[8] = 1e-30f;
  std::vector<float> causal = {0, -inf, -inf, 0, 0, -inf, 0, 0, 0};
  struct Case {
    const char* what;
    DataType dtype;
    std::vector<float> values;
    bool input;
  };
  for (const Case& c : {Case{"bool mask with a false", DataType::kBool, one_false, false},
                        Case{"additive causal mask", DataType::kFloat32, causal, false},
                        Case{"additive mask with a tiny entry", DataType::kFloat32, one_tiny, false},
                        Case{"mask given at run time", DataType::kBool, ones, true}}) {
    SCOPED_TRACE(c.what);
    Network net = masked_attention_net(c.dtype, c.values, c.input);
    const std::string before = graph_text(net);
    EXPECT_FALSE(drop_trivial_attention_masks(net));
    EXPECT_EQ(graph_text(net), before);
  }
}

// ---- rotate_half_to_gather ----------------------------------------------------------------------

// transformers' rotary embedding on x [1, 2, 3, 8]: y = x * cos + rotate_half(x) * sin with
// rotate_half(x) = concat(-x[..., 4:], x[..., :4]). `swapped`: concat(x[..., :4], -x[..., 4:])
// instead (not rotate_half).
Network rotary_net(DataType dtype, bool swapped = false) {
  Network net;
  const Dims dims{1, 2, 3, 8};
  TensorId x = net.add_input("x", dtype, dims);
  TensorId cos = net.add_input("cos", dtype, {1, 1, 3, 8});
  TensorId sin = net.add_input("sin", dtype, {1, 1, 3, 8});
  auto slice = [&](int64_t start, int64_t end, const std::string& name) {
    Attributes a;
    a.set("axes", std::vector<int64_t>{-1}).set("starts", std::vector<int64_t>{start});
    a.set("ends", std::vector<int64_t>{end});
    return net.add_layer("slice", {x}, a, name).outputs[0];
  };
  TensorId lo = slice(0, 4, "x1");
  TensorId hi = slice(4, std::numeric_limits<int64_t>::max(), "x2");
  TensorId neg =
      net.add_layer("unary", {swapped ? lo : hi}, Attributes().set("op", std::string("neg")), "neg")
          .outputs[0];
  TensorId rot =
      net.add_layer("concat", {neg, swapped ? hi : lo}, Attributes().set("axis", int64_t{-1}), "cat")
          .outputs[0];
  TensorId a = net.add_elementwise(x, cos, "mul", "mul_cos").outputs[0];
  TensorId b = net.add_elementwise(rot, sin, "mul", "mul_sin").outputs[0];
  net.mark_output(net.add_elementwise(a, b, "add", "add").outputs[0], "y");
  return net;
}

TEST(RotateHalfToGather, FourLayersBecomeAGatherAndASignAndComputeTheSame) {
  for (DataType dtype : {DataType::kFloat32, DataType::kFloat16}) {
    SCOPED_TRACE(dtype_name(dtype));
    Network net = rotary_net(dtype);
    EXPECT_TRUE(rotate_half_to_gather(net));
    EXPECT_TRUE(eliminate_dead_layers(net));
    EXPECT_EQ(ops_of(net), (std::vector<std::string>{"gather", "elementwise", "elementwise", "elementwise",
                                                     "elementwise"}));
    net.revalidate();
    if (dtype != DataType::kFloat32) continue;  // run_float feeds float32
    Feed feed;
    uint32_t seed = 21;
    for (const char* name : {"x", "cos", "sin"}) {
      const Dims& d = net.tensor(net.find_tensor(name)).dims;
      feed[name] = {d, random_floats(static_cast<size_t>(volume(d)), seed++)};
    }
    BuilderConfig reference;
    reference.target = BuildTarget::kReference;
    const Plan built = Builder().build(rotary_net(dtype), reference);
    for (const auto& l : built.network.layers()) EXPECT_NE(l.op, "concat") << l.name;  // in the pipeline too
    const auto want = run_reference(rotary_net(dtype), feed, false);
    EXPECT_EQ(want.at("y"), run_reference(rotary_net(dtype), feed, true).at("y"));  // -x is x * -1
  }
}

TEST(RotateHalfToGather, OtherConcatsStay) {
  Network net = rotary_net(DataType::kFloat32, /*swapped=*/true);
  const std::string before = graph_text(net);
  EXPECT_FALSE(rotate_half_to_gather(net));
  EXPECT_EQ(graph_text(net), before);
}

// ---- fold_repeat_kv -----------------------------------------------------------------------------

// q [1, 4, 3, 8] (bhsd) or [1, 3, 4, 8] (bshd); k0, v0 with 2 heads, each copied twice by
// transformers' repeat_kv (unsqueeze, expand, reshape) before a causal attention. `v_copied`
// false: the value is an input of 4 heads instead (only the key is a copy).
Network repeat_kv_net(bool bshd, bool v_copied = true) {
  Network net;
  const Dims q_dims = bshd ? Dims{1, 3, 4, 8} : Dims{1, 4, 3, 8};
  const Dims kv_dims = bshd ? Dims{1, 3, 2, 8} : Dims{1, 2, 3, 8};
  const int64_t head = bshd ? 2 : 1;
  TensorId q = net.add_input("q", DataType::kFloat32, q_dims);
  auto repeat = [&](const std::string& name, int64_t n) {
    TensorId x = net.add_input(name, DataType::kFloat32, kv_dims);
    TensorId u = net.add_layer("unsqueeze", {x}, Attributes().set("axes", std::vector<int64_t>{head + 1}),
                               name + "_unsqueeze")
                     .outputs[0];
    Dims expanded = kv_dims, flat = kv_dims;
    expanded.insert(expanded.begin() + head + 1, n);
    flat[static_cast<size_t>(head)] *= n;
    TensorId e =
        net.add_layer("expand", {u}, Attributes().set("shape", expanded), name + "_expand").outputs[0];
    return net.add_layer("reshape", {e}, Attributes().set("shape", flat), name + "_repeated").outputs[0];
  };
  TensorId k = repeat("k0", 2);
  TensorId v = v_copied ? repeat("v0", 2) : net.add_input("v", DataType::kFloat32, q_dims);
  Attributes a = Attributes().set("causal", int64_t{1});
  if (bshd) a.set("layout", std::string("bshd"));
  net.mark_output(net.add_layer("attention", {q, k, v}, a, "att").outputs[0], "y");
  return net;
}

TEST(FoldRepeatKv, AttentionReadsTheUncopiedHeadsAndComputesTheSame) {
  for (bool bshd : {false, true}) {
    SCOPED_TRACE(bshd ? "bshd" : "bhsd");
    Network net = repeat_kv_net(bshd);
    EXPECT_TRUE(fold_repeat_kv(net));
    EXPECT_TRUE(eliminate_dead_layers(net));
    ASSERT_EQ(ops_of(net), std::vector<std::string>{"attention"});
    EXPECT_EQ(input_names(net, net.layers()[0]), (std::vector<std::string>{"q", "k0", "v0"}));
    net.revalidate();
    // The built engine (the pass in its pipeline) against one built without passes.
    const Network original = repeat_kv_net(bshd);
    Feed feed;
    uint32_t seed = 3;
    for (TensorId in : original.inputs()) {
      const Tensor& t = original.tensor(in);
      feed[t.name] = {t.dims, random_floats(static_cast<size_t>(volume(t.dims)), seed++)};
    }
    BuilderConfig reference;
    reference.target = BuildTarget::kReference;
    EXPECT_EQ(ops_of(Builder().build(original, reference).network), std::vector<std::string>{"attention"});
    const auto want = run_reference(original, feed, false), got = run_reference(original, feed, true);
    ASSERT_EQ(want.at("y").size(), got.at("y").size());
    for (size_t i = 0; i < want.at("y").size(); ++i) EXPECT_NEAR(want.at("y")[i], got.at("y")[i], 1e-6) << i;
  }
}

TEST(FoldRepeatKv, ValueNotCopiedOrHeadsCopiedAlongAnotherDimStay) {
  {
    Network net = repeat_kv_net(false, false);  // only the key is a copy: k and v must agree
    const std::string before = graph_text(net);
    EXPECT_FALSE(fold_repeat_kv(net));
    EXPECT_EQ(graph_text(net), before);
  }
  {
    // The heads copied along another dim (the sequence's): not the pairing attention makes.
    Network net;
    TensorId q = net.add_input("q", DataType::kFloat32, {1, 4, 6, 8});
    auto other = [&](const std::string& name) {
      TensorId x = net.add_input(name, DataType::kFloat32, {1, 4, 3, 8});
      TensorId u =
          net.add_layer("unsqueeze", {x}, Attributes().set("axes", std::vector<int64_t>{3}), name + "_u")
              .outputs[0];
      TensorId e = net.add_layer("expand", {u}, Attributes().set("shape", Dims{1, 4, 3, 2, 8}), name + "_e")
                       .outputs[0];
      return net.add_layer("reshape", {e}, Attributes().set("shape", Dims{1, 4, 6, 8}), name + "_r")
          .outputs[0];
    };
    TensorId k = other("k0"), v = other("v0");
    net.mark_output(net.add_layer("attention", {q, k, v}, Attributes(), "att").outputs[0], "y");
    const std::string before = graph_text(net);
    EXPECT_FALSE(fold_repeat_kv(net));
    EXPECT_EQ(graph_text(net), before);
  }
}

// ---- fold_attention_transposes ------------------------------------------------------------------

// qp, kp, vp [B=1, S=3, H=2, D=4] -> transposes (1 2) "tq", "tk", "tv" -> attention "att" [1, 2, 3, 4].
// `k_transposed` false: k is an input already in [B, H, S, D].
struct AttentionInputs {
  Network net;
  TensorId att = -1;
};
AttentionInputs transposed_attention_net(bool k_transposed = true) {
  AttentionInputs a;
  Network& net = a.net;
  const Attributes swap = Attributes().set("perm", std::vector<int64_t>{0, 2, 1, 3});
  TensorId q = net.add_layer("transpose", {net.add_input("qp", DataType::kFloat32, {1, 3, 2, 4})}, swap, "tq")
                   .outputs[0];
  TensorId k =
      k_transposed
          ? net.add_layer("transpose", {net.add_input("kp", DataType::kFloat32, {1, 3, 2, 4})}, swap, "tk")
                .outputs[0]
          : net.add_input("k", DataType::kFloat32, {1, 2, 3, 4});
  TensorId v = net.add_layer("transpose", {net.add_input("vp", DataType::kFloat32, {1, 3, 2, 4})}, swap, "tv")
                   .outputs[0];
  a.att = net.add_layer("attention", {q, k, v}, Attributes().set("causal", int64_t{1}), "att").outputs[0];
  return a;
}

TEST(FoldAttentionTransposes, AttentionTakesOverAllFourTransposes) {
  AttentionInputs a = transposed_attention_net();
  Network& net = a.net;
  const Attributes swap = Attributes().set("perm", std::vector<int64_t>{0, 2, 1, 3});
  net.mark_output(net.add_layer("transpose", {a.att}, swap, "to").outputs[0], "y");
  EXPECT_TRUE(fold_attention_transposes(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"attention"});
  const Layer& att = net.layers()[0];
  EXPECT_EQ(att.name, "att");
  EXPECT_EQ(input_names(net, att), (std::vector<std::string>{"qp", "kp", "vp"}));
  EXPECT_EQ(att.attrs.get_string("layout", att.name), "bshd");
  EXPECT_EQ(att.attrs.get_int("causal", att.name), 1);
  EXPECT_EQ(att.attrs.get_string("fused", att.name), "att,to");
  EXPECT_EQ(net.tensor(att.outputs[0]).name, "y");
  EXPECT_EQ(net.tensor(att.outputs[0]).dims, (Dims{1, 3, 2, 4}));
  net.revalidate();
}

TEST(FoldAttentionTransposes, OutputReadOtherwiseGetsATransposeBack) {
  AttentionInputs a = transposed_attention_net();
  Network& net = a.net;
  net.mark_output(a.att, "y");
  net.mark_output(net.layers()[0].outputs[0], "q_heads");  // tq is read elsewhere: it stays
  EXPECT_TRUE(fold_attention_transposes(net));
  ASSERT_EQ(ops_of(net), (std::vector<std::string>{"transpose", "attention", "transpose"}));
  EXPECT_EQ(net.layers()[0].name, "tq");
  const Layer& att = net.layers()[1];
  EXPECT_EQ(att.name, "att");
  EXPECT_EQ(input_names(net, att), (std::vector<std::string>{"qp", "kp", "vp"}));
  EXPECT_EQ(att.attrs.get_string("layout", att.name), "bshd");
  EXPECT_EQ(net.tensor(att.outputs[0]).dims, (Dims{1, 3, 2, 4}));
  const Layer& back = net.layers()[2];
  EXPECT_EQ(back.name, "att_to_bhsd");  // named after the attention it follows
  EXPECT_EQ(back.inputs, std::vector<TensorId>{att.outputs[0]});
  EXPECT_EQ(back.attrs.get_ints("perm", "back"), (std::vector<int64_t>{0, 2, 1, 3}));
  EXPECT_EQ(net.tensor(back.outputs[0]).name, "y");
  EXPECT_EQ(net.tensor(back.outputs[0]).dims, (Dims{1, 2, 3, 4}));
  net.revalidate();
}

TEST(FoldAttentionTransposes, OperandWithoutTransposeStays) {
  AttentionInputs a = transposed_attention_net(/*k_transposed=*/false);
  a.net.mark_output(a.att, "y");
  const std::string before = graph_text(a.net);
  EXPECT_FALSE(fold_attention_transposes(a.net));
  EXPECT_EQ(graph_text(a.net), before);
}

// transformers' rotary embedding between the head transposes and the attention: qp, kp, vp
// [1, S=3, H=2, D=4] -> transposes (1 2) -> q and k rotated (x * cos + gather(x) * sign * sin, cos
// and sin inputs [1, 1, 3, 4]) -> attention -> transpose (1 2) -> y. `cos_heads`: cos has a head
// dim of 2 ([1, 2, 3, 4]), which no reshape swaps. `shared_qk`: the rotated q is the key too.
Network rotary_attention_net(bool cos_heads = false, bool shared_qk = false) {
  Network net;
  const Attributes swap = Attributes().set("perm", std::vector<int64_t>{0, 2, 1, 3});
  const TensorId cos = net.add_input("cos", DataType::kFloat32, {1, cos_heads ? 2 : 1, 3, 4});
  const TensorId sin = net.add_input("sin", DataType::kFloat32, {1, 1, 3, 4});
  const std::vector<int64_t> order = {2, 3, 0, 1};
  const TensorId index = net.add_constant("rot.index", DataType::kInt64, {4}, order.data(), 32);
  const TensorId sign = float_constant(net, "rot.sign", {4}, {-1, -1, 1, 1});
  auto heads = [&](const std::string& name) {
    return net
        .add_layer("transpose", {net.add_input(name + "p", DataType::kFloat32, {1, 3, 2, 4})}, swap,
                   "t" + name)
        .outputs[0];
  };
  auto rotary = [&](TensorId x, const std::string& name) {
    const TensorId a = net.add_elementwise(x, cos, "mul", name + "_cos").outputs[0];
    TensorId r =
        net.add_layer("gather", {x, index}, Attributes().set("axis", int64_t{3}), name + "_rot").outputs[0];
    r = net.add_elementwise(r, sign, "mul", name + "_sign").outputs[0];
    r = net.add_elementwise(r, sin, "mul", name + "_sin").outputs[0];
    return net.add_elementwise(a, r, "add", name + "_embed").outputs[0];
  };
  const TensorId q = rotary(heads("q"), "q"), k = shared_qk ? q : rotary(heads("k"), "k"), v = heads("v");
  const TensorId att =
      net.add_layer("attention", {q, k, v}, Attributes().set("causal", int64_t{1}), "att").outputs[0];
  net.mark_output(net.add_layer("transpose", {att}, swap, "to").outputs[0], "y");
  return net;
}

TEST(FoldAttentionTransposes, TransposesSinkThroughTheRotaryEmbeddingAndFold) {
  for (bool shared_qk : {false, true}) {
    SCOPED_TRACE(shared_qk ? "q is the key too" : "q and k");
    const Network original = rotary_attention_net(false, shared_qk);
    Network net = original;
    EXPECT_TRUE(fold_attention_transposes(net));
    const std::vector<std::string> ops = ops_of(net);
    EXPECT_EQ(std::count(ops.begin(), ops.end(), "transpose"), 0) << graph_text(net);
    const Layer& att = layer_named(net, "att");
    EXPECT_EQ(att.attrs.get_string("layout", att.name), "bshd");
    EXPECT_EQ(input_names(net, att)[2], "vp");
    EXPECT_EQ(att.inputs[0] == att.inputs[1], shared_qk);
    EXPECT_EQ(net.tensor(layer_named(net, "q_embed").outputs[0]).dims, (Dims{1, 3, 2, 4}));  // names kept
    EXPECT_EQ(layer_named(net, "q_rot").attrs.get_int("axis", "q_rot"), 3);
    net.revalidate();
    Feed feed;
    uint32_t seed = 3;
    for (TensorId t : original.inputs()) {
      const Dims& d = original.tensor(t).dims;
      feed[original.tensor(t).name] = {d, random_floats(static_cast<size_t>(volume(d)), seed++)};
    }
    EXPECT_EQ(run_reference(net, feed, false).at("y"), run_reference(original, feed, false).at("y"));
  }
}

TEST(FoldAttentionTransposes, RotaryWithAHeadDimOrReadElsewhereStays) {
  {
    Network net = rotary_attention_net(/*cos_heads=*/true);  // cos [1, 2, 3, 4]: no reshape swaps it
    const std::string before = graph_text(net);
    EXPECT_FALSE(fold_attention_transposes(net));
    EXPECT_EQ(graph_text(net), before);
  }
  {
    Network net = rotary_attention_net();
    net.mark_output(layer_named(net, "k_sin").outputs[0], "k_sin_out");  // read outside the cone
    const std::string before = graph_text(net);
    EXPECT_FALSE(fold_attention_transposes(net));
    EXPECT_EQ(graph_text(net), before);
  }
}

// k as the dynamo ONNX exporter writes SDPA's key: kp [1, 3, 8] -> reshape [1, 3, 2, 4] ->
// transpose (1 2) -> reshape [2, 3, 4] -> transpose (0 2 1)... here the chain after
// fuse_attention put k back: reshape [3, 2, 4] -> transpose (1 0 2) -> reshape [1, 2, 3, 4].
// `swap`: the chain swaps head and sequence; otherwise it reads kp's [1, 2, 3, 4] row-major.
Network onnx_key_attention_net(bool swap) {
  Network net;
  const Attributes to_heads = Attributes().set("perm", std::vector<int64_t>{0, 2, 1, 3});
  TensorId q =
      net.add_layer("transpose", {net.add_input("qp", DataType::kFloat32, {1, 3, 2, 4})}, to_heads, "tq")
          .outputs[0];
  TensorId v =
      net.add_layer("transpose", {net.add_input("vp", DataType::kFloat32, {1, 3, 2, 4})}, to_heads, "tv")
          .outputs[0];
  TensorId kp = net.add_input("kp", DataType::kFloat32, {1, 3, 8});
  TensorId k = net.add_layer("reshape", {kp}, Attributes().set("shape", swap ? Dims{3, 2, 4} : Dims{2, 3, 4}),
                             "k/factors")
                   .outputs[0];
  if (swap) {
    k = net.add_layer("transpose", {k}, Attributes().set("perm", std::vector<int64_t>{1, 0, 2}), "k/order")
            .outputs[0];
  }
  k = net.add_layer("reshape", {k}, Attributes().set("shape", Dims{1, 2, 3, 4}), "k").outputs[0];
  const TensorId att = net.add_layer("attention", {q, k, v}, Attributes(), "att").outputs[0];
  net.mark_output(net.add_layer("transpose", {att}, to_heads, "to").outputs[0], "y");
  return net;
}

TEST(FoldAttentionTransposes, KeyWrittenAsAnotherViewChainIsReadAsAReshape) {
  Network net = onnx_key_attention_net(/*swap=*/true);
  EXPECT_TRUE(fold_attention_transposes(net));
  // The chain k/factors -> k/order -> k is gone; one reshape of kp to [1, 3, 2, 4] feeds the
  // bshd attention.
  ASSERT_EQ(ops_of(net), (std::vector<std::string>{"reshape", "attention"}));
  const Layer& reshape = net.layers()[0];
  EXPECT_EQ(reshape.name, "att/k_bshd");
  EXPECT_EQ(input_names(net, reshape), std::vector<std::string>{"kp"});
  EXPECT_EQ(net.tensor(reshape.outputs[0]).dims, (Dims{1, 3, 2, 4}));
  const Layer& att = net.layers()[1];
  EXPECT_EQ(input_names(net, att), (std::vector<std::string>{"qp", "att/k_bshd", "vp"}));
  EXPECT_EQ(att.attrs.get_string("layout", att.name), "bshd");
  EXPECT_EQ(net.tensor(att.outputs[0]).name, "y");
  net.revalidate();
}

TEST(FoldAttentionTransposes, ViewChainThatIsNoHeadSequenceSwapStays) {
  Network net = onnx_key_attention_net(/*swap=*/false);
  const std::string before = graph_text(net);
  EXPECT_FALSE(fold_attention_transposes(net));
  EXPECT_EQ(graph_text(net), before);
}

// ---- pack_qkv_attention -------------------------------------------------------------------------

// x [1, 3, 24] -> split (8, 8, 8) -> reshapes to [1, 3, 2, 4] -> bshd attention "att" -> y.
// `shape_tensor`: the reshapes share one int64 shape tensor instead of a `shape` attribute;
// `swap_qk`: q reads the split's second output and k its first; `k_by_attribute`: k's reshape
// states the same static target as an attribute (fold_attention_transposes' reshapes do).
Network split_attention_net(bool shape_tensor, bool swap_qk = false, bool k_by_attribute = false) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1, 3, 24});
  const Layer& split = net.add_layer(
      "split", {x}, Attributes().set("axis", int64_t{-1}).set("sizes", std::vector<int64_t>{8, 8, 8}),
      "qkv_split");
  std::vector<TensorId> parts = split.outputs;
  if (swap_qk) std::swap(parts[0], parts[1]);
  const TensorId target = shape_tensor ? int64_constant(net, "target", {4}, {1, 3, 2, 4}) : -1;
  std::vector<TensorId> heads;
  const char* names[] = {"rq", "rk", "rv"};
  for (int j = 0; j < 3; ++j) {
    heads.push_back(
        shape_tensor && !(k_by_attribute && j == 1)
            ? net.add_layer("reshape", {parts[j], target}, Attributes(), names[j]).outputs[0]
            : net.add_layer("reshape", {parts[j]}, Attributes().set("shape", Dims{1, 3, 2, 4}), names[j])
                  .outputs[0]);
  }
  Attributes attrs = Attributes().set("layout", std::string("bshd")).set("causal", int64_t{1});
  net.mark_output(net.add_layer("attention", heads, attrs, "att").outputs[0], "y");
  return net;
}

TEST(PackQkvAttention, SplitProjectionBecomesPackedAttention) {
  Network net = split_attention_net(/*shape_tensor=*/false);
  EXPECT_TRUE(pack_qkv_attention(net));
  EXPECT_EQ(layer_names(net), (std::vector<std::string>{"att_qkv", "att"}));
  const Layer& packed_in = layer_named(net, "att_qkv");
  EXPECT_EQ(packed_in.op, "reshape");
  EXPECT_EQ(input_names(net, packed_in), std::vector<std::string>{"x"});
  EXPECT_EQ(packed_in.attrs.get_ints("shape", packed_in.name), (std::vector<int64_t>{1, 3, 3, 2, 4}));
  const Layer& att = layer_named(net, "att");
  EXPECT_EQ(att.op, "packed_attention");
  EXPECT_EQ(input_names(net, att), std::vector<std::string>{"att_qkv"});
  EXPECT_EQ(att.attrs.get_int("causal", att.name), 1);
  EXPECT_FALSE(att.attrs.has("layout"));  // packed_attention's default: bshd
  EXPECT_EQ(net.tensor(att.outputs[0]).name, "y");
  EXPECT_EQ(net.tensor(att.outputs[0]).dims, (Dims{1, 3, 2, 4}));
  net.revalidate();
}

TEST(PackQkvAttention, SharedShapeTensorKeepsFollowingTheShape) {
  Network net = split_attention_net(/*shape_tensor=*/true);
  EXPECT_TRUE(pack_qkv_attention(net));
  EXPECT_EQ(ops_of(net), (std::vector<std::string>{"slice", "concat", "reshape", "packed_attention"}));
  const Layer& lead = net.layers()[0];
  EXPECT_EQ(input_names(net, lead), std::vector<std::string>{"target"});
  EXPECT_EQ(lead.attrs.get_ints("ends", lead.name), std::vector<int64_t>{2});
  const Layer& target = net.layers()[1];
  ASSERT_EQ(target.inputs.size(), 2u);
  EXPECT_EQ(target.inputs[0], lead.outputs[0]);
  const Tensor& tail = net.tensor(target.inputs[1]);
  ASSERT_EQ(tail.kind, TensorKind::kConstant);
  ASSERT_TRUE(tail.values);
  EXPECT_EQ(*tail.values, (std::vector<int64_t>{3, 2, 4}));
  const Layer& reshape = net.layers()[2];
  EXPECT_EQ(reshape.inputs[0], net.find_tensor("x"));
  EXPECT_EQ(reshape.inputs[1], target.outputs[0]);
  EXPECT_EQ(net.tensor(reshape.outputs[0]).dims, (Dims{1, 3, 3, 2, 4}));
  EXPECT_EQ(net.layers()[3].inputs, std::vector<TensorId>{reshape.outputs[0]});
  net.revalidate();
}

TEST(PackQkvAttention, StaticTargetsStatedDifferentlyStillPack) {
  Network net = split_attention_net(/*shape_tensor=*/true, /*swap_qk=*/false, /*k_by_attribute=*/true);
  EXPECT_TRUE(pack_qkv_attention(net));
  EXPECT_EQ(ops_of(net), (std::vector<std::string>{"slice", "concat", "reshape", "packed_attention"}));
  EXPECT_EQ(net.tensor(net.layers()[2].outputs[0]).dims, (Dims{1, 3, 3, 2, 4}));
  net.revalidate();
}

TEST(PackQkvAttention, OperandsOutOfOrderOrBhsdStay) {
  for (int variant = 0; variant < 2; ++variant) {
    SCOPED_TRACE(variant == 0 ? "q and k swapped" : "bhsd attention");
    Network net = split_attention_net(false, /*swap_qk=*/variant == 0);
    if (variant == 1) net.mutable_layers().back().attrs.set("layout", std::string("bhsd"));
    const std::string before = graph_text(net);
    EXPECT_FALSE(pack_qkv_attention(net));
    EXPECT_EQ(graph_text(net), before);
  }
}

// ---- pack_attention_views -----------------------------------------------------------------------

// y [B=2, S=3, 24] (H=2, D=4) -> reshape [2, 3, 3, 2, 4] -> select(2, order[j]) -> transpose (1 2)
// -> q, k, v [2, 2, 3, 4] -> bhsd attention "att".
struct ViewAttention {
  Network net;
  TensorId att = -1;
};
ViewAttention view_attention_net(std::vector<int64_t> order = {0, 1, 2}) {
  ViewAttention a;
  Network& net = a.net;
  TensorId y = net.add_input("y", DataType::kFloat32, {2, 3, 24});
  TensorId r = net.add_layer("reshape", {y}, Attributes().set("shape", Dims{2, 3, 3, 2, 4}), "r5").outputs[0];
  std::vector<TensorId> qkv;
  const char* names[] = {"q", "k", "v"};
  for (int j = 0; j < 3; ++j) {
    const std::string n = names[j];
    TensorId index = int64_constant(net, "i" + n, {}, {order[j]});
    TensorId g =
        net.add_layer("gather", {r, index}, Attributes().set("axis", int64_t{2}), "g" + n).outputs[0];
    qkv.push_back(
        net.add_layer("transpose", {g}, Attributes().set("perm", std::vector<int64_t>{0, 2, 1, 3}), "t" + n)
            .outputs[0]);
  }
  a.att = net.add_layer("attention", qkv, Attributes(), "att").outputs[0];
  return a;
}

TEST(PackAttentionViews, ViewsOfOneProjectionBecomePackedAttention) {
  ViewAttention a = view_attention_net();
  Network& net = a.net;
  net.mark_output(a.att, "out");
  EXPECT_TRUE(pack_attention_views(net));
  const Layer* packed_in = find_layer(net, "att_qkv");
  const Layer* att = find_layer(net, "att");
  const Layer* back = find_layer(net, "att_to_bhsd");
  ASSERT_TRUE(packed_in && att && back);
  EXPECT_EQ(packed_in->op, "reshape");
  EXPECT_EQ(input_names(net, *packed_in), std::vector<std::string>{"y"});
  EXPECT_EQ(packed_in->attrs.get_ints("shape", packed_in->name), (std::vector<int64_t>{2, 3, 3, 2, 4}));
  EXPECT_EQ(att->op, "packed_attention");
  EXPECT_EQ(att->inputs, std::vector<TensorId>{packed_in->outputs[0]});
  EXPECT_EQ(att->attrs.get_string("layout", att->name), "bshd");  // y's rows are batch-first
  EXPECT_EQ(net.tensor(att->outputs[0]).dims, (Dims{2, 3, 2, 4}));
  EXPECT_EQ(back->inputs, std::vector<TensorId>{att->outputs[0]});
  EXPECT_EQ(back->attrs.get_ints("perm", back->name), (std::vector<int64_t>{0, 2, 1, 3}));
  EXPECT_EQ(net.tensor(back->outputs[0]).name, "out");
  EXPECT_EQ(net.tensor(back->outputs[0]).dims, (Dims{2, 2, 3, 4}));
  net.revalidate();
  // The view chains are left to eliminate_dead_layers.
  EXPECT_TRUE(eliminate_dead_layers(net));
  EXPECT_EQ(layer_names(net), (std::vector<std::string>{"att_qkv", "att", "att_to_bhsd"}));
}

TEST(PackAttentionViews, OutputTransposeToBshdIsTakenOver) {
  ViewAttention a = view_attention_net();
  Network& net = a.net;
  const Attributes swap = Attributes().set("perm", std::vector<int64_t>{0, 2, 1, 3});
  net.mark_output(net.add_layer("transpose", {a.att}, swap, "to_bshd").outputs[0], "out");
  EXPECT_TRUE(pack_attention_views(net));
  EXPECT_EQ(find_layer(net, "to_bshd"), nullptr);
  const Layer& att = layer_named(net, "att");
  EXPECT_EQ(att.op, "packed_attention");
  EXPECT_EQ(att.attrs.get_string("fused", att.name), "att,to_bshd");
  EXPECT_EQ(net.tensor(att.outputs[0]).name, "out");
  EXPECT_EQ(net.tensor(att.outputs[0]).dims, (Dims{2, 3, 2, 4}));
  net.revalidate();
  EXPECT_TRUE(eliminate_dead_layers(net));
  EXPECT_EQ(layer_names(net), (std::vector<std::string>{"att_qkv", "att"}));
}

TEST(PackAttentionViews, OperandsNotInQkvOrderStay) {
  ViewAttention a = view_attention_net({1, 0, 2});  // q is the projection's k part and k its q part
  a.net.mark_output(a.att, "out");
  const std::string before = graph_text(a.net);
  EXPECT_FALSE(pack_attention_views(a.net));
  EXPECT_EQ(graph_text(a.net), before);
}

// ---- patchify_convolutions ----------------------------------------------------------------------

// x [1, 3, 4, 4] -> convolution "conv" (w [5, 3, kh, kw], b [5], `attrs`) -> y.
Network conv_net(int64_t kernel, Attributes attrs) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1, 3, 4, 4});
  TensorId w = float_constant(net, "w", {5, 3, kernel, kernel}, random_floats(15 * kernel * kernel, 5));
  TensorId b = float_constant(net, "b", {5}, {1, 2, 3, 4, 5});
  net.mark_output(net.add_layer("convolution", {x, w, b}, std::move(attrs), "conv").outputs[0], "y");
  return net;
}

TEST(PatchifyConvolutions, StrideEqualToKernelBecomesPatchGemm) {
  Network net = conv_net(2, Attributes().set("strides", std::vector<int64_t>{2, 2}));
  const std::vector<float> w = float_values(net.tensor(net.find_tensor("w")));
  EXPECT_TRUE(patchify_convolutions(net));
  EXPECT_EQ(layer_names(net), (std::vector<std::string>{"conv/patches", "conv/patch_order", "conv/rows",
                                                        "conv/gemm", "conv/nhwc", "conv/to_nchw"}));
  EXPECT_EQ(ops_of(net), (std::vector<std::string>{"reshape", "transpose", "reshape", "fully_connected",
                                                   "reshape", "transpose"}));
  const auto& l = net.layers();
  EXPECT_EQ(input_names(net, l[0]), std::vector<std::string>{"x"});
  EXPECT_EQ(l[0].attrs.get_ints("shape", "patches"), (std::vector<int64_t>{-1, 3, 2, 2, 2, 2}));
  EXPECT_EQ(l[1].attrs.get_ints("perm", "patch_order"), (std::vector<int64_t>{0, 2, 4, 1, 3, 5}));
  EXPECT_EQ(l[2].attrs.get_ints("shape", "rows"), (std::vector<int64_t>{-1, 12}));
  EXPECT_EQ(input_names(net, l[3]), (std::vector<std::string>{"conv/rows", "conv/weight_matrix", "b"}));
  const Tensor& wm = net.tensor(l[3].inputs[1]);
  EXPECT_EQ(wm.dims, (Dims{5, 12}));
  EXPECT_EQ(float_values(wm), w);  // [K, C * kh * kw]: w's own bytes
  EXPECT_EQ(l[3].attrs.get_string("fused", "gemm"), "conv");
  EXPECT_EQ(net.tensor(l[3].outputs[0]).dims, (Dims{4, 5}));  // N * Ho * Wo rows
  EXPECT_EQ(l[4].attrs.get_ints("shape", "nhwc"), (std::vector<int64_t>{-1, 2, 2, 5}));
  EXPECT_EQ(l[5].attrs.get_ints("perm", "to_nchw"), (std::vector<int64_t>{0, 3, 1, 2}));
  EXPECT_EQ(net.tensor(l[5].outputs[0]).name, "y");
  EXPECT_EQ(net.tensor(l[5].outputs[0]).dims, (Dims{1, 5, 2, 2}));
  net.revalidate();
}

TEST(PatchifyConvolutions, OverlappingOrPointwiseConvolutionStays) {
  struct Case {
    const char* what;
    int64_t kernel;
    Attributes attrs;
  };
  for (const Case& c :
       {Case{"3x3, stride 1, padding 1", 3, Attributes().set("pads", std::vector<int64_t>{1, 1})},
        Case{"2x2, stride 2, padding 1", 2,
             Attributes().set("strides", std::vector<int64_t>{2, 2}).set("pads", std::vector<int64_t>{1, 1})},
        Case{"1x1 on a 4x4 image", 1, Attributes()}}) {
    SCOPED_TRACE(c.what);
    Network net = conv_net(c.kernel, c.attrs);
    const std::string before = graph_text(net);
    EXPECT_FALSE(patchify_convolutions(net));
    EXPECT_EQ(graph_text(net), before);
  }
}

// ---- collapse_transposes ------------------------------------------------------------------------

TEST(CollapseTransposes, CancellingTransposePairBecomesAReshape) {
  Network net;
  TensorId y = net.add_input("y", DataType::kFloat32, {2, 3, 4});
  const Attributes swap = Attributes().set("perm", std::vector<int64_t>{0, 2, 1});
  TensorId t1 = net.add_layer("transpose", {y}, swap, "t1").outputs[0];
  TensorId t2 = net.add_layer("transpose", {t1}, swap, "t2").outputs[0];
  net.mark_output(net.add_activation(t2, "relu", 0, "act").outputs[0], "out");
  EXPECT_TRUE(collapse_transposes(net));
  EXPECT_EQ(ops_of(net), (std::vector<std::string>{"transpose", "reshape", "activation"}));
  const Layer& t2l = layer_named(net, "t2");
  EXPECT_EQ(input_names(net, t2l), std::vector<std::string>{"y"});
  EXPECT_EQ(t2l.attrs.get_ints("shape", "t2"), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_FALSE(t2l.attrs.has("perm"));
  EXPECT_EQ(layer_named(net, "t1").op, "transpose");  // a real permutation; now dead
  net.revalidate();
}

TEST(CollapseTransposes, RealOrDynamicTransposesStay) {
  for (bool dynamic : {false, true}) {
    SCOPED_TRACE(dynamic ? "cancelling pair on a dynamic batch" : "one real transpose");
    Network net;
    TensorId y = net.add_input("y", DataType::kFloat32, {dynamic ? -1 : 2, 3, 4});
    const Attributes swap = Attributes().set("perm", std::vector<int64_t>{0, 2, 1});
    TensorId t = net.add_layer("transpose", {y}, swap, "t1").outputs[0];
    if (dynamic) t = net.add_layer("transpose", {t}, swap, "t2").outputs[0];
    net.mark_output(net.add_activation(t, "relu", 0, "act").outputs[0], "out");
    const std::string before = graph_text(net);
    EXPECT_FALSE(collapse_transposes(net));
    EXPECT_EQ(graph_text(net), before);
  }
}

// ---- fuse_pointwise -----------------------------------------------------------------------------

TEST(FusePointwise, ChainBecomesOneProgram) {
  // y = relu(x * 2 + z); s = x * 2 + z is also a network output.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 3});
  TensorId z = net.add_input("z", DataType::kFloat32, {2, 3});
  TensorId m = net.add_elementwise(x, scalar(net, "two", 2.0), "mul", "scale").outputs[0];
  TensorId s = net.add_elementwise(m, z, "add", "shift").outputs[0];
  net.mark_output(s, "s");
  net.mark_output(net.add_activation(s, "relu", 0, "act").outputs[0], "y");
  EXPECT_TRUE(fuse_pointwise(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"fused_pointwise"});
  const Layer& f = net.layers()[0];
  EXPECT_EQ(f.name, "fused:act");
  EXPECT_EQ(input_names(net, f), (std::vector<std::string>{"x", "z"}));  // the constant is inlined
  EXPECT_EQ(f.attrs.get_string("program", f.name),
            "input 0 float32; const float32 2; elementwise mul %0 %1; input 1 float32; "
            "elementwise add %2 %3; activation relu 0 1 20 %4");
  EXPECT_EQ(f.attrs.get_ints("outputs", f.name), (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(f.attrs.get_string("fused", f.name), "scale,shift,act");
  ASSERT_EQ(f.outputs.size(), 2u);
  EXPECT_EQ(net.tensor(f.outputs[0]).name, "s");
  EXPECT_EQ(net.tensor(f.outputs[1]).name, "y");
  EXPECT_EQ(net.find_tensor("two"), -1);
  EXPECT_EQ(net.find_tensor("scale"), -1);
}

TEST(FusePointwise, SeparatedOrDifferentlyShapedLayersStay) {
  for (int variant = 0; variant < 3; ++variant) {
    Network net;
    TensorId x = net.add_input("x", DataType::kFloat32, {2, 3});
    if (variant == 0) {  // one pointwise layer
      net.mark_output(net.add_activation(x, "relu", 0, "act").outputs[0], "y");
    } else if (variant == 1) {  // a reshape between two pointwise layers
      TensorId a = net.add_activation(x, "relu", 0, "a1").outputs[0];
      TensorId r = net.add_layer("reshape", {a}, Attributes().set("shape", Dims{6}), "flat").outputs[0];
      net.mark_output(net.add_activation(r, "tanh", 0, "a2").outputs[0], "y");
    } else {  // a [3] result broadcast into a [2, 3] one: different iteration spaces
      TensorId v = net.add_input("v", DataType::kFloat32, {3});
      TensorId a = net.add_activation(v, "relu", 0, "a1").outputs[0];
      net.mark_output(net.add_elementwise(x, a, "add", "sum").outputs[0], "y");
    }
    const std::string before = graph_text(net);
    EXPECT_FALSE(fuse_pointwise(net)) << "variant " << variant;
    EXPECT_EQ(graph_text(net), before) << "variant " << variant;
  }
}

// ---- hoist_activations ---------------------------------------------------------------------------

// What patchify_convolutions leaves of a squeeze-and-excitation 1x1 convolution: x [1, 4] ->
// fully_connected "fc" [1, 3] -> reshape [1, 1, 1, 3] -> transpose (0 3 1 2) -> relu "act" -> y.
// `fc_read_twice`: the GEMM's output is also a network output.
Network se_gemm_net(bool fc_read_twice = false) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1, 4});
  TensorId w = float_constant(net, "w", {3, 4}, random_floats(12, 1));
  TensorId b = float_constant(net, "b", {3}, {0.5f, -0.5f, 1.f});
  TensorId fc = net.add_layer("fully_connected", {x, w, b}, Attributes(), "fc").outputs[0];
  TensorId r = net.add_layer("reshape", {fc}, Attributes().set("shape", Dims{1, 1, 1, 3}), "nhwc").outputs[0];
  TensorId t =
      net.add_layer("transpose", {r}, Attributes().set("perm", std::vector<int64_t>{0, 3, 1, 2}), "nchw")
          .outputs[0];
  net.mark_output(net.add_activation(t, "hardsigmoid", 0, "act").outputs[0], "y");
  if (fc_read_twice) net.mark_output(fc, "fc_out");
  return net;
}

TEST(HoistActivations, ActivationMovesUpToTheGemmAndThenJoinsItsEpilogue) {
  Network net = se_gemm_net();
  EXPECT_TRUE(hoist_activations(net));
  ASSERT_EQ(layer_names(net), (std::vector<std::string>{"fc", "act", "nhwc", "nchw"}));
  const Layer& act = layer_named(net, "act");
  EXPECT_EQ(input_names(net, act), std::vector<std::string>{"fc"});
  EXPECT_EQ(net.tensor(act.outputs[0]).dims, (Dims{1, 3}));
  EXPECT_EQ(layer_named(net, "nhwc").inputs, act.outputs);
  EXPECT_EQ(net.tensor(layer_named(net, "nchw").outputs[0]).name, "y");
  EXPECT_EQ(net.tensor(layer_named(net, "nchw").outputs[0]).dims, (Dims{1, 3, 1, 1}));
  net.revalidate();
  EXPECT_TRUE(fuse_gemm_epilogue(net));
  EXPECT_EQ(ops_of(net), (std::vector<std::string>{"fully_connected", "reshape", "transpose"}));
  EXPECT_EQ(net.layers()[0].attrs.get_string("activation", "fc"), "hardsigmoid");
}

TEST(HoistActivations, GemmOutputReadElsewhereStays) {
  Network net = se_gemm_net(/*fc_read_twice=*/true);
  const std::string before = graph_text(net);
  EXPECT_FALSE(hoist_activations(net));
  EXPECT_EQ(graph_text(net), before);
}

TEST(HoistActivations, SameValuesOnTheReferenceBackend) {
  const std::vector<float> x = random_floats(4, 7);
  std::vector<float> want, got;
  for (bool hoist : {false, true}) {
    Network net = se_gemm_net();
    if (hoist) ASSERT_TRUE(hoist_activations(net));
    (hoist ? got : want) = run_reference(net, {{"x", {{1, 4}, x}}}, false)["y"];
  }
  EXPECT_EQ(got, want);
}

}  // namespace
}  // namespace test
}  // namespace kiln
