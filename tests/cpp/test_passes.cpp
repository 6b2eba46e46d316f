// Builder passes: structure in, expected structure out, plus a no-change case for each.
#include "core/passes/passes.h"
#include "core/passes/strided_view.h"
#include "kernels/reference/host_access.h"

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

TEST(FoldConstants, LeavesOutputsOverTheLimitToRunTime) {
  Network net;
  std::vector<float> a(64, 1.f), b(64, 2.f);
  TensorId ca = net.add_constant("a", DataType::kFloat32, {64}, a.data(), 256);
  TensorId cb = net.add_constant("b", DataType::kFloat32, {64}, b.data(), 256);
  net.mark_output(net.add_elementwise(ca, cb, "add", "sum").outputs[0], "y");  // 256 bytes out
  EXPECT_FALSE(fold_constants(net, 255));
  EXPECT_EQ(ops_of(net), std::vector<std::string>{"elementwise"});
  EXPECT_TRUE(fold_constants(net, 256));
  EXPECT_TRUE(net.layers().empty());
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

// A decoder's past key/values: each layer's key (here relu(x)) read by attention (here tanh) and
// returned through a slice that keeps everything. The relu writes the output binding itself, the
// tanh reads it there, and the copy goes; a network input copied to an output keeps its copy.
TEST(RemoveNoops, CopyIntoAnOutputBecomesItsProducersOwnWrite) {
  auto make = [] {
    Network net;
    TensorId x = net.add_input("x", DataType::kFloat32, {2, 3});
    TensorId k = net.add_activation(x, "relu", 0, "key").outputs[0];
    net.mark_output(net.add_activation(k, "tanh", 0, "attention").outputs[0], "y");
    Attributes all;
    all.set("axes", std::vector<int64_t>{1}).set("starts", std::vector<int64_t>{0});
    all.set("ends", std::vector<int64_t>{3});
    net.mark_output(net.add_layer("slice", {k}, all, "present").outputs[0], "present");
    net.mark_output(net.add_layer("slice", {x}, all, "echo").outputs[0], "echo");
    return net;
  };
  Network net = make();
  EXPECT_TRUE(remove_noops(net));
  ASSERT_EQ(ops_of(net), (std::vector<std::string>{"activation", "activation", "slice"}));
  EXPECT_EQ(net.tensor(net.layers()[0].outputs[0]).name, "present");  // relu writes the output
  EXPECT_EQ(net.tensor(net.layers()[1].inputs[0]).name, "present");   // tanh reads it there
  EXPECT_EQ(net.layers()[2].name, "echo");
  net.revalidate();
  const test::Feed feed = {{"x", {{2, 3}, test::random_floats(6, 9)}}};
  const auto want = test::run_reference(make(), feed, false), got = test::run_reference(make(), feed, true);
  for (const char* name : {"y", "present", "echo"}) EXPECT_EQ(want.at(name), got.at(name)) << name;
}

TEST(RemoveNoops, BypassesLayersThatCopyTheirInput) {
  // Swin's window padding at 224 x 224: a pad of zeros, then a slice keeping everything; a cast to
  // the same dtype, an identity transpose, a reshape and an expand to the same dims.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1, 4, 4, 3});
  TensorId t =
      net.add_layer("pad", {x}, Attributes().set("pads", std::vector<int64_t>(8, 0)), "pad").outputs[0];
  t = net.add_layer("slice", {t},
                    Attributes()
                        .set("axes", std::vector<int64_t>{1})
                        .set("starts", std::vector<int64_t>{0})
                        .set("ends", std::vector<int64_t>{INT64_MAX})
                        .set("steps", std::vector<int64_t>{1}),
                    "slice")
          .outputs[0];
  t = net.add_layer("cast", {t}, Attributes().set("to", std::string("float32")), "cast").outputs[0];
  t = net.add_layer("transpose", {t}, Attributes().set("perm", std::vector<int64_t>{0, 1, 2, 3}), "perm")
          .outputs[0];
  t = net.add_layer("reshape", {t}, Attributes().set("shape", Dims{1, 4, 4, 3}), "same").outputs[0];
  net.mark_output(net.add_activation(t, "relu").outputs[0], "y");
  EXPECT_TRUE(remove_noops(net));
  EXPECT_EQ(ops_of(net), std::vector<std::string>{"activation"});
  EXPECT_EQ(net.layers()[0].inputs[0], x);
  net.revalidate();
}

TEST(RemoveNoops, KeepsLayersThatMoveOrDropElements) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {4, 4});
  auto keep = [&](const std::string& op, Attributes a) {
    net.mark_output(
        net.add_activation(net.add_layer(op, {x}, std::move(a), op).outputs[0], "relu").outputs[0],
        op + "_y");
  };
  keep("pad", Attributes().set("pads", std::vector<int64_t>{0, -1, 0, 1}));  // same dims, shifted
  keep("transpose", Attributes().set("perm", std::vector<int64_t>{1, 0}));   // square: same dims
  keep("slice", Attributes()
                    .set("axes", std::vector<int64_t>{0})
                    .set("starts", std::vector<int64_t>{0})
                    .set("ends", std::vector<int64_t>{2}));
  EXPECT_FALSE(remove_noops(net));
  EXPECT_EQ(net.layers().size(), 6u);
}

