// arange / fill / cast with tracked shape values that are unknown at build time (a dynamic dim
// flowing through shape arithmetic). Python cannot make such values without a shape-of op, so
// the schemas are called directly: once as the builder does (value unknown -> dynamic dim) and
// once as the engine does at run time (value known -> concrete dim).
#include "ir/op_schema.h"
#include "test_util.h"

namespace kiln {
namespace {

Layer make_layer(const std::string& op, Attributes attrs) {
  Layer l;
  l.name = op + "_under_test";
  l.op = op;
  l.attrs = std::move(attrs);
  return l;
}

TEST(Arange, EndFromUnknownTrackedValueGivesDynamicLength) {
  Layer l = make_layer("arange", Attributes().set("start", int64_t{1}).set("step", int64_t{2}));
  TensorDesc end{DataType::kInt64, {}, make_values({kUnknownValue})};
  auto out = infer_layer(l, {end});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].dims, (Dims{kDynamic}));
  EXPECT_EQ(out[0].values, nullptr);

  end.values = make_values({8});  // run time: the dim is known; ceil((8 - 1) / 2) = 4
  out = infer_layer(l, {end});
  EXPECT_EQ(out[0].dims, (Dims{4}));
  ASSERT_NE(out[0].values, nullptr);
  EXPECT_EQ(*out[0].values, (std::vector<int64_t>{1, 3, 5, 7}));
}

TEST(Arange, FloatDtypeCarriesNoValues) {
  Layer l = make_layer("arange",
                       Attributes().set("end", 2.0).set("step", 0.5).set("dtype", std::string("float32")));
  auto out = infer_layer(l, {});
  EXPECT_EQ(out[0].dims, (Dims{4}));
  EXPECT_EQ(out[0].values, nullptr);  // fold_constants encodes values as integers
}

TEST(Fill, UnknownShapeEntriesBecomeDynamicDims) {
  Layer l = make_layer("fill", Attributes().set("value", 1.0));
  TensorDesc shape{DataType::kInt32, {3}, make_values({2, kUnknownValue, 5})};
  auto out = infer_layer(l, {shape});
  EXPECT_EQ(out[0].dims, (Dims{2, kDynamic, 5}));
  shape.values = make_values({2, 3, 5});
  EXPECT_EQ(infer_layer(l, {shape})[0].dims, (Dims{2, 3, 5}));
}

TEST(Fill, IntegerOutputCarriesValues) {
  Layer l = make_layer("fill", Attributes()
                                   .set("value", int64_t{7})
                                   .set("dtype", std::string("int64"))
                                   .set("shape", std::vector<int64_t>{2}));
  auto out = infer_layer(l, {});
  ASSERT_NE(out[0].values, nullptr);
  EXPECT_EQ(*out[0].values, (std::vector<int64_t>{7, 7}));
}

TEST(Cast, KeepsUnknownTrackedValuesUnknown) {
  Layer l = make_layer("cast", Attributes().set("to", std::string("int32")));
  TensorDesc x{DataType::kInt64, {2}, make_values({kUnknownValue, (int64_t{1} << 32) + 3})};
  auto out = infer_layer(l, {x});
  ASSERT_NE(out[0].values, nullptr);
  EXPECT_EQ(*out[0].values, (std::vector<int64_t>{kUnknownValue, 3}));
  Layer f = make_layer("cast", Attributes().set("to", std::string("float32")));
  EXPECT_EQ(infer_layer(f, {x})[0].values, nullptr);  // floating tensors are never tracked
}

}  // namespace
}  // namespace kiln
