// Regressions from the reliability review (issue 14). Sizes computed from shapes must not wrap:
// each case used to be accepted with a wrapped byte count and then read or wrote out of bounds.
// Layer attributes are checked against the op's schema: misspelled or mistyped ones used to be
// ignored. Names must be UTF-8: a plan with other bytes in a name loaded, and Python then raised
// UnicodeDecodeError on reading it.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "core/builder.h"
#include "core/engine.h"
#include "core/passes/passes.h"
#include "core/plan.h"
#include "ir/error.h"
#include "ir/network.h"
#include "ir/op_schema.h"
#include "ir/utf8.h"

namespace kiln {
namespace {

BuilderConfig reference_config() {
  BuilderConfig config;
  config.target = BuildTarget::kReference;
  return config;
}

TEST(SizeArithmetic, TensorBytesRefusesWhatWouldWrap) {
  EXPECT_EQ(tensor_bytes({2, 3}, 4), 24);
  EXPECT_EQ(tensor_bytes({0, int64_t{1} << 40}, 8), 0);
  EXPECT_EQ(tensor_bytes({int64_t{1} << 60}, 4), int64_t{1} << 62);
  EXPECT_THROW(tensor_bytes({int64_t{1} << 62}, 4), Error);        // 2^64 bytes
  EXPECT_THROW(tensor_bytes({int64_t{1} << 61, 4}, 8), Error);     // volume overflow first
  EXPECT_THROW(tensor_bytes({(int64_t{1} << 61) + 4}, 8), Error);  // wrapped to 32 bytes before
}

TEST(SizeArithmetic, ConstantWhoseByteCountWrapsIsRefused) {
  // A gather over this int64 constant read past its 32 bytes (2^61 + 4 elements x 8 bytes wrapped
  // to 32).
  Network net;
  std::vector<int64_t> four(4, 7);
  EXPECT_THROW(net.add_constant("c", DataType::kInt64, {(int64_t{1} << 61) + 4}, four.data(), 32), Error);
  // 2^62 float32 elements: the plan parser's check accepted it with no data (4 x 2^62 wraps to 0).
  EXPECT_THROW(net.add_constant("big", DataType::kFloat32, {int64_t{1} << 62}, nullptr, 0), Error);
}

TEST(SizeArithmetic, RestoredConstantWhoseByteCountWrapsIsRefused) {
  // What a crafted plan restores: revalidate must refuse it, not trust the wrapped size.
  Network net;
  Tensor t;
  t.name = "c";
  t.dtype = DataType::kFloat32;
  t.dims = {int64_t{1} << 62};
  t.kind = TensorKind::kConstant;
  t.data = std::make_shared<const std::vector<uint8_t>>();
  net.restore_tensor(t);
  EXPECT_THROW(net.revalidate(), Error);
}

TEST(SizeArithmetic, HugeFillFailsTheBuildInsteadOfCrashing) {
  // add_fill([2^31, 2^31]) segfaulted the builder (constant folding sized its buffer with the
  // wrapped byte count).
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2});
  Attributes attrs;
  attrs.set("shape", std::vector<int64_t>{int64_t{1} << 31, int64_t{1} << 31});
  TensorId big = net.add_layer("fill", {}, attrs, "big").outputs[0];
  Attributes axes;
  axes.set("op", std::string("sum")).set("axes", std::vector<int64_t>{0, 1});
  TensorId s = net.add_layer("reduce", {big}, axes, "s").outputs[0];
  net.mark_output(net.add_elementwise(x, s, "add").outputs[0], "y");
  EXPECT_THROW(Builder().build(net, reference_config()), Error);
}

TEST(SizeArithmetic, HugeExpandFailsTheBuildInsteadOfOverrunningTheArena) {
  // expand(x, [2^62]) -> reduce got a 256-byte arena slot and wrote past it.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1});
  Attributes shape;
  shape.set("shape", std::vector<int64_t>{int64_t{1} << 62});
  TensorId e = net.add_layer("expand", {x}, shape, "e").outputs[0];
  Attributes axes;
  axes.set("op", std::string("sum")).set("axes", std::vector<int64_t>{0});
  net.mark_output(net.add_layer("reduce", {e}, axes, "r").outputs[0], "y");
  EXPECT_THROW(Builder().build(net, reference_config()), Error);
}