TEST(RemoveNoops, ExpandThatPointwiseReadersBroadcastGoes) {
  // F.normalize: x / norm.expand_as(x). The division broadcasts the norm itself; an expand that a
  // reader needs for its output shape (b + expand(a) with b smaller) stays.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 3, 4});
  TensorId n = net.add_input("n", DataType::kFloat32, {2, 3, 1});
  TensorId row = net.add_input("row", DataType::kFloat32, {1, 1, 4});
  TensorId e = net.add_layer("expand", {n}, Attributes().set("shape", Dims{2, 3, 4}), "e").outputs[0];
  net.mark_output(net.add_elementwise(x, e, "div", "normalized").outputs[0], "y");
  TensorId e2 = net.add_layer("expand", {n}, Attributes().set("shape", Dims{2, 3, 4}), "e2").outputs[0];
  TensorId kept = net.add_layer("expand", {row}, Attributes().set("shape", Dims{2, 3, 4}), "kept").outputs[0];
  net.mark_output(net.add_elementwise(e2, net.add_activation(x, "relu").outputs[0], "mul", "m").outputs[0],
                  "z");
  net.mark_output(net.add_elementwise(kept, row, "add", "a").outputs[0], "w");
  ASSERT_TRUE(remove_noops(net));
  int expands = 0;
  for (const Layer& l : net.layers()) expands += l.op == "expand";
  EXPECT_EQ(expands, 1);  // `kept`: add(row, row) would be [1, 1, 4]
  EXPECT_EQ(net.layers()[0].op, "elementwise");
  EXPECT_EQ(net.layers()[0].inputs[1], n);
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

// x -> relu a1 -> reshape v1 -> reshape v2 -> relu a2 -> relu a3 -> reshape (output y).
Network view_chain_net() {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {-1, 64});
  TensorId a1 = net.add_activation(x, "relu", 0, "a1").outputs[0];
  TensorId v1 =
      net.add_layer("reshape", {a1}, Attributes().set("shape", std::vector<int64_t>{-1, 8, 8}), "v1")
          .outputs[0];
  TensorId v2 = net.add_layer("reshape", {v1}, Attributes().set("shape", std::vector<int64_t>{-1, 64}), "v2")
                    .outputs[0];
  TensorId a2 = net.add_activation(v2, "relu", 0, "a2").outputs[0];
  TensorId a3 = net.add_activation(a2, "relu", 0, "a3").outputs[0];
  TensorId y = net.add_layer("reshape", {a3}, Attributes().set("shape", std::vector<int64_t>{-1, 8, 8}), "v3")
                   .outputs[0];
  net.mark_output(y, "y");
  return net;
}

TEST(AliasViews, ViewsTakeNoMemoryAndKeepTheirSourceLive) {
  Network net = view_chain_net();
  ASSERT_TRUE(alias_views(net));
  std::vector<std::string> aliased;
  for (const auto& l : net.layers()) {
    if (is_alias_layer(l)) aliased.push_back(l.name);
  }
  EXPECT_EQ(aliased, (std::vector<std::string>{"v1", "v2"}));  // v3 writes the output: stays a copy
  std::vector<TensorId> root = alias_roots(net);
  EXPECT_EQ(root[net.find_tensor("v2")], net.find_tensor("a1"));
  std::vector<OptimizationProfile> profiles = {{{{"x", {{1, 64}, {2, 64}, {4, 64}}}}}};
  MemoryPlan mem = plan_memory(net, profiles);
  EXPECT_NO_THROW(validate_memory_plan(net, profiles, mem));
  EXPECT_EQ(mem.offsets[net.find_tensor("v1")], -1);
  EXPECT_EQ(mem.offsets[net.find_tensor("v2")], -1);
  // a2 is computed from a1's bytes (through the views): they must not share memory.
  EXPECT_NE(mem.offsets[net.find_tensor("a1")], mem.offsets[net.find_tensor("a2")]);
  EXPECT_FALSE(alias_views(net));  // nothing left to mark
}

TEST(AliasViews, AliasOnANonViewLayerIsACorruptPlan) {
  for (const char* layer : {"a2", "v3"}) {  // not a view op; a view that writes the network output
    Network net = view_chain_net();
    std::vector<OptimizationProfile> profiles = {{{{"x", {{1, 64}, {1, 64}, {2, 64}}}}}};
    MemoryPlan mem = plan_memory(net, profiles);
    EXPECT_NO_THROW(validate_memory_plan(net, profiles, mem));
    for (auto& l : net.mutable_layers()) {
      if (l.name == layer) l.attrs.set("alias", int64_t{1});
    }
    try {
      validate_memory_plan(net, profiles, mem);
      ADD_FAILURE() << "alias on " << layer << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("alias = 1"), std::string::npos) << e.what();
    }
  }
}

// ---- ViewTracer (strided views through view chains) -------------------------------------------

// The element offset of index `idx` in view `v`.
int64_t element_offset(const StridedView& v, const Dims& dims, const std::vector<int64_t>& idx) {
  int64_t off = v.offset;
  for (size_t d = 0; d < dims.size(); ++d) {
    int64_t i = idx[d];
    for (size_t k = v.dims[d].size(); k-- > 0;) {
      off += (i % v.dims[d][k].size) * v.dims[d][k].stride;
      i /= v.dims[d][k].size;
    }
  }
  return off;
}

