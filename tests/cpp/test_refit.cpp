// Refit: an engine refitted with new weights holds exactly the constants a fresh build with those
// weights holds (every builder transform replayed: BatchNorm folding, transposes folded and undone,
// horizontal GEMM merging, FP16 conversion, channels-last permutation, channel padding), computes
// the same outputs, survives serialization, and refuses bad weights by name.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "core/allocator.h"
#include "core/refit.h"
#include "core/weight_transforms.h"
#include "kernels/device.h"
#include "kernels/reference/host_access.h"
#include "test_util.h"

namespace kiln {
namespace {

using Weights = std::map<std::string, std::vector<float>>;

const std::map<std::string, Dims> kShapes = {
    {"conv.weight", {4, 3, 3, 3}},
    {"conv.bias", {4}},
    {"bn.weight", {4}},
    {"bn.bias", {4}},
    {"bn.running_mean", {4}},
    {"bn.running_var", {4}},
    {"fc1.weight", {10, 144}},
    {"fc1.bias", {10}},
    {"fc2.weight", {6, 144}},
    {"fc2.bias", {6}},
    {"scale", {1}},
};

Weights random_weights(uint32_t seed) {
  Weights w;
  for (const auto& [name, dims] : kShapes) {
    // Variances positive; the rest in [-1, 1).
    const bool var = name == "bn.running_var";
    w[name] =
        test::random_floats(static_cast<size_t>(volume(dims)), seed++, var ? 0.5f : -1.f, var ? 2.f : 1.f);
  }
  return w;
}

// x [N, 3, 8, 8] -> conv + bias -> batch norm -> relu -> flatten -> two Linears on the same input
// (transpose of the weight, matmul, bias add: merged into one GEMM) -> the first times a scalar
// weight, the second as it is.
Network network(const Weights& w) {
  Network net;
  auto weight = [&](const std::string& name) {
    const std::vector<float>& v = w.at(name);
    const TensorId t = net.add_constant(name, DataType::kFloat32, kShapes.at(name), v.data(), v.size() * 4);
    net.mark_weight(t, name);
    return t;
  };
  const TensorId x = net.add_input("x", DataType::kFloat32, {-1, 3, 8, 8});
  TensorId y =
      net.add_layer("convolution", {x, weight("conv.weight"), weight("conv.bias")}, Attributes(), "conv")
          .outputs[0];
  y = net.add_layer(
             "batch_norm",
             {y, weight("bn.weight"), weight("bn.bias"), weight("bn.running_mean"), weight("bn.running_var")},
             Attributes().set("eps", 1e-5), "bn")
          .outputs[0];
  y = net.add_activation(y, "relu", std::nullopt, "relu").outputs[0];
  y = net.add_layer("reshape", {y}, Attributes().set("shape", Dims{-1, 144}), "flatten").outputs[0];
  std::vector<TensorId> heads;
  for (const std::string fc : {"fc1", "fc2"}) {
    const TensorId wt = net.add_layer("transpose", {weight(fc + ".weight")},
                                      Attributes().set("perm", std::vector<int64_t>{1, 0}), fc + "/t")
                            .outputs[0];
    TensorId h = net.add_matmul(y, wt, false, false, fc).outputs[0];
    heads.push_back(net.add_elementwise(h, weight(fc + ".bias"), "add", fc + "/bias").outputs[0]);
  }
  net.mark_output(net.add_elementwise(heads[0], weight("scale"), "mul", "scaled").outputs[0], "y1");
  net.mark_output(heads[1], "y2");
  return net;
}

BuilderConfig config(BuildTarget target, bool fp16) {
  BuilderConfig c;
  c.target = target;
  c.precision.fp16 = fp16;
  c.tactic_timing = false;  // the same kernels in both builds
  c.profiles.push_back({{{"x", {{1, 3, 8, 8}, {2, 3, 8, 8}, {4, 3, 8, 8}}}}});
  return c;
}

std::map<std::string, ConstantValue> values(const Weights& w) {
  std::map<std::string, ConstantValue> out;
  for (const auto& [name, v] : w) {
    auto bytes = std::make_shared<std::vector<uint8_t>>(v.size() * 4);
    std::memcpy(bytes->data(), v.data(), bytes->size());
    out[name] = ConstantValue{DataType::kFloat32, kShapes.at(name), bytes};
  }
  return out;
}

// The same weights borrowed: read in place from the caller's buffers, not owned.
std::map<std::string, ConstantValue> borrowed_values(const Weights& w) {
  std::map<std::string, ConstantValue> out;
  for (const auto& [name, v] : w) {
    ConstantValue c{DataType::kFloat32, kShapes.at(name), nullptr};
    c.borrowed = reinterpret_cast<const uint8_t*>(v.data());
    c.borrowed_size = v.size() * 4;
    out[name] = c;
  }
  return out;
}

// Every constant of `a` equals the same-named constant of `b`, byte for byte.
void expect_same_constants(const Network& a, const Network& b) {
  int compared = 0;
  for (const auto& t : a.tensors()) {
    if (t.kind != TensorKind::kConstant) continue;
    const TensorId other = b.find_tensor(t.name);
    ASSERT_GE(other, 0) << t.name;
    EXPECT_TRUE(*t.data == *b.tensor(other).data) << "constant '" << t.name << "' differs";
    ++compared;
  }
  EXPECT_GT(compared, 0);
}

void check_refit(BuildTarget target, Backend backend, bool fp16) {
  const Weights w0 = random_weights(1), w1 = random_weights(100);
  const Plan built = Builder().build(network(w0), config(target, fp16));
  const Plan fresh = Builder().build(network(w1), config(target, fp16));
  // Through plan bytes, as a saved engine is refitted.
  auto engine = Engine::create(Plan::deserialize(built.serialize()), backend);
  std::vector<std::string> names;
  for (const auto& spec : engine->refittable_weights()) names.push_back(spec.name);
  std::vector<std::string> want;
  for (const auto& kv : kShapes) want.push_back(kv.first);
  EXPECT_EQ(names, want);

  const auto x = test::random_floats(2 * 3 * 8 * 8, 7);
  const auto before = test::run_float(engine, {{"x", {{2, 3, 8, 8}, x}}});
  engine->refit(values(w1));
  expect_same_constants(engine->network(), fresh.network);
  const auto after = test::run_float(engine, {{"x", {{2, 3, 8, 8}, x}}});
  const auto expected = test::run_float(Engine::create(Plan::deserialize(fresh.serialize()), backend),
                                        {{"x", {{2, 3, 8, 8}, x}}});
  for (const std::string name : {"y1", "y2"}) {
    EXPECT_EQ(after.at(name), expected.at(name)) << name;  // bit-identical
    EXPECT_NE(after.at(name), before.at(name)) << name;    // and the weights did change
  }
  // The refitted plan serializes the new weights (and its lineage again).
  auto reloaded = Engine::create(Plan::deserialize(engine->plan().serialize()), backend);
  EXPECT_EQ(test::run_float(reloaded, {{"x", {{2, 3, 8, 8}, x}}}).at("y1"), expected.at("y1"));
  EXPECT_EQ(reloaded->refittable_weights().size(), kShapes.size());
}

TEST(Refit, ReplaysEveryTransformOnTheReferenceBackend) {
  check_refit(BuildTarget::kReference, Backend::kReference, false);
}

TEST(Refit, ReplaysFp16ConversionOnTheReferenceBackend) {
  check_refit(BuildTarget::kReference, Backend::kReference, true);
}

TEST(Refit, ReplaysEveryTransformOnTheGpu) {
  KILN_REQUIRE_GPU();
  check_refit(BuildTarget::kCuda, Backend::kCuda, false);
  check_refit(BuildTarget::kCuda, Backend::kCuda, true);  // FP16: channels last, padded channels
}

// Weights read in place (borrowed bytes, as the torch runtime passes its tensors) replay to the
// same constants as owned copies, and the plan keeps copies of its own: the caller's buffers can
// change after the refit without changing the plan.
TEST(Refit, BorrowedWeightsReplayAsOwnedOnesAndThePlanKeepsItsOwnBytes) {
  const Weights w = random_weights(1);
  const Plan plan = Builder().build(network(w), config(BuildTarget::kReference, false));
  Weights next = random_weights(9);
  Plan owned = plan, borrowed = plan;
  refit_plan(owned, values(next));
  refit_plan(borrowed, borrowed_values(next));
  expect_same_constants(owned.network, borrowed.network);
  for (auto& [name, v] : next) std::fill(v.begin(), v.end(), 0.0f);
  expect_same_constants(owned.network, borrowed.network);
}

// Weights no transform reads may be given as held elsewhere (on the GPU): the constants that are
// them unchanged are listed for a device copy instead of recomputed; one a transform reads must be
// given on the host.
TEST(Refit, WeightsHeldOnTheDeviceAreCopiedNotRecomputed) {
  const Weights w = random_weights(1);
  const Plan plan = Builder().build(network(w), config(BuildTarget::kReference, false));
  const std::set<std::string> host = host_read_weights(plan.network);
  EXPECT_TRUE(host.count("conv.weight") && host.count("bn.running_var"));  // folded into the conv
  std::map<std::string, ConstantValue> given = values(random_weights(5));
  std::set<std::string> on_device;
  for (const auto& spec : refittable_weights(plan.network)) {
    if (!host.count(spec.name)) {
      on_device.insert(spec.name);
      given.erase(spec.name);
    }
  }
  std::vector<std::pair<TensorId, std::string>> direct;
  const auto computed = replay_weights(plan.network, given, on_device, &direct);
  std::set<std::string> copied;
  for (const auto& [id, name] : direct) {
    EXPECT_EQ(plan.network.tensor(id).lineage->transform, "source");
    copied.insert(name);
  }
  EXPECT_EQ(copied, on_device);
  EXPECT_EQ(computed.size() + direct.size(), [&] {
    size_t n = 0;
    for (const auto& t : plan.network.tensors()) n += t.kind == TensorKind::kConstant && t.lineage ? 1 : 0;
    return n;
  }());
  // A weight a transform reads cannot stay on the device.
  std::map<std::string, ConstantValue> without = given;
  without.erase("conv.weight");
  std::set<std::string> more = on_device;
  more.insert("conv.weight");
  try {
    replay_weights(plan.network, without, more, &direct);
    ADD_FAILURE() << "a transform's weight on the device was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'conv.weight' is needed on the host"), std::string::npos)
        << e.what();
  }
}

