// gather's tracked shape values (TensorDesc::values), which Python does not expose: picking one
// entry of host-known shape values gives a host-known scalar that constant folding turns into a
// constant.
#include "core/passes/passes.h"
#include "test_util.h"

namespace kiln {
namespace {

Attributes axis_attr(int64_t axis) {
  Attributes a;
  a.set("axis", axis);
  return a;
}

TEST(GatherValues, ConstantShapeGivesTrackedScalar) {
  Network net;
  std::vector<int64_t> shape = {5, 7, 9};
  int64_t one = 1;
  TensorId s = net.add_constant("shape", DataType::kInt64, {3}, shape.data(), sizeof(int64_t) * 3);
  TensorId i = net.add_constant("i", DataType::kInt64, {}, &one, sizeof(int64_t));
  TensorId d = net.add_layer("gather", {s, i}, axis_attr(0), "dim1").outputs[0];
  TensorDesc out = net.desc(d);
  EXPECT_EQ(out.dtype, DataType::kInt64);
  EXPECT_EQ(out.dims, Dims{});
  ASSERT_TRUE(out.values);
  EXPECT_EQ(*out.values, std::vector<int64_t>{7});
}

TEST(GatherValues, PartlyKnownValuesAndNegativeIndices) {
  // A shape-of result of a tensor [-1, 3, 4]: the batch entry is unknown until run time.
  Network net;
  TensorId s = net.add_input("shape", DataType::kInt64, {3});
  net.tensor(s).values = make_values({kUnknownValue, 3, 4});
  std::vector<int32_t> idx = {-1, 1};
  TensorId i = net.add_constant("i", DataType::kInt32, {2}, idx.data(), sizeof(int32_t) * 2);
  TensorId tail = net.add_layer("gather", {s, i}, axis_attr(-1), "tail").outputs[0];
  ASSERT_TRUE(net.desc(tail).values);
  EXPECT_EQ(*net.desc(tail).values, (std::vector<int64_t>{4, 3}));
  EXPECT_TRUE(fully_known(net.desc(tail).values));

  int64_t zero = 0;
  TensorId z = net.add_constant("z", DataType::kInt64, {}, &zero, sizeof(int64_t));
  TensorId batch = net.add_layer("gather", {s, z}, axis_attr(0), "batch").outputs[0];
  ASSERT_TRUE(net.desc(batch).values);
  EXPECT_EQ(*net.desc(batch).values, std::vector<int64_t>{kUnknownValue});
  EXPECT_FALSE(fully_known(net.desc(batch).values));
}

TEST(GatherValues, UntrackedWhenIndicesAreNotKnown) {
  Network net;
  std::vector<int64_t> shape = {5, 7, 9};
  TensorId s = net.add_constant("shape", DataType::kInt64, {3}, shape.data(), sizeof(int64_t) * 3);
  TensorId i = net.add_input("i", DataType::kInt64, {1});
  TensorId d = net.add_layer("gather", {s, i}, axis_attr(0)).outputs[0];
  EXPECT_FALSE(net.desc(d).values);
}

TEST(GatherValues, FoldsToConstant) {
  Network net;
  std::vector<int64_t> shape = {5, 7, 9};
  int64_t two = 2;
  TensorId s = net.add_constant("shape", DataType::kInt64, {3}, shape.data(), sizeof(int64_t) * 3);
  TensorId i = net.add_constant("i", DataType::kInt64, {}, &two, sizeof(int64_t));
  TensorId d = net.add_layer("gather", {s, i}, axis_attr(0), "dim2").outputs[0];
  net.mark_output(d, "y");
  EXPECT_TRUE(fold_constants(net));
  EXPECT_TRUE(net.layers().empty());
  const Tensor& y = net.tensor(net.find_tensor("y"));
  ASSERT_EQ(y.kind, TensorKind::kConstant);
  EXPECT_EQ(*reinterpret_cast<const int64_t*>(y.data->data()), 9);
}

TEST(GatherValues, KnownOutOfRangeIndexIsRefused) {
  Network net;
  std::vector<int64_t> shape = {5, 7, 9};
  int64_t three = 3;
  TensorId s = net.add_constant("shape", DataType::kInt64, {3}, shape.data(), sizeof(int64_t) * 3);
  TensorId i = net.add_constant("i", DataType::kInt64, {}, &three, sizeof(int64_t));
  try {
    net.add_layer("gather", {s, i}, axis_attr(0), "bad");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 'bad' (gather): index 3 is out of range"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace kiln