TEST(SizeArithmetic, ConcatWhoseAxisSumWrapsIsRefused) {
  // Found by fuzz_network: two dims of 2^62 along the concat axis summed past
  // int64 in shape inference (signed overflow, then a negative dim).
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1});
  Attributes a, b, cat;
  a.set("shape", std::vector<int64_t>{int64_t{1} << 62});
  b.set("shape", std::vector<int64_t>{int64_t{1} << 62});
  TensorId ea = net.add_layer("expand", {x}, a, "ea").outputs[0];
  TensorId eb = net.add_layer("expand", {x}, b, "eb").outputs[0];
  cat.set("axis", int64_t{0});
  try {
    net.add_layer("concat", {ea, eb}, cat, "cat");
    ADD_FAILURE() << "concat of two 2^62 dims was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("would exceed 2^62 elements"), std::string::npos) << e.what();
  }
}

TEST(SizeArithmetic, ViewsOfEmptyTensorsAreNotTraced) {
  // Found by fuzz_network: collapse_transposes traced a transpose of a reshaped empty tensor and
  // divided by its zero-size dim (UBSan: division by zero in strided_view.cpp).
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 0, 3});
  Attributes shape, perm;
  shape.set("shape", std::vector<int64_t>{0, 6});
  perm.set("perm", std::vector<int64_t>{1, 0});
  TensorId r = net.add_layer("reshape", {x}, shape, "r").outputs[0];
  net.mark_output(net.add_layer("transpose", {r}, perm, "t").outputs[0], "y");
  auto engine = Engine::create(Builder().build(net, reference_config()), Backend::kReference);
  auto ctx = engine->create_execution_context();
  float dummy = 0;
  for (const char* name : {"x", "y"}) ctx->set_tensor_address(name, &dummy);
  ctx->enqueue(nullptr);
  EXPECT_EQ(ctx->tensor_shape("y"), (Dims{6, 0}));
}

TEST(Hangs, LayerWithOnlyEmptyOutputsRunsNoKernel) {
  // Found by fuzz_network: a matmul of [5, 2^56, 0, 0] tensors looped over its 5 * 2^56 batch
  // while writing nothing (a hang of hours), in an engine and in constant folding.
  const Dims huge{5, int64_t{1} << 56, 0, 0};
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, huge);
  net.mark_output(net.add_matmul(x, x).outputs[0], "y");
  Attributes shape;
  shape.set("shape", std::vector<int64_t>(huge.begin(), huge.end()));
  TensorId f = net.add_layer("fill", {}, shape, "f").outputs[0];
  net.mark_output(net.add_matmul(f, f).outputs[0], "folded");
  auto engine = Engine::create(Builder().build(net, reference_config()), Backend::kReference);
  auto ctx = engine->create_execution_context();
  float dummy = 0;
  for (const char* name : {"x", "y", "folded"}) ctx->set_tensor_address(name, &dummy);
  ctx->enqueue(nullptr);
  EXPECT_EQ(ctx->tensor_shape("y"), huge);
}

TEST(Hangs, ShapeValuesOfEmptyTensorsWithHugeDims) {
  // Found by fuzz_network: the host-known values of a concat (and a gather) of int64 constants of
  // shape [2^56, 0] were built by looping over the 2^56 leading rows.
  Network net;
  const Dims huge{int64_t{1} << 56, 0};
  TensorId c = net.add_constant("c", DataType::kInt64, huge, nullptr, 0);
  Attributes cat;
  cat.set("axis", int64_t{1});
  EXPECT_EQ(net.tensor(net.add_layer("concat", {c, c}, cat, "cat").outputs[0]).dims, huge);
  TensorId none = net.add_constant("i", DataType::kInt64, {0}, nullptr, 0);
  EXPECT_EQ(net.tensor(net.add_layer("gather", {c, none}, cat, "g").outputs[0]).dims, huge);
}