TEST(Refit, WeightsOnTheGpuAreCopiedThereAndTheSavedPlanHasThem) {
  KILN_REQUIRE_GPU();
  for (const bool fp16 : {false, true}) {
    const Weights w0 = random_weights(1), w1 = random_weights(100);
    const Plan built = Builder().build(network(w0), config(BuildTarget::kCuda, fp16));
    const Plan fresh = Builder().build(network(w1), config(BuildTarget::kCuda, fp16));
    auto engine = Engine::create(Plan::deserialize(built.serialize()), Backend::kCuda);
    const std::set<std::string> host = host_read_weights(engine->network());
    std::map<std::string, ConstantValue> given = values(w1);
    std::map<std::string, const void*> on_device;
    auto allocator = default_device_allocator();
    std::vector<void*> buffers;
    for (auto it = given.begin(); it != given.end();) {
      if (host.count(it->first)) {
        ++it;
        continue;
      }
      void* p = allocator->allocate(it->second.data->size());
      copy_to_device(p, it->second.data->data(), it->second.data->size());
      buffers.push_back(p);
      on_device[it->first] = p;
      it = given.erase(it);
    }
    // FP32: weights the plan holds as given stay on the device and are copied there. FP16: every
    // weight of this network is cast (or folded and cast) on its way into the plan, so all of them
    // are read on the host (the H100 run showed it) and refit recomputes them.
    EXPECT_EQ(on_device.empty(), fp16) << "fp16 " << fp16;
    engine->refit(given, on_device);
    for (void* p : buffers) allocator->deallocate(p);
    const auto x = test::random_floats(2 * 3 * 8 * 8, 7);
    const auto expected = test::run_float(
        Engine::create(Plan::deserialize(fresh.serialize()), Backend::kCuda), {{"x", {{2, 3, 8, 8}, x}}});
    EXPECT_EQ(test::run_float(engine, {{"x", {{2, 3, 8, 8}, x}}}).at("y1"), expected.at("y1"));
    expect_same_constants(engine->plan().network, fresh.network);  // plan() brings them back
  }
}