TEST(ViewTracer, MultiheadAttentionChainIsStridedIntoTheProjection) {
  // y [S=5, B=2, 3E] (E = H * D = 2 * 4) -> [S, B, 3, E] -> unsqueeze -> transpose(0, -2) ->
  // squeeze -> select(0, 1) (k) -> [S, B * H, D] -> transpose(0, 1) -> [B, H, S, D]: element
  // (b, h, s, d) is y[s, b, E + h * D + d]. The [S, B * H, D] step is no strided view of its input
  // by itself (B and H have different strides); the atoms keep it exact.
  const int64_t S = 5, B = 2, H = 2, D = 4, E = H * D;
  Network net;
  TensorId y = net.add_input("y", DataType::kFloat32, {S, B, 3 * E});
  auto layer = [&](const std::string& op, std::vector<TensorId> in, Attributes a) {
    return net.add_layer(op, in, std::move(a), op + std::to_string(net.layers().size())).outputs[0];
  };
  TensorId t = layer("reshape", {y}, Attributes().set("shape", Dims{S, B, 3, E}));
  t = layer("unsqueeze", {t}, Attributes().set("axes", std::vector<int64_t>{0}));
  t = layer("transpose", {t}, Attributes().set("perm", std::vector<int64_t>{3, 1, 2, 0, 4}));
  t = layer("squeeze", {t}, Attributes().set("axes", std::vector<int64_t>{3}));
  int64_t one = 1;
  TensorId index = net.add_constant("one", DataType::kInt64, {}, &one, sizeof(one));
  t = layer("gather", {t, index}, Attributes().set("axis", int64_t{0}));
  t = layer("reshape", {t}, Attributes().set("shape", Dims{S, B * H, D}));
  t = layer("transpose", {t}, Attributes().set("perm", std::vector<int64_t>{1, 0, 2}));
  t = layer("reshape", {t}, Attributes().set("shape", Dims{B, H, S, D}));

  StridedView v;
  ASSERT_TRUE(ViewTracer(net).trace(t, &v));
  EXPECT_EQ(v.root, y);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t s = 0; s < S; ++s) {
        for (int64_t d = 0; d < D; ++d) {
          EXPECT_EQ(element_offset(v, {B, H, S, D}, {b, h, s, d}), (s * B + b) * 3 * E + E + h * D + d);
        }
      }
    }
  }
  int64_t stride = 0;
  ASSERT_TRUE(dim_stride(v.dims[0], &stride));
  EXPECT_EQ(stride, 3 * E);  // b: one token
  EXPECT_FALSE(is_row_major(v, S * B * 3 * E));
}

TEST(ViewTracer, CancellingTransposesAreRowMajor) {
  // [N, Ho, Wo, K] -> NCHW -> [N, K, Ho * Wo] -> transpose(1, 2): y's own order again.
  Network net;
  TensorId y = net.add_input("y", DataType::kFloat32, {2, 3, 4, 5});
  TensorId t =
      net.add_layer("transpose", {y}, Attributes().set("perm", std::vector<int64_t>{0, 3, 1, 2}), "nchw")
          .outputs[0];
  t = net.add_layer("reshape", {t}, Attributes().set("shape", Dims{2, 5, 12}), "flat").outputs[0];
  TensorId back =
      net.add_layer("transpose", {t}, Attributes().set("perm", std::vector<int64_t>{0, 2, 1}), "back")
          .outputs[0];
  StridedView v;
  ASSERT_TRUE(ViewTracer(net).trace(back, &v));
  EXPECT_TRUE(is_row_major(v, 2 * 3 * 4 * 5));
  ASSERT_TRUE(ViewTracer(net).trace(t, &v));
  EXPECT_FALSE(is_row_major(v, 2 * 3 * 4 * 5));
  ASSERT_TRUE(collapse_transposes(net));
  EXPECT_EQ(net.layers().back().op, "reshape");
  EXPECT_EQ(net.layers().back().inputs[0], y);
  EXPECT_EQ(net.layers()[0].op, "transpose");  // nchw itself is a real transpose
}

TEST(CollapseTransposes, ComposeMakesOneTransposeOfTwo) {
  // ConvNeXt's downsampling after assign_layouts: an NHWC LayerNorm output, the model's permute to
  // NCHW, the patch split [N, C, H/2, 2, W/2, 2] and the patch transpose: one transpose of the NHWC
  // tensor, and only with `compose` (the builder's run after layouts).
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1, 4, 6, 3});
  TensorId t =
      net.add_layer("transpose", {x}, Attributes().set("perm", std::vector<int64_t>{0, 3, 1, 2}), "nchw")
          .outputs[0];
  t = net.add_layer("reshape", {t}, Attributes().set("shape", Dims{1, 3, 2, 2, 3, 2}), "patches").outputs[0];
  t = net.add_layer("transpose", {t}, Attributes().set("perm", std::vector<int64_t>{0, 2, 4, 1, 3, 5}),
                    "order")
          .outputs[0];
  net.mark_output(net.add_activation(t, "relu").outputs[0], "y");
  EXPECT_FALSE(collapse_transposes(net));
  ASSERT_TRUE(collapse_transposes(net, true));
  int moving = 0;
  for (const Layer& l : net.layers()) moving += l.op == "transpose" && !moves_only_unit_dims(net, l);
  EXPECT_EQ(moving, 1);
  EXPECT_EQ(net.layers()[0].inputs[0], x);
  EXPECT_EQ(net.layers().back().op, "activation");
  net.revalidate();
}

