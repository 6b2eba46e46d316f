// fold_quantize_copies: a transformer's normalized value is a residual and, quantized, the next
// GEMM's input. The normalization writes both (its quantized copy), exactly what the quantize
// layer computed, in int8 and e4m3, through views; on CUDA the kernels against the reference.
#include "core/passes/passes.h"
#include "ir/ops/normalization.h"
#include "test_util.h"

namespace kiln {
namespace {

using test::random_floats;

struct NormCase {
  std::string op = "layer_norm";
  std::string format = "int8";  // or e4m3
  int64_t batch = 3, seq = 5, hidden = 64;
  std::string dtype = "float16";
};

// x [B, S, H] float32 -> cast -> norm -> y; y -> reshape [B*S, H] -> quantize -> dequantize ->
// reshape [B, S, H] -> add y -> cast float32 -> out: the output shows the copy and y exactly.
Network norm_then_quantize(const NormCase& c) {
  Network net;
  const TensorId x = net.add_input("x", DataType::kFloat32, {c.batch, c.seq, c.hidden});
  const TensorId h = net.add_layer("cast", {x}, Attributes().set("to", c.dtype), "cast_in").outputs[0];
  std::vector<float> w = random_floats(static_cast<size_t>(c.hidden), 3, 0.5f, 1.5f);
  std::vector<float> b = random_floats(static_cast<size_t>(c.hidden), 4);
  std::vector<TensorId> in = {h,
                              net.add_constant("w", DataType::kFloat32, {c.hidden}, w.data(), w.size() * 4)};
  if (c.op == "layer_norm")
    in.push_back(net.add_constant("b", DataType::kFloat32, {c.hidden}, b.data(), b.size() * 4));
  const TensorId y = net.add_layer(c.op, in, Attributes(), "norm").outputs[0];
  TensorId t =
      net.add_layer("reshape", {y}, Attributes().set("shape", std::vector<int64_t>{-1, c.hidden}), "rows")
          .outputs[0];
  const float scale = c.format == "e4m3" ? 3.0f / 448 : 3.0f / 127;
  const TensorId s = net.add_constant("s", DataType::kFloat32, {1}, &scale, sizeof scale);
  Attributes q;
  if (c.format == "e4m3") {
    q.set("format", std::string("e4m3"));
  } else {
    q.set("quant_min", int64_t{-127});
    q.set("quant_max", int64_t{127});
  }
  t = net.add_layer("quantize", {t, s}, q, "q").outputs[0];
  Attributes dq = q;
  dq.set("dtype", c.dtype);
  t = net.add_layer("dequantize", {t, s}, dq, "dq").outputs[0];
  t = net.add_layer("reshape", {t}, Attributes().set("shape", std::vector<int64_t>{c.batch, c.seq, c.hidden}),
                    "unrows")
          .outputs[0];
  t = net.add_layer("elementwise", {t, y}, Attributes().set("op", std::string("add")), "residual").outputs[0];
  net.mark_output(
      net.add_layer("cast", {t}, Attributes().set("to", std::string("float32")), "cast_out").outputs[0],
      "out");
  return net;
}

test::Feed feed(const NormCase& c) {
  return {{"x",
           {{c.batch, c.seq, c.hidden},
            random_floats(static_cast<size_t>(c.batch * c.seq * c.hidden), 7, -4.f, 4.f)}}};
}

TEST(FoldQuantizeCopies, NormalizationWritesItsValueAndTheQuantizedCopy) {
  for (const std::string format : {"int8", "e4m3"}) {
    for (const std::string op : {"layer_norm", "rms_norm"}) {
      SCOPED_TRACE(op + " " + format);
      NormCase c;
      c.op = op;
      c.format = format;
      Network net = norm_then_quantize(c);
      const std::vector<float> before = test::run_reference(net, feed(c), false).at("out");
      ASSERT_TRUE(fold_quantize_copies(net));
      EXPECT_EQ(test::ops_of(net), (std::vector<std::string>{"cast", op, "reshape", "dequantize", "reshape",
                                                             "elementwise", "cast"}));
      const Layer& norm = test::layer_named(net, "norm");
      const QuantizedCopy copy = quantized_copy(norm);
      ASSERT_TRUE(copy.on);
      EXPECT_EQ(copy.e4m3, format == "e4m3");
      ASSERT_EQ(norm.outputs.size(), 2u);
      EXPECT_EQ(net.tensor(norm.outputs[1]).dtype,
                format == "e4m3" ? DataType::kFloat8E4M3 : DataType::kInt8);
      EXPECT_EQ(test::layer_named(net, "rows").inputs[0], norm.outputs[1]);   // the view reads the copy
      EXPECT_EQ(test::run_reference(net, feed(c), false).at("out"), before);  // exactly the quantize's
      EXPECT_FALSE(fold_quantize_copies(net));
    }
  }
}

TEST(FoldQuantizeCopies, OnlyPerTensorQuantizesOfANormalization) {
  NormCase c;
  Network net = norm_then_quantize(c);
  for (auto& l : net.mutable_layers()) {
    if (l.name == "norm") l.op = "softmax";  // any other producer keeps its quantize
  }
  net.mutable_layers()[1].inputs.resize(1);
  net.revalidate();
  EXPECT_FALSE(fold_quantize_copies(net));
}

TEST(FoldQuantizeCopies, CopyAttributesAreValidated) {
  Network net = norm_then_quantize(NormCase{});
  ASSERT_TRUE(fold_quantize_copies(net));
  for (auto& l : net.mutable_layers()) {
    if (l.name == "norm") l.attrs.set("quantized_copy", std::string("int4"));
  }
  try {
    net.revalidate();
    FAIL() << "quantized_copy int4 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("quantized_copy must be int8 or e4m3"), std::string::npos)
        << e.what();
  }
}

// CUDA: the built network (the builder folds the quantize when INT8 / FP8 is on) against the
// reference, for both kernels (the register path: rows of 64 float16; the general one: 40 floats).
TEST(FoldQuantizeCopies, CudaKernelsMatchTheReference) {
  KILN_REQUIRE_GPU();
  for (const std::string format : {"int8", "e4m3"}) {
    for (const std::string dtype : {"float16", "float32"}) {
      SCOPED_TRACE(format + " " + dtype);
      NormCase c;
      c.format = format;
      c.dtype = dtype;
      c.hidden = dtype == "float16" ? 64 : 40;
      const Network net = norm_then_quantize(c);
      const std::vector<float> want = test::run_reference(net, feed(c), false).at("out");
      // fp16 too where the network is float16, so the build keeps its float16 layers.
      std::vector<std::string> precisions = {format == "e4m3" ? "fp8" : "int8"};
      if (dtype == "float16") precisions.push_back("fp16");
      Plan plan = test::build_cuda(net, precisions);
      bool folded = false;
      for (const auto& l : plan.network.layers()) folded |= quantized_copy(l).on;
      ASSERT_TRUE(folded) << test::graph_text(plan.network);
      const std::vector<float> got = test::run_float(Engine::create(plan, Backend::kCuda), feed(c)).at("out");
      ASSERT_EQ(got.size(), want.size());
      // One quantization step where the GPU's float32 statistics round y across a step boundary.
      const float step = format == "e4m3" ? 0.2f : 3.0f / 127;
      for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], step + 1e-2f) << i;
    }
  }
}

}  // namespace
}  // namespace kiln