std::string refit_error(Engine& engine, const std::map<std::string, ConstantValue>& weights) {
  try {
    engine.refit(weights);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Refit, RefusesMissingExtraAndReshapedWeightsByName) {
  const Weights w = random_weights(1);
  auto engine = Engine::create(Builder().build(network(w), config(BuildTarget::kReference, false)),
                               Backend::kReference);
  auto v = values(random_weights(5));
  v.erase("bn.bias");
  EXPECT_NE(refit_error(*engine, v).find("not given: 'bn.bias'"), std::string::npos)
      << refit_error(*engine, v);
  v = values(random_weights(5));
  v["head.weight"] = v.at("scale");
  EXPECT_NE(refit_error(*engine, v).find("does not have: 'head.weight'"), std::string::npos);
  v = values(random_weights(5));
  v["fc2.bias"].dims = {2, 3};
  EXPECT_NE(refit_error(*engine, v).find("fc2.bias (float32 [2, 3] given"), std::string::npos)
      << refit_error(*engine, v);
  // A refused refit leaves the engine as it was.
  const auto x = test::random_floats(3 * 64, 3);
  const auto fresh = Engine::create(Builder().build(network(w), config(BuildTarget::kReference, false)),
                                    Backend::kReference);
  EXPECT_EQ(test::run_float(engine, {{"x", {{1, 3, 8, 8}, x}}}).at("y1"),
            test::run_float(fresh, {{"x", {{1, 3, 8, 8}, x}}}).at("y1"));
}

// A constant whose value a pass folded into the engine (an INT8 layer's weight scales) gets a
// blocked lineage: it names the weights it derives from, for refit's refusal, and copies none of
// the bytes between (an unmarked constant among its inputs, which a replayable lineage keeps as a
// literal).
TEST(Refit, BlockedLineageNamesItsWeightsAndCopiesNoBytes) {
  Network net;
  const std::vector<float> wv(64, 0.5f), uv(4096, 1.f);
  const TensorId w = net.add_constant("fc.weight", DataType::kFloat32, {8, 8}, wv.data(), wv.size() * 4);
  net.mark_weight(w, "fc.weight");
  const TensorId u = net.add_constant("u", DataType::kFloat32, {64, 64}, uv.data(), uv.size() * 4);
  ASSERT_EQ(derived_lineage(net, "transpose2d", "", Attributes(), 0, {u, w}, DataType::kFloat32, {8, 8})
                ->inputs[0]
                ->transform,
            "literal");
  const LineagePtr l =
      blocked_lineage(net, {u, w}, "its scales are kernel parameters", DataType::kFloat32, {2, 8});
  ASSERT_NE(l, nullptr);
  EXPECT_EQ(l->transform, "blocked");
  EXPECT_EQ(l->blocked, "its scales are kernel parameters");
  ASSERT_EQ(l->inputs.size(), 1u);
  EXPECT_EQ(l->inputs[0]->transform, "source");
  EXPECT_EQ(l->inputs[0]->name, "fc.weight");
  EXPECT_EQ(blocked_lineage(net, {u}, "no weight", DataType::kFloat32, {64, 64}), nullptr);
}

TEST(Refit, EngineWithoutWeightsSaysSo) {
  Network net;
  const float one = 1.f;
  const TensorId x = net.add_input("x", DataType::kFloat32, {2});
  const TensorId c = net.add_constant("c", DataType::kFloat32, {1}, &one, 4);
  net.mark_output(net.add_elementwise(x, c, "add", "add").outputs[0], "y");
  BuilderConfig reference;
  reference.target = BuildTarget::kReference;
  auto engine = Engine::create(Builder().build(net, reference), Backend::kReference);
  EXPECT_TRUE(engine->refittable_weights().empty());
  EXPECT_NE(refit_error(*engine, {}).find("no refittable weights"), std::string::npos);
}

TEST(Refit, EqualWeightsStayApartAndScalarsStayInputs) {
  // Zero biases are equal at build time (common subexpression elimination would merge equal small
  // constants) and a one-element weight would be inlined into a fused kernel: refittable ones are not.
  Weights w = random_weights(1);
  std::fill(w["fc1.bias"].begin(), w["fc1.bias"].end(), 0.f);
  std::fill(w["fc2.bias"].begin(), w["fc2.bias"].end(), 0.f);
  auto engine = Engine::create(Builder().build(network(w), config(BuildTarget::kReference, false)),
                               Backend::kReference);
  Weights w1 = random_weights(9);
  engine->refit(values(w1));
  const auto x = test::random_floats(64 * 3, 4);
  const auto fresh = Engine::create(Builder().build(network(w1), config(BuildTarget::kReference, false)),
                                    Backend::kReference);
  EXPECT_EQ(test::run_float(engine, {{"x", {{1, 3, 8, 8}, x}}}).at("y1"),
            test::run_float(fresh, {{"x", {{1, 3, 8, 8}, x}}}).at("y1"));
  EXPECT_EQ(test::run_float(engine, {{"x", {{1, 3, 8, 8}, x}}}).at("y2"),
            test::run_float(fresh, {{"x", {{1, 3, 8, 8}, x}}}).at("y2"));
}

TEST(Refit, StrippedPlanRunsOnceRefitted) {
  const Weights w = random_weights(1);
  const Plan built = Builder().build(network(w), config(BuildTarget::kReference, true));
  const std::vector<uint8_t> full = built.serialize(), stripped = built.serialize(/*strip_weights=*/true);
  // The 2,441 weights (as float16 after the FP16 build: ~4.9 KB) are left out.
  EXPECT_GE(full.size(), stripped.size() + 4800);
  Plan plan = Plan::deserialize(stripped);
  EXPECT_TRUE(plan.weights_stripped());
  EXPECT_FALSE(Plan::deserialize(full).weights_stripped());
  try {
    Engine::create(plan, Backend::kReference);
    FAIL() << "an engine was created from a plan without its weights";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("saved without its weights"), std::string::npos) << e.what();
  }
  // Stripped again, it stays stripped; refitted, it runs as the full plan.
  EXPECT_TRUE(Plan::deserialize(plan.serialize()).weights_stripped());
  refit_plan(plan, values(w));
  EXPECT_FALSE(plan.weights_stripped());
  const auto x = test::random_floats(2 * 3 * 8 * 8, 11);
  EXPECT_EQ(test::run_float(Engine::create(plan, Backend::kReference), {{"x", {{2, 3, 8, 8}, x}}}).at("y1"),
            test::run_float(Engine::create(Plan::deserialize(full), Backend::kReference),
                            {{"x", {{2, 3, 8, 8}, x}}})
                .at("y1"));
}