TEST(CollapseTransposes, ComposeRemovesAPairThatCancels) {
  // The model's NHWC -> NCHW permute and the layout pass's NCHW -> NHWC transpose before a conv.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1, 4, 6, 3});
  TensorId t =
      net.add_layer("transpose", {x}, Attributes().set("perm", std::vector<int64_t>{0, 3, 1, 2}), "nchw")
          .outputs[0];
  t = net.add_layer("transpose", {t}, Attributes().set("perm", std::vector<int64_t>{0, 2, 3, 1}), "to_nhwc")
          .outputs[0];
  net.mark_output(net.add_activation(t, "relu").outputs[0], "y");
  ASSERT_TRUE(collapse_transposes(net, true));
  EXPECT_EQ(ops_of(net), (std::vector<std::string>{"reshape", "activation"}));
  EXPECT_EQ(net.layers()[0].inputs[0], x);
}

// ShuffleNet's unit end after assign_layouts: the NHWC concat x [1, 4, 4, 8], the layout pass's
// NCHW transpose, the channel shuffle (2 groups) and the NCHW split into halves, each half
// transposed back to NHWC for its reader. `same_perm` false: the second half is read NCHW.
Network shuffle_split_net(bool same_perm) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1, 4, 4, 8});
  auto transpose = [&](TensorId t, std::vector<int64_t> perm, const std::string& name) {
    return net.add_layer("transpose", {t}, Attributes().set("perm", perm), name).outputs[0];
  };
  TensorId t = transpose(x, {0, 3, 1, 2}, "nchw");
  t = net.add_layer("reshape", {t}, Attributes().set("shape", Dims{1, 2, 4, 4, 4}), "groups").outputs[0];
  t = transpose(t, {0, 2, 1, 3, 4}, "shuffle");
  t = net.add_layer("reshape", {t}, Attributes().set("shape", Dims{1, 8, 4, 4}), "merged").outputs[0];
  const Layer& split = net.add_layer(
      "split", {t}, Attributes().set("axis", int64_t{1}).set("sizes", std::vector<int64_t>{4, 4}), "halves");
  const std::vector<TensorId> halves = split.outputs;
  for (int k = 0; k < 2; ++k) {
    const std::vector<int64_t> perm =
        k == 1 && !same_perm ? std::vector<int64_t>{0, 1, 3, 2} : std::vector<int64_t>{0, 2, 3, 1};
    TensorId h = transpose(halves[static_cast<size_t>(k)], perm, "to_nhwc" + std::to_string(k));
    net.mark_output(net.add_activation(h, "relu", 0, "relu" + std::to_string(k)).outputs[0],
                    "y" + std::to_string(k));
  }
  return net;
}

TEST(CollapseTransposes, ComposeMovesTransposesAboveASplitAndMergesThemWithTheShuffle) {
  Network net = shuffle_split_net(/*same_perm=*/true);
  const std::vector<float> x = test::random_floats(128, 3);
  auto run = [&](const Network& n) { return test::run_reference(n, {{"x", {{1, 4, 4, 8}, x}}}, false); };
  const auto want = run(net);
  ASSERT_TRUE(collapse_transposes(net, true));
  int moving = 0, splits = 0;
  for (const Layer& l : net.layers()) {
    moving += l.op == "transpose" && !moves_only_unit_dims(net, l);
    splits += l.op == "split";
  }
  EXPECT_EQ(moving, 1);  // four transposes (layout, shuffle, two back to NHWC) became one
  EXPECT_EQ(splits, 1);
  net.revalidate();
  EXPECT_EQ(run(net), want);
}

TEST(CollapseTransposes, SplitReadThroughDifferentPermutationsStays) {
  Network net = shuffle_split_net(/*same_perm=*/false);
  ASSERT_TRUE(collapse_transposes(net, true));  // (the layout and shuffle transposes still compose)
  int splits_read_by_transposes = 0;
  const std::vector<int> producer = net.producers();
  for (const Layer& l : net.layers()) {
    if (l.op == "transpose" && producer[l.inputs[0]] >= 0 &&
        net.layers()[producer[l.inputs[0]]].op == "split")
      ++splits_read_by_transposes;
  }
  EXPECT_EQ(splits_read_by_transposes, 2);
}

TEST(ViewTracer, DynamicShapesAreNotTraced) {
  Network net;
  TensorId y = net.add_input("y", DataType::kFloat32, {-1, 8});
  TensorId t = net.add_layer("reshape", {y}, Attributes().set("shape", Dims{-1, 2, 4}), "r").outputs[0];
  StridedView v;
  EXPECT_FALSE(ViewTracer(net).trace(t, &v));
}

// ---- unflatten_batched_matmuls ---------------------------------------------------------------

// einsum("bwhid,bwhjd->bwhij", q, k) as torch decomposes it: both operands flattened to
// [b*w*h, i, d] / [b*w*h, d, j] (k through a transpose), a bmm, and the scores viewed back.
struct EinsumScores {
  Network net;
  TensorId q, k, scores;
};