TEST(Hangs, LargeContractionsAreNotFolded) {
  // Folding runs the reference kernel on the CPU at build time: a 1024^3 constant matmul would
  // take seconds there (a 64 MiB int8 one hours), so it stays a layer for the engine to run.
  for (int64_t n : {64, 1024}) {
    Network net;
    std::vector<float> v(static_cast<size_t>(n * n), 1.f);
    TensorId a = net.add_constant("a", DataType::kFloat32, {n, n}, v.data(), v.size() * 4);
    TensorId b = net.add_constant("b", DataType::kFloat32, {n, n}, v.data(), v.size() * 4);
    net.mark_output(net.add_matmul(a, b).outputs[0], "y");
    EXPECT_EQ(fold_constants(net), n == 64) << n;
  }
}

// The message of the kiln::Error `f` throws; fails the test when it throws none.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no kiln::Error thrown";
  return "";
}

#define EXPECT_CONTAINS(text, part) EXPECT_NE((text).find(part), std::string::npos) << (text)

// x [2, 3] @ w [3, 3]: the inputs of a matmul whose attributes the tests vary.
struct MatmulNet {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 3});
  TensorId w = net.add_input("w", DataType::kFloat32, {3, 3});
  std::string add(Attributes attrs) {
    return error_of([&] { net.add_layer("matmul", {x, w}, std::move(attrs), "mm"); });
  }
};

TEST(AttributeValidation, MisspelledNameIsRefusedWithTheClosestOne) {
  // transpose_B=1 used to be ignored: the matmul ran untransposed.
  MatmulNet m;
  const std::string msg = m.add(Attributes().set("transpose_B", int64_t{1}));
  EXPECT_CONTAINS(msg, "layer 'mm' (matmul)");
  EXPECT_CONTAINS(msg, "unknown attribute 'transpose_B'");
  EXPECT_CONTAINS(msg, "did you mean 'transpose_b'?");
  EXPECT_CONTAINS(msg, "matmul takes transpose_a, transpose_b, allow_tf32, tactic");
  EXPECT_CONTAINS(m.add(Attributes().set("transpose", int64_t{1})), "did you mean 'transpose_a'?");
  const std::string unrelated = m.add(Attributes().set("colour", std::string("red")));
  EXPECT_CONTAINS(unrelated, "unknown attribute 'colour'; matmul takes");
  EXPECT_EQ(unrelated.find("did you mean"), std::string::npos) << unrelated;
  EXPECT_TRUE(m.net.layers().empty()) << "a refused layer is not added";
}

TEST(AttributeValidation, OpWithoutAttributesSaysSo) {
  Network net;
  TensorId w = net.add_input("w", DataType::kFloat32, {5, 4});
  TensorId i = net.add_input("i", DataType::kInt64, {3});
  EXPECT_CONTAINS(error_of([&] {
                    net.add_layer("embedding", {w, i}, Attributes().set("axis", int64_t{0}));
                  }),
                  "embedding takes no attributes");
}

TEST(AttributeValidation, WrongTypeIsRefused) {
  // transpose_b=1.0 used to be ignored (get_int's fallback read it as absent).
  MatmulNet m;
  const std::string msg = m.add(Attributes().set("transpose_b", 1.0));
  EXPECT_CONTAINS(msg, "layer 'mm' (matmul): attribute 'transpose_b' must be an int");
  EXPECT_CONTAINS(msg, "got a float (1)");
  EXPECT_CONTAINS(m.add(Attributes().set("transpose_b", std::string("yes"))), "got a string (\"yes\")");
  EXPECT_CONTAINS(m.add(Attributes().set("transpose_b", std::vector<int64_t>{1})), "got an int list of 1");
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 3});
  EXPECT_CONTAINS(error_of([&] { net.add_layer("activation", {x}, Attributes().set("type", int64_t{1})); }),
                  "attribute 'type' must be a string");
  EXPECT_CONTAINS(error_of([&] {
                    net.add_layer("reshape", {x}, Attributes().set("shape", std::vector<double>{3, 2}));
                  }),
                  "attribute 'shape' must be an int list");
}