TEST(Refit, CorruptLineageIsRefusedAtLoad) {
  const Plan built = Builder().build(network(random_weights(1)), config(BuildTarget::kReference, false));
  // A plan whose lineage names a transform this Kiln does not have (serialized, so checksummed).
  Plan plan = built;
  for (size_t id = 0; id < plan.network.tensors().size(); ++id) {
    Tensor& t = plan.network.tensor(static_cast<TensorId>(id));
    if (!t.lineage || t.lineage->transform == "source") continue;
    auto bad = std::make_shared<Lineage>(*t.lineage);
    bad->transform = "no_such_transform";
    t.lineage = bad;
    break;
  }
  try {
    Plan::deserialize(plan.serialize());
    FAIL() << "a plan with an unknown weight transform loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown transform 'no_such_transform'"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace kiln

// The vectorized float32 -> float16 conversion of the "convert" transform gives
// float_to_half_bits's bits for every input: rounding ties, subnormals, overflow to infinity,
// infinities, and NaNs of every payload (the one quiet NaN), at every position of a block.
TEST(Refit, VectorizedHalfConversionMatchesTheScalarOneBitForBit) {
  std::vector<uint32_t> bits;
  for (uint32_t hi = 0; hi < (1u << 16); ++hi) {  // every exponent and top mantissa bits
    for (uint32_t lo : {0x0000u, 0x0001u, 0x0fffu, 0x1000u, 0x1001u, 0x2000u, 0x3000u, 0xffffu})
      bits.push_back(hi << 16 | lo);
  }
  std::mt19937 rng(7);
  for (int i = 0; i < (1 << 20); ++i) bits.push_back(static_cast<uint32_t>(rng()));
  std::vector<float> in(bits.size());
  std::memcpy(in.data(), bits.data(), bits.size() * 4);
  for (size_t offset : {size_t{0}, size_t{3}}) {  // a tail that is not a whole block too
    const size_t n = in.size() - offset;
    std::vector<uint16_t> out(n);
    kiln::floats_to_halves(in.data() + offset, out.data(), static_cast<int64_t>(n));
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(out[i], kiln::float_to_half_bits(in[i + offset]))
          << "input bits 0x" << std::hex << bits[i + offset];
    }
  }
}

// BatchNorm folding of a float16 weight, 8 at a time (F16C and AVX), gives the scalar definition's
// bits for every float16 input (subnormals, infinities, NaNs) and scales that overflow, underflow,
// flip the sign, are zero (inf * 0 = NaN) or NaN, at every position of a block and in the tail.
TEST(Refit, VectorizedHalfScalingMatchesTheScalarOneBitForBit) {
  std::vector<uint16_t> in(1u << 16);
  for (uint32_t h = 0; h < in.size(); ++h) in[h] = static_cast<uint16_t>(h);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (double s : {1.0, 0.7310585786300049, -3.0, 1e-7, 4096.5, 0.0, -0.0, 1e300, nan}) {
    for (size_t offset : {size_t{0}, size_t{5}}) {
      const size_t n = in.size() - offset;
      std::vector<uint16_t> vec(n), ref(n);
      kiln::scale_halves(in.data() + offset, s, vec.data(), static_cast<int64_t>(n));
      kiln::scale_halves(in.data() + offset, s, ref.data(), static_cast<int64_t>(n), /*vectorized=*/false);
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(vec[i], ref[i]) << "input 0x" << std::hex << in[i + offset] << " scale " << s;
        ASSERT_EQ(ref[i], kiln::float_to_half_bits(
                              static_cast<float>(double{kiln::half_bits_to_float(in[i + offset])} * s)));
      }
    }
  }
}