EinsumScores einsum_scores(const Dims& k_dims) {
  EinsumScores e;
  e.q = e.net.add_input("q", DataType::kFloat32, {1, 4, 2, 5, 8});
  e.k = e.net.add_input("k", DataType::kFloat32, k_dims);
  auto layer = [&](const std::string& op, TensorId in, Attributes a, const std::string& name) {
    return e.net.add_layer(op, {in}, std::move(a), name).outputs[0];
  };
  TensorId qf = layer("unsqueeze", e.q, Attributes().set("axes", std::vector<int64_t>{5}), "q6");
  qf = layer("transpose", qf, Attributes().set("perm", std::vector<int64_t>{1, 2, 3, 5, 0, 4}), "qp");
  qf = layer("reshape", qf, Attributes().set("shape", Dims{8, 5, 8}), "qf");
  TensorId kf = layer("transpose", e.k, Attributes().set("perm", std::vector<int64_t>{0, 1, 2, 4, 3}), "kt");
  kf = layer("reshape", kf, Attributes().set("shape", Dims{8, 8, 5}), "kf");
  TensorId s = e.net.add_layer("matmul", {qf, kf}, Attributes(), "bmm").outputs[0];
  s = layer("reshape", s, Attributes().set("shape", Dims{4, 2, 5, 1, 1, 5}), "s6");
  s = layer("transpose", s, Attributes().set("perm", std::vector<int64_t>{4, 0, 1, 2, 5, 3}), "sp");
  e.scores = layer("reshape", s, Attributes().set("shape", Dims{1, 4, 2, 5, 5}), "s");
  e.net.mark_output(e.net.add_activation(e.scores, "relu").outputs[0], "y");
  return e;
}

TEST(UnflattenBatchedMatmuls, EinsumScoresBecomeOneMatmulOfTheTensors) {
  EinsumScores e = einsum_scores({1, 4, 2, 5, 8});
  ASSERT_TRUE(unflatten_batched_matmuls(e.net));
  EXPECT_EQ(ops_of(e.net), (std::vector<std::string>{"matmul", "activation"}));
  const Layer& mm = e.net.layers()[0];
  EXPECT_EQ(mm.inputs, (std::vector<TensorId>{e.q, e.k}));
  EXPECT_EQ(mm.attrs.get_int("transpose_b", int64_t{0}), 1);
  EXPECT_EQ(mm.attrs.get_int("transpose_a", int64_t{0}), 0);
  EXPECT_EQ(e.net.tensor(mm.outputs[0]).dims, (Dims{1, 4, 2, 5, 5}));
  EXPECT_EQ(e.net.layers()[1].inputs[0], mm.outputs[0]);  // the view chain back is gone
  e.net.revalidate();
}

TEST(UnflattenBatchedMatmuls, OperandsOfOtherBatchDimsStay) {
  // k's batch dims [2, 4, 1] flatten to the same 8 rows but are not q's: not one batched matmul.
  EinsumScores e = einsum_scores({2, 4, 1, 5, 8});
  const size_t before = e.net.layers().size();
  EXPECT_FALSE(unflatten_batched_matmuls(e.net));
  EXPECT_EQ(e.net.layers().size(), before);
}

TEST(UnflattenBatchedMatmuls, VectorAndMatrixOperandsStay) {
  // 1-D and 2-D operands have no batch dims (the network fuzzer's case: a 1-D @ 1-D dot product).
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {8});
  TensorId m = net.add_input("m", DataType::kFloat32, {3, 8});
  TensorId dot = net.add_layer("matmul", {x, x}, Attributes(), "dot").outputs[0];
  TensorId mv = net.add_layer("matmul", {m, x}, Attributes(), "mv").outputs[0];
  net.mark_output(dot, "dot");
  net.mark_output(mv, "mv");
  EXPECT_FALSE(unflatten_batched_matmuls(net));
  EXPECT_EQ(net.layers().size(), 2u);
}

TEST(UnflattenBatchedMatmuls, ViewChainToOtherDimsOrOrderStays) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {2, 3, 4});
  TensorId r = net.add_layer("reshape", {x}, Attributes().set("shape", Dims{6, 4}), "r").outputs[0];
  TensorId t = net.add_layer("transpose", {x}, Attributes().set("perm", std::vector<int64_t>{0, 2, 1}), "t")
                   .outputs[0];
  TensorId back = net.add_layer("reshape", {t}, Attributes().set("shape", Dims{2, 3, 4}), "back").outputs[0];
  net.mark_output(net.add_activation(r, "relu").outputs[0], "y1");
  net.mark_output(net.add_activation(back, "relu").outputs[0], "y2");
  EXPECT_FALSE(unflatten_batched_matmuls(net));
  EXPECT_EQ(net.layers().size(), 5u);
}

// ---- concat_views_to_transposes -------------------------------------------------------------

Attributes strided_slice(int64_t axis, int64_t start) {
  return Attributes()
      .set("axes", std::vector<int64_t>{axis})
      .set("starts", std::vector<int64_t>{start})
      .set("ends", std::vector<int64_t>{INT64_MAX})
      .set("steps", std::vector<int64_t>{2});
}

