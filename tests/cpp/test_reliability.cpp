// Regressions from the reliability review (issue 14): sizes computed from shapes must not wrap.
// Each case used to be accepted with a wrapped byte count and then read or wrote out of bounds.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "core/builder.h"
#include "ir/error.h"
#include "ir/network.h"

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

}  // namespace
}  // namespace kiln
