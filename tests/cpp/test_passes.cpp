// Builder passes: structure in, expected structure out, plus a no-change case for each.
#include "core/passes/passes.h"

#include "test_util.h"

namespace kiln {
namespace {

std::vector<std::string> ops_of(const Network& net) {
  std::vector<std::string> ops;
  for (const auto& l : net.layers()) ops.push_back(l.op);
  return ops;
}

TEST(FoldConstants, FoldsAllConstantLayer) {
  Network net;
  std::vector<float> a = {1, -2, 3}, b = {4, 5, -6};
  TensorId x = net.add_input("x", DataType::kFloat32, {3});
  TensorId ca = net.add_constant("a", DataType::kFloat32, {3}, a.data(), 12);
  TensorId cb = net.add_constant("b", DataType::kFloat32, {3}, b.data(), 12);
  TensorId s = net.add_elementwise(ca, cb, "mul", "prod").outputs[0];  // const * const
  TensorId y = net.add_elementwise(x, s, "add", "sum").outputs[0];
  net.mark_output(y, "y");
  EXPECT_TRUE(fold_constants(net));
  EXPECT_EQ(ops_of(net), std::vector<std::string>{"elementwise"});
  const Tensor& folded = net.tensor(net.layers()[0].inputs[1]);
  ASSERT_EQ(folded.kind, TensorKind::kConstant);
  const float* v = reinterpret_cast<const float*>(folded.data->data());
  EXPECT_EQ(v[0], 4.f);
  EXPECT_EQ(v[1], -10.f);
  EXPECT_EQ(v[2], -18.f);
  net.revalidate();
}

TEST(FoldConstants, NothingToFold) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {3});
  net.mark_output(net.add_activation(x, "relu").outputs[0], "y");
  EXPECT_FALSE(fold_constants(net));
  EXPECT_EQ(net.layers().size(), 1u);
}

TEST(RemoveNoops, BypassesIdentity) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 3});
  TensorId i = net.add_identity(x, "id").outputs[0];
  TensorId y = net.add_activation(i, "relu", 0, "act").outputs[0];
  net.mark_output(y, "y");
  EXPECT_TRUE(remove_noops(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"activation"});
  EXPECT_EQ(net.tensor(net.layers()[0].inputs[0]).name, "x");
  net.revalidate();
}

TEST(RemoveNoops, KeepsIdentityThatIsAnOutput) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 3});
  net.mark_output(net.add_identity(x, "id").outputs[0], "y");
  EXPECT_FALSE(remove_noops(net));
  EXPECT_EQ(net.layers().size(), 1u);
}

TEST(EliminateDeadLayers, RemovesUnusedBranch) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {4});
  net.add_activation(x, "tanh", 0, "dead");
  TensorId y = net.add_activation(x, "relu", 0, "live").outputs[0];
  net.mark_output(y, "y");
  EXPECT_TRUE(eliminate_dead_layers(net));
  ASSERT_EQ(net.layers().size(), 1u);
  EXPECT_EQ(net.layers()[0].name, "live");
  EXPECT_EQ(net.find_tensor("dead"), -1);
  net.revalidate();
}

TEST(EliminateDeadLayers, AllLive) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {4});
  net.mark_output(net.add_activation(x, "relu").outputs[0], "y");
  EXPECT_FALSE(eliminate_dead_layers(net));
}

TEST(PlanMemory, ReusesMemoryOfDeadTensorsAndNeverOverlapsLiveOnes) {
  // x -> a1 -> a2 -> a3 -> a4 -> y: each activation lives from its producer to its consumer,
  // so a1 and a3 can share bytes but a1 and a2 cannot.
  Network net;
  TensorId t = net.add_input("x", DataType::kFloat32, {-1, 100});
  for (int i = 0; i < 4; ++i) t = net.add_activation(t, "relu", 0, "a" + std::to_string(i + 1)).outputs[0];
  net.mark_output(net.add_activation(t, "relu").outputs[0], "y");
  std::vector<OptimizationProfile> profiles = {{{{"x", {{1, 100}, {2, 100}, {8, 100}}}}}};
  MemoryPlan mem = plan_memory(net, profiles);
  EXPECT_NO_THROW(validate_memory_plan(net, profiles, mem));
  int64_t per_tensor = 8 * 100 * 4;  // max batch 8 -> 3200 bytes, already 256-aligned? 3200 = 12.5*256
  int64_t aligned = (per_tensor + 255) / 256 * 256;
  EXPECT_EQ(mem.arena_bytes, 2 * aligned);  // two buffers ping-pong
  EXPECT_EQ(mem.offsets[net.find_tensor("x")], -1);
  EXPECT_EQ(mem.offsets[net.find_tensor("y")], -1);
  EXPECT_NE(mem.offsets[net.find_tensor("a1")], mem.offsets[net.find_tensor("a2")]);
  EXPECT_EQ(mem.offsets[net.find_tensor("a1")], mem.offsets[net.find_tensor("a3")]);
}

TEST(PlanMemory, CorruptPlanIsRejected) {
  Network net;
  TensorId t = net.add_input("x", DataType::kFloat32, {16});
  t = net.add_activation(t, "relu", 0, "a1").outputs[0];
  t = net.add_activation(t, "relu", 0, "a2").outputs[0];
  net.mark_output(net.add_activation(t, "relu").outputs[0], "y");
  MemoryPlan mem = plan_memory(net, {});
  mem.offsets[net.find_tensor("a2")] = mem.offsets[net.find_tensor("a1")];  // alias two live tensors
  EXPECT_THROW(validate_memory_plan(net, {}, mem), Error);
}

}  // namespace
}  // namespace kiln