// Swin's patch merging: cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1).
Network patch_merging(int64_t second_row_start) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1, 4, 6, 3});
  std::vector<TensorId> parts;
  for (auto [h, w] : std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {1, 0}, {0, 1}, {1, 1}}) {
    const int64_t row = h == 1 ? second_row_start : 0;
    TensorId t = net.add_layer("slice", {x}, strided_slice(1, row), "").outputs[0];
    parts.push_back(net.add_layer("slice", {t}, strided_slice(2, w), "").outputs[0]);
  }
  TensorId y = net.add_layer("concat", parts, Attributes().set("axis", int64_t{-1}), "merge").outputs[0];
  net.mark_output(net.add_activation(y, "relu").outputs[0], "y");
  return net;
}

TEST(ConcatViewsToTransposes, PatchMergingIsOneTranspose) {
  Network net = patch_merging(1);
  ASSERT_TRUE(concat_views_to_transposes(net));
  EXPECT_EQ(ops_of(net), (std::vector<std::string>{"reshape", "transpose", "reshape", "activation"}));
  // x's factors by stride (the batch of 1 has none): rows, row parity, columns, column parity, C;
  // the output reads rows, columns, then column parity outside row parity, then C.
  EXPECT_EQ(net.tensor(net.layers()[0].outputs[0]).dims, (Dims{2, 2, 3, 2, 3}));
  EXPECT_EQ(net.layers()[1].attrs.get_ints("perm", "t"), (std::vector<int64_t>{0, 2, 3, 1, 4}));
  EXPECT_EQ(net.tensor(net.layers()[2].outputs[0]).dims, (Dims{1, 2, 3, 12}));
}

TEST(ConcatViewsToTransposes, SlicesThatDoNotTileTheTensorStay) {
  Network net = patch_merging(0);  // rows 0::2 twice: even rows read twice, odd rows never
  EXPECT_FALSE(concat_views_to_transposes(net));
  EXPECT_EQ(net.layers().back().op, "activation");
}

// ---- fold_channel_shuffles -------------------------------------------------------------------

// A ShuffleNet unit's end: cat(x_1..x_g) on the channels, then the channel shuffle (a view, a
// transpose, a view). NCHW: x_i [1, 4, 3, 3] on axis 1 -> [1, g, 4, 3, 3] -> `perm` -> [1, 4g, 3, 3].
// NHWC (as assign_layouts and compose_transposes leave it in float16 plans): x_i [1, 3, 3, 4] on
// axis 3 -> [3, 3, g, 4] (the batch of 1 dropped) -> `perm` -> [1, 3, 3, 4g].
struct ShuffleNet {
  Network net;
  test::Feed feed;
};

ShuffleNet channel_shuffle(bool nhwc, int64_t g, std::vector<int64_t> perm, bool concat_is_output = false) {
  ShuffleNet s;
  Network& net = s.net;
  const Dims x_dims = nhwc ? Dims{1, 3, 3, 4} : Dims{1, 4, 3, 3};
  std::vector<TensorId> xs;
  for (int64_t i = 0; i < g; ++i) {
    const std::string name = "x" + std::to_string(i);
    xs.push_back(net.add_input(name, DataType::kFloat32, x_dims));
    s.feed[name] = {x_dims, test::random_floats(36, static_cast<uint32_t>(7 + i))};
  }
  const TensorId c =
      net.add_layer("concat", xs, Attributes().set("axis", int64_t{nhwc ? 3 : 1}), "cat").outputs[0];
  const Dims groups = nhwc ? Dims{3, 3, g, 4} : Dims{1, g, 4, 3, 3};
  TensorId t = net.add_layer("reshape", {c}, Attributes().set("shape", groups), "groups").outputs[0];
  t = net.add_layer("transpose", {t}, Attributes().set("perm", perm), "shuffle").outputs[0];
  const Dims merged = nhwc ? Dims{1, 3, 3, 4 * g} : Dims{1, 4 * g, 3, 3};
  t = net.add_layer("reshape", {t}, Attributes().set("shape", merged), "merged").outputs[0];
  net.mark_output(net.add_activation(t, "relu", 0, "relu").outputs[0], "y");
  if (concat_is_output) net.mark_output(net.add_activation(c, "relu", 0, "relu_cat").outputs[0], "y_cat");
  return s;
}

TEST(FoldChannelShuffles, ConcatAndShuffleBecomeOneConcatInBothLayouts) {
  for (bool nhwc : {false, true}) {
    for (int64_t g : {2, 3}) {
      SCOPED_TRACE(std::string(nhwc ? "nhwc" : "nchw") + ", groups " + std::to_string(g));
      ShuffleNet s = channel_shuffle(
          nhwc, g, nhwc ? std::vector<int64_t>{0, 1, 3, 2} : std::vector<int64_t>{0, 2, 1, 3, 4});
      const auto want = test::run_reference(s.net, s.feed, false);
      ASSERT_TRUE(fold_channel_shuffles(s.net));
      int transposes = 0, concats = 0;
      for (const Layer& l : s.net.layers()) {
        transposes += l.op == "transpose";
        concats += l.op == "concat";
      }
      EXPECT_EQ(transposes, 0);
      EXPECT_EQ(concats, 1);
      EXPECT_EQ(test::run_reference(s.net, s.feed, false), want);  // bit for bit: data movement only
      EXPECT_EQ(test::run_reference(s.net, s.feed, true), want);   // and through every pass
    }
  }
}