// BatchNorm folding of float16 / bfloat16 weights (a model run in .half()) takes a per-channel
// path: its bits equal the element-wise definition (widen, scale in double, round to float, then
// to 16 bits) for every element.
TEST(Refit, BatchNormFoldOf16BitWeightsMatchesTheElementwiseDefinition) {
  using namespace kiln;
  for (DataType dtype : {DataType::kFloat16, DataType::kBFloat16}) {
    const Dims w_dims{6, 3, 3, 3};
    const int64_t n = volume(w_dims);
    auto make = [](DataType dt, const Dims& dims, const std::vector<float>& values) {
      auto bytes = std::make_shared<std::vector<uint8_t>>(values.size() * dtype_size(dt));
      const TensorView v{bytes->data(), dt, dims};
      for (size_t i = 0; i < values.size(); ++i) store_element(v, static_cast<int64_t>(i), values[i]);
      return ConstantValue{dt, dims, bytes};
    };
    const auto w = make(dtype, w_dims, test::random_floats(static_cast<size_t>(n), 3, -2.f, 2.f));
    const auto gamma = make(dtype, {6}, test::random_floats(6, 4, 0.5f, 2.f));
    const auto beta = make(dtype, {6}, test::random_floats(6, 5, -1.f, 1.f));
    const auto mean = make(dtype, {6}, test::random_floats(6, 6, -1.f, 1.f));
    const auto var = make(dtype, {6}, test::random_floats(6, 7, 0.1f, 3.f));
    Lineage node;
    node.transform = "bn_fold_weight";
    node.attrs.set("eps", 1e-5).set("producer", std::string("convolution"));
    node.dtype = dtype;
    node.dims = w_dims;
    const ConstantValue got = apply_weight_transform(node, {w, gamma, beta, mean, var});
    auto view = [](const ConstantValue& c) {
      return TensorView{const_cast<uint8_t*>(c.data->data()), c.dtype, c.dims};
    };
    const TensorView wv = view(w), out = view(got);
    auto at = [&](const ConstantValue& c, int64_t i) { return load_element(view(c), i); };
    for (int64_t i = 0; i < n; ++i) {
      const int64_t k = i / (n / 6);
      const double scale = at(gamma, k) / std::sqrt(at(var, k) + 1e-5);
      std::vector<uint8_t> want(2);
      store_element({want.data(), dtype, {1}}, 0, load_element(wv, i) * scale);
      ASSERT_EQ(std::memcmp(want.data(), static_cast<const uint8_t*>(out.data) + 2 * i, 2), 0)
          << dtype_name(dtype) << " element " << i;
    }
  }
}