TEST(AttributeValidation, AnIntIsWidenedWhereAFloatIsDeclared) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 3});
  Layer& l = net.add_layer("activation", {x},
                           Attributes().set("type", std::string("leaky_relu")).set("alpha", int64_t{2}));
  EXPECT_EQ(l.attrs.get_float("alpha", 0.0), 2.0);
  TensorId img = net.add_input("img", DataType::kFloat32, {1, 1, 2, 2});
  Attributes resize;
  resize.set("mode", std::string("nearest")).set("scales", std::vector<int64_t>{2, 3});
  EXPECT_EQ(net.tensor(net.add_layer("resize", {img}, resize).outputs[0]).dims, (Dims{1, 1, 4, 6}));
}

// A network whose build sets the builder's own attributes on the reference backend: "fused",
// "activation" and "residual" (epilogue fusion, batch-norm folding), "alias" (views), "program"
// and "outputs" (pointwise fusion).
Network builder_attribute_network() {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {4, 8});
  std::vector<float> wv(8 * 8, 0.25f), bv(8, 0.5f);
  TensorId w = net.add_constant("w", DataType::kFloat32, {8, 8}, wv.data(), wv.size() * 4);
  TensorId b = net.add_constant("b", DataType::kFloat32, {8}, bv.data(), bv.size() * 4);
  TensorId fc = net.add_layer("fully_connected", {x, w, b}, {}, "fc").outputs[0];
  TensorId act = net.add_activation(fc, "relu", std::nullopt, "act").outputs[0];
  TensorId res = net.add_elementwise(act, x, "add", "res").outputs[0];
  TensorId r =
      net.add_layer("reshape", {res}, Attributes().set("shape", std::vector<int64_t>{2, 16}), "r").outputs[0];
  TensorId e = net.add_layer("unary", {r}, Attributes().set("op", std::string("exp")), "e").outputs[0];
  TensorId s = net.add_activation(e, "sigmoid", std::nullopt, "s").outputs[0];
  net.mark_output(net.add_elementwise(s, e, "mul", "y").outputs[0], "y");

  TensorId img = net.add_input("img", DataType::kFloat32, {1, 3, 6, 6});
  std::vector<float> kw(4 * 3 * 3 * 3, 0.1f), ones(4, 1.0f), zeros(4, 0.0f);
  TensorId k = net.add_constant("k", DataType::kFloat32, {4, 3, 3, 3}, kw.data(), kw.size() * 4);
  TensorId conv = net.add_layer("convolution", {img, k}, {}, "conv").outputs[0];
  std::vector<TensorId> bn_in = {conv};
  for (const char* p : {"scale", "bias", "mean", "var"}) {
    const std::vector<float>& v = std::string(p) == "scale" || std::string(p) == "var" ? ones : zeros;
    bn_in.push_back(net.add_constant(std::string("bn_") + p, DataType::kFloat32, {4}, v.data(), 16));
  }
  TensorId bn = net.add_layer("batch_norm", bn_in, {}, "bn").outputs[0];
  net.mark_output(net.add_activation(bn, "relu", std::nullopt, "conv_act").outputs[0], "z");
  return net;
}

TEST(AttributeValidation, PlansTheBuilderWritesLoad) {
  Plan plan = Builder().build(builder_attribute_network(), reference_config());
  std::set<std::string> set_by_builder;
  for (const Layer& l : plan.network.layers()) {
    for (const auto& kv : l.attrs.values()) set_by_builder.insert(kv.first);
  }
  for (const char* a : {"fused", "activation", "residual", "alias", "program", "outputs"}) {
    EXPECT_TRUE(set_by_builder.count(a)) << a << " was not set: the network no longer exercises it";
  }
  Plan back = Plan::deserialize(plan.serialize());
  EXPECT_EQ(back.network.layers().size(), plan.network.layers().size());
}