TEST(FoldChannelShuffles, ATransposeThatDoesNotInterleaveStays) {
  // [1, 2, 4, 3, 3] with H and W swapped: the groups stay apart.
  ShuffleNet s = channel_shuffle(false, 2, {0, 1, 2, 4, 3});
  EXPECT_FALSE(fold_channel_shuffles(s.net));
  // NHWC groups moved outermost: [3, 3, 2, 4] -> [2, 3, 3, 4], not an interleave of the channels.
  ShuffleNet t = channel_shuffle(true, 2, {2, 0, 1, 3});
  EXPECT_FALSE(fold_channel_shuffles(t.net));
}

TEST(FoldChannelShuffles, AConcatReadElsewhereStays) {
  ShuffleNet s = channel_shuffle(false, 2, {0, 2, 1, 3, 4}, /*concat_is_output=*/true);
  EXPECT_FALSE(fold_channel_shuffles(s.net));  // the concat stays for its other reader: no copy saved
}

TEST(ViewTracer, StridedSliceStepsTheStride) {
  Network net = patch_merging(1);
  // The second part: x[:, 1::2, 0::2] -> offset one row (6 * 3), rows every 2, columns every 2.
  const TensorId part = net.layers()[3].outputs[0];
  StridedView v;
  ASSERT_TRUE(ViewTracer(net).trace(part, &v));
  EXPECT_EQ(v.offset, 18);
  ASSERT_EQ(v.dims.size(), 4u);
  EXPECT_EQ(v.dims[1], (std::vector<Atom>{{2, 36}}));
  EXPECT_EQ(v.dims[2], (std::vector<Atom>{{3, 6}}));
  EXPECT_EQ(v.dims[3], (std::vector<Atom>{{3, 1}}));
}

// ---- convolution path: fold_batch_norm, fuse_conv_epilogue, assign_layouts ----------------------

TensorId constant(Network& net, const std::string& name, const Dims& dims, std::vector<float> v) {
  return net.add_constant(name, DataType::kFloat32, dims, v.data(), v.size() * sizeof(float));
}

// x [1, 1, 2, 2] -> conv 1x1 with 2 output channels (weights 2, -1, bias 1, 0) -> batch_norm.
Network conv_bn_net(bool params_constant) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1, 1, 2, 2});
  TensorId w = constant(net, "w", {2, 1, 1, 1}, {2.f, -1.f});
  TensorId b = constant(net, "b", {2}, {1.f, 0.f});
  TensorId c = net.add_layer("convolution", {x, w, b}, Attributes(), "conv").outputs[0];
  TensorId scale = constant(net, "scale", {2}, {3.f, 1.f});
  TensorId shift = constant(net, "shift", {2}, {0.5f, -2.f});
  TensorId mean = params_constant ? constant(net, "mean", {2}, {1.f, 4.f})
                                  : net.add_input("mean", DataType::kFloat32, {2});
  TensorId var = constant(net, "var", {2}, {3.f, 0.f});
  Attributes eps;
  eps.set("eps", 1.0);
  net.mark_output(net.add_layer("batch_norm", {c, scale, shift, mean, var}, eps, "bn").outputs[0], "y");
  return net;
}

TEST(FoldBatchNorm, FoldsIntoConvolutionWeightsAndBias) {
  // s = scale / sqrt(var + eps) = (1.5, 1); w' = w * s = (3, -1); b' = (b - mean) * s + shift
  // = (0 * 1.5 + 0.5, -4 * 1 - 2) = (0.5, -6).
  Network net = conv_bn_net(true);
  EXPECT_TRUE(fold_batch_norm(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"convolution"});
  const Layer& conv = net.layers()[0];
  EXPECT_EQ(conv.attrs.get_string("fused", "conv"), "conv,bn");
  EXPECT_EQ(net.tensor(conv.outputs[0]).name, "y");
  const float* w = reinterpret_cast<const float*>(net.tensor(conv.inputs[1]).data->data());
  const float* b = reinterpret_cast<const float*>(net.tensor(conv.inputs[2]).data->data());
  EXPECT_FLOAT_EQ(w[0], 3.f);
  EXPECT_FLOAT_EQ(w[1], -1.f);
  EXPECT_FLOAT_EQ(b[0], 0.5f);
  EXPECT_FLOAT_EQ(b[1], -6.f);
  net.revalidate();
}

TEST(FoldBatchNorm, RuntimeStatisticsAreNotFolded) {
  Network net = conv_bn_net(false);
  EXPECT_FALSE(fold_batch_norm(net));
  EXPECT_EQ(ops_of(net), (std::vector<std::string>{"convolution", "batch_norm"}));
}

