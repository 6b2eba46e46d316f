// pad_group_widths: a grouped convolution's groups widened to a multiple of 32 channels, with the
// convolutions before and after it, computes the same outputs (bitwise on the reference backend,
// to FP16 rounding on the GPU), and its padded weights replay at refit.
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "core/passes/passes.h"
#include "core/refit.h"
#include "kernels/reference/host_access.h"
#include "test_util.h"

namespace kiln {
namespace {

struct ChainOptions {
  int64_t groups = 2, width = 60;  // 60 -> 64: 6.7% more channels
  bool a_read_twice = false;       // A's output is a network output as well
  bool b_residual = false;         // B adds a residual of its own
  int64_t c_groups = 1;
};

// x [2, 8, 5, 5] -> A: 1x1 conv to G * w channels, relu -> B: 3x3 stride-2 conv, G groups of w,
// relu -> C: 1x1 conv to 16 channels (with `c_groups` groups) -> y. Weights are refittable
// ("a.weight", ...), with values from `seed`.
Network chain_net(const ChainOptions& o, uint32_t seed) {
  Network net;
  const int64_t c = o.groups * o.width;
  auto weight = [&](const std::string& name, const Dims& dims) {
    const std::vector<float> v = test::random_floats(static_cast<size_t>(volume(dims)), seed++);
    const TensorId t = net.add_constant(name, DataType::kFloat32, dims, v.data(), v.size() * 4);
    net.mark_weight(t, name);
    return t;
  };
  const Attributes relu = Attributes().set("activation", std::string("relu"));
  const TensorId x = net.add_input("x", DataType::kFloat32, {2, 8, 5, 5});
  const TensorId a =
      net.add_layer("convolution", {x, weight("a.weight", {c, 8, 1, 1}), weight("a.bias", {c})}, relu, "a")
          .outputs[0];
  Attributes b_attrs = relu;
  b_attrs.set("groups", o.groups)
      .set("strides", std::vector<int64_t>{2, 2})
      .set("pads", std::vector<int64_t>{1, 1});
  std::vector<TensorId> b_in = {a, weight("b.weight", {c, o.width, 3, 3}), weight("b.bias", {c})};
  if (o.b_residual) {
    b_attrs.set("residual", int64_t{1});
    b_in.push_back(net.add_input("r", DataType::kFloat32, {2, c, 3, 3}));
  }
  const TensorId b = net.add_layer("convolution", b_in, b_attrs, "b").outputs[0];
  const TensorId y = net.add_layer("convolution", {b, weight("c.weight", {16, c / o.c_groups, 1, 1})},
                                   Attributes().set("groups", o.c_groups), "c")
                         .outputs[0];
  net.mark_output(y, "y");
  if (o.a_read_twice) net.mark_output(a, "a_out");
  return net;
}

test::Feed feed_of(const Network& net, uint32_t seed) {
  test::Feed feed;
  for (TensorId t : net.inputs()) {
    const Dims& d = net.tensor(t).dims;
    feed[net.tensor(t).name] = {d, test::random_floats(static_cast<size_t>(volume(d)), seed++)};
  }
  return feed;
}

TEST(PadGroupWidths, GroupsOf60BecomeGroupsOf64AndComputeTheSameBits) {
  const Network original = chain_net({}, 1);
  Network net = original;
  ASSERT_TRUE(pad_group_widths(net));
  EXPECT_EQ(net.tensor(test::layer_named(net, "a").outputs[0]).dims, (Dims{2, 128, 5, 5}));
  EXPECT_EQ(net.tensor(test::layer_named(net, "b").outputs[0]).dims, (Dims{2, 128, 3, 3}));
  EXPECT_EQ(net.tensor(test::layer_named(net, "b").inputs[1]).dims, (Dims{128, 64, 3, 3}));
  EXPECT_EQ(net.tensor(test::layer_named(net, "c").inputs[1]).dims, (Dims{16, 128, 1, 1}));

  // The padded weight holds each group's rows, then zeros; each row its 60 inputs, then zeros.
  const std::vector<float> w = test::float_values(original.tensor(original.find_tensor("b.weight")));
  const std::vector<float> wp = test::float_values(net.tensor(test::layer_named(net, "b").inputs[1]));
  for (int64_t o = 0; o < 128; ++o)
    for (int64_t i = 0; i < 64; ++i)
      for (int64_t k = 0; k < 9; ++k) {
        const int64_t g = o / 64, r = o % 64;
        const float want = r < 60 && i < 60 ? w[static_cast<size_t>(((g * 60 + r) * 60 + i) * 9 + k)] : 0.f;
        ASSERT_EQ(wp[static_cast<size_t>((o * 64 + i) * 9 + k)], want) << o << " " << i << " " << k;
      }
  const std::vector<float> bias = test::float_values(net.tensor(test::layer_named(net, "a").inputs[2]));
  EXPECT_EQ(bias[60], 0.f);
  EXPECT_EQ(bias[127], 0.f);

  const test::Feed feed = feed_of(original, 50);
  EXPECT_EQ(test::run_reference(net, feed, false).at("y"), test::run_reference(original, feed, false).at("y"));
}

TEST(PadGroupWidths, AlignedNarrowOrCostlyGroupsAndOtherChainsStay) {
  struct Case {
    const char* what;
    ChainOptions o;
  };
  ChainOptions aligned, narrow, costly, shared, residual, grouped_c;
  aligned.width = 64;
  narrow.width = 24;    // below 32 wide
  costly.width = 40;    // 40 -> 64 would add 60%
  shared.a_read_twice = true;
  residual.b_residual = true;
  grouped_c.c_groups = 2;
  for (const Case& c : {Case{"groups of 64", aligned}, Case{"groups of 24", narrow}, Case{"groups of 40", costly},
                        Case{"A's output also a network output", shared}, Case{"B with a residual", residual},
                        Case{"C grouped", grouped_c}}) {
    SCOPED_TRACE(c.what);
    Network net = chain_net(c.o, 1);
    const std::string before = test::graph_text(net);
    EXPECT_FALSE(pad_group_widths(net));
    EXPECT_EQ(test::graph_text(net), before);
  }
}

TEST(PadGroupWidths, PaddedWeightsReplayAtRefit) {
  Network built = chain_net({}, 1), fresh = chain_net({}, 100);
  ASSERT_TRUE(pad_group_widths(built));
  ASSERT_TRUE(pad_group_widths(fresh));
  const Network source = chain_net({}, 100);  // the new weights, unpadded
  std::map<std::string, ConstantValue> weights;
  for (const WeightSpec& spec : refittable_weights(built))
    weights[spec.name] = ConstantValue{spec.dtype, spec.dims, source.tensor(source.find_tensor(spec.name)).data};
  EXPECT_EQ(weights.size(), 5u);  // C has no bias
  int padded = 0;
  for (const auto& [id, bytes] : replay_weights(built, weights)) {
    const Tensor& t = built.tensor(id);
    const TensorId same = fresh.find_tensor(t.name);
    ASSERT_GE(same, 0) << t.name;
    EXPECT_TRUE(*bytes == *fresh.tensor(same).data) << t.name;
    padded += t.name.find("group_padded") != std::string::npos;
  }
  EXPECT_EQ(padded, 5);  // A's weight and bias, B's weight and bias, C's weight
}

TEST(PadGroupWidths, Fp16BuildOnTheGpuPadsAndAgreesWithTheReference) {
  KILN_REQUIRE_GPU();
  ChainOptions o;
  o.groups = 3;
  o.width = 120;  // regnet_x_8gf's groups
  const Network net = chain_net(o, 3);
  BuilderConfig config;
  config.target = BuildTarget::kCuda;
  config.precision.fp16 = true;
  const Plan plan = Builder().build(net, config);
  bool padded = false;
  for (const auto& t : plan.network.tensors()) padded |= t.name.find("group_padded") != std::string::npos;
  EXPECT_TRUE(padded) << "the FP16 CUDA build did not pad the groups";
  const test::Feed feed = feed_of(net, 9);
  const auto got = test::run_float(Engine::create(plan, Backend::kCuda), feed).at("y");
  const auto want = test::run_reference(net, feed, false).at("y");
  ASSERT_EQ(got.size(), want.size());
  double max_err = 0, max_ref = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    max_err = std::max(max_err, std::abs(static_cast<double>(got[i]) - want[i]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(want[i])));
  }
  EXPECT_LT(max_err, 2e-2 * max_ref) << "max error " << max_err << " of " << max_ref;
}

}  // namespace
}  // namespace kiln