// A plan whose `mutate`d network is serialized as it is (a corrupt or crafted file): loading it
// must refuse it with the message that names `part`.
void expect_plan_refused(const std::function<void(Network&)>& mutate, const std::string& part) {
  MatmulNet m;
  m.net.mark_output(m.net.add_matmul(m.x, m.w, false, true, "mm").outputs[0], "y");
  Plan plan = Builder().build(m.net, reference_config());
  ASSERT_NO_THROW(Plan::deserialize(plan.serialize()));
  mutate(plan.network);
  const std::string msg = error_of([&] { Plan::deserialize(plan.serialize()); });
  EXPECT_CONTAINS(msg, part);
  EXPECT_TRUE(is_valid_utf8(msg)) << msg;
}

Layer& layer_named(Network& net, const std::string& name) {
  for (Layer& l : net.mutable_layers()) {
    if (l.name == name) return l;
  }
  throw Error("no layer " + name);
}

TEST(AttributeValidation, PlanWithAWrongAttributeIsRefused) {
  expect_plan_refused([](Network& n) { layer_named(n, "mm").attrs.set("transpose_b", 1.0); },
                      "layer 'mm' (matmul): attribute 'transpose_b' must be an int");
  expect_plan_refused([](Network& n) { layer_named(n, "mm").attrs.set("transpose_bb", int64_t{1}); },
                      "unknown attribute 'transpose_bb' (did you mean 'transpose_b'?)");
}

TEST(Utf8, WellFormedOnly) {
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("layer/0:1"));
  EXPECT_TRUE(is_valid_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));  // e-acute, euro, emoji
  EXPECT_FALSE(is_valid_utf8("a\xff"));
  EXPECT_FALSE(is_valid_utf8("\xc3"));              // truncated
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // a UTF-16 surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_EQ(printable("a\xff\xc3\xa9"), "a\\xff\xc3\xa9");
}

TEST(Utf8, NetworkRefusesNamesThatAreNotUtf8) {
  const std::string bad = "x\xff";
  Network net;
  EXPECT_CONTAINS(error_of([&] { net.add_input(bad, DataType::kFloat32, {2}); }),
                  "tensor name \"x\\xff\" is not valid UTF-8");
  float v[2] = {1, 2};
  EXPECT_CONTAINS(error_of([&] { net.add_constant(bad, DataType::kFloat32, {2}, v, 8); }), "tensor name");
  TensorId x = net.add_input("x", DataType::kFloat32, {2});
  EXPECT_CONTAINS(error_of([&] { net.add_identity(x, bad); }), "layer name");
  EXPECT_CONTAINS(error_of([&] { net.add_layer("identity\xfe", {x}, {}); }), "op name");
  EXPECT_CONTAINS(error_of([&] { net.add_activation(x, "relu\xff"); }), "the value of attribute 'type'");
  EXPECT_CONTAINS(error_of([&] { net.add_layer("identity", {x}, Attributes().set("\xff", int64_t{1})); }),
                  "attribute name");
  TensorId y = net.add_identity(x, "y").outputs[0];
  EXPECT_CONTAINS(error_of([&] { net.mark_output(y, bad); }), "output name");
  EXPECT_EQ(net.tensors().size(), 2u);
}

TEST(Utf8, PlanWithANameThatIsNotUtf8IsRefused) {
  expect_plan_refused([](Network& n) { n.tensor(n.find_tensor("x")).name = "x\xff"; },
                      "tensor name \"x\\xff\" is not valid UTF-8");
  expect_plan_refused([](Network& n) { layer_named(n, "mm").name = "m\xc3"; },
                      "layer name \"m\\xc3\" is not valid UTF-8");
}

}  // namespace
}  // namespace kiln