TEST(FuseConvEpilogue, FusesResidualAddThenActivation) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1, 2, 3, 3});
  TensorId r = net.add_input("r", DataType::kFloat32, {1, 2, 3, 3});
  TensorId w = constant(net, "w", {2, 2, 1, 1}, {1.f, 0.f, 0.f, 1.f});
  TensorId c = net.add_layer("convolution", {x, w}, Attributes(), "conv").outputs[0];
  TensorId s = net.add_elementwise(r, c, "add", "add").outputs[0];
  net.mark_output(net.add_activation(s, "relu", 0, "relu").outputs[0], "y");
  EXPECT_TRUE(fuse_conv_epilogue(net));
  ASSERT_EQ(ops_of(net), std::vector<std::string>{"convolution"});
  const Layer& conv = net.layers()[0];
  // x, w, a bias of zeros (cuDNN fuses the epilogue only with a bias), residual
  ASSERT_EQ(conv.inputs.size(), 4u);
  const Tensor& bias = net.tensor(conv.inputs[2]);
  ASSERT_EQ(bias.kind, TensorKind::kConstant);
  EXPECT_EQ(bias.dims, (Dims{2}));
  const float* b = reinterpret_cast<const float*>(bias.data->data());
  EXPECT_EQ(b[0], 0.f);
  EXPECT_EQ(b[1], 0.f);
  EXPECT_EQ(net.tensor(conv.inputs[3]).name, "r");
  EXPECT_EQ(conv.attrs.get_int("residual", int64_t{0}), 1);
  EXPECT_EQ(conv.attrs.get_string("activation", "conv"), "relu");
  EXPECT_EQ(conv.attrs.get_string("fused", "conv"), "conv,add,relu");
  net.revalidate();
}

TEST(FuseConvEpilogue, ActivationOfAnOutputStays) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {1, 2, 3, 3});
  TensorId w = constant(net, "w", {2, 2, 1, 1}, {1.f, 0.f, 0.f, 1.f});
  TensorId c = net.add_layer("convolution", {x, w}, Attributes(), "conv").outputs[0];
  net.mark_output(c, "c");
  net.mark_output(net.add_activation(c, "relu", 0, "relu").outputs[0], "y");
  EXPECT_FALSE(fuse_conv_epilogue(net));
  EXPECT_EQ(net.layers().size(), 2u);
}

TEST(AssignLayouts, HalfConvolutionRunsChannelsLast) {
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat16, {1, 3, 4, 5});
  std::vector<uint16_t> half_w(2 * 3 * 3 * 3, 0x3c00);  // 1.0 in float16
  TensorId w = net.add_constant("w", DataType::kFloat16, {2, 3, 3, 3}, half_w.data(), half_w.size() * 2);
  Attributes attrs;
  attrs.set("pads", std::vector<int64_t>{1, 1});
  TensorId c = net.add_layer("convolution", {x, w}, attrs, "conv").outputs[0];
  net.mark_output(net.add_activation(c, "relu", 0, "relu").outputs[0], "y");
  EXPECT_TRUE(assign_layouts(net));
  // 3 input channels are padded to 8 (pad layer; the weight gets zero channels).
  ASSERT_EQ(ops_of(net),
            (std::vector<std::string>{"transpose", "pad", "convolution", "activation", "transpose"}));
  EXPECT_EQ(net.tensor(net.layers()[1].outputs[0]).dims, (Dims{1, 4, 5, 8}));
  EXPECT_EQ(net.layers()[2].attrs.get_string("layout", "conv"), "nhwc");
  EXPECT_EQ(net.tensor(net.layers()[2].inputs[1]).dims, (Dims{2, 3, 3, 8}));  // [K, kh, kw, C padded]
  EXPECT_EQ(net.tensor(net.layers()[3].outputs[0]).dims, (Dims{1, 4, 5, 2}));
  EXPECT_EQ(net.tensor(net.outputs()[0]).name, "y");
  EXPECT_EQ(net.tensor(net.outputs()[0]).dims, (Dims{1, 2, 4, 5}));
  net.revalidate();
}

TEST(AssignLayouts, LowerRankConstantOperandsStayChannelsLast) {
  // conv -> x * scale[C, 1, 1] (ConvNeXt's layer scale) -> conv: the scale is permuted to
  // [1, 1, 1, C] at build time, so no transpose sits between the convolutions.
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat16, {1, 8, 3, 4});
  std::vector<uint16_t> half_w(8 * 8, 0x3c00), scale(8);
  for (int c = 0; c < 8; ++c) scale[c] = float_to_half_bits(0.5f + c);
  TensorId w = net.add_constant("w", DataType::kFloat16, {8, 8, 1, 1}, half_w.data(), half_w.size() * 2);
  TensorId s = net.add_constant("s", DataType::kFloat16, {8, 1, 1}, scale.data(), scale.size() * 2);
  TensorId c1 = net.add_layer("convolution", {x, w}, Attributes(), "conv1").outputs[0];
  TensorId m = net.add_elementwise(c1, s, "mul", "scale").outputs[0];
  net.mark_output(net.add_layer("convolution", {m, w}, Attributes(), "conv2").outputs[0], "y");
  EXPECT_TRUE(assign_layouts(net));
  ASSERT_EQ(ops_of(net), (std::vector<std::string>{"transpose", "convolution", "elementwise", "convolution",
                                                   "transpose"}));
  EXPECT_EQ(net.tensor(net.layers()[2].inputs[1]).dims, (Dims{1, 1, 1, 8}));
  // [1, C, 1, 1] -> [1, 1, 1, C] keeps the values' order.
  const Tensor& permuted = net.tensor(net.layers()[2].inputs[1]);
  EXPECT_EQ(std::memcmp(permuted.data->data(), scale.data(), scale.size() * 2), 0);
  net.revalidate();
}

TEST(AssignLayouts, Float32ConvolutionStays) {
  Network net = conv_bn_net(true);
  EXPECT_FALSE(assign_layouts(net));
  EXPECT_EQ(ops_of(net), (std::vector<std::string>{"convolution", "batch_norm"}));
}

}  // namespace
}  // namespace kiln
