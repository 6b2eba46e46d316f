// The plugin API (core/plugin.h) from C++, with plugins registered in this process: a plugin
// layer builds, runs on the reference backend, survives a plan round trip and records its
// version; plugins that misbehave (a null layer, an exception, a bad registration) give errors
// naming them, never a crash.
#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/plan.h"
#include "core/plugin.h"
#include "test_util.h"

namespace kiln {
namespace {

// y = x * factor + offset (field "offset", default 0), float32; offset must be finite.
class AffineLayer : public PluginLayer {
 public:
  AffineLayer(double factor, double offset) : factor_(factor), offset_(offset) {}
  std::vector<PluginTensorDesc> outputs(const std::vector<PluginTensorDesc>& in) const override {
    if (in.at(0).dtype != DataType::kFloat32) throw std::invalid_argument("affine takes float32");
    return {in[0]};
  }
  void run_cpu(const std::vector<PluginTensor>& in, const std::vector<PluginTensor>& out) const override {
    int64_t n = 1;
    for (int64_t d : in[0].dims) n *= d;
    const auto* x = static_cast<const float*>(in[0].data);
    auto* y = static_cast<float*>(out[0].data);
    for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(x[i] * factor_ + offset_);
  }

 private:
  double factor_, offset_;
};

class AffineCreator : public PluginCreator {
 public:
  std::string name() const override { return "affine"; }
  std::string version() const override { return "2"; }
  std::string plugin_namespace() const override { return "kiln_test"; }
  std::vector<PluginField> fields() const override {
    return {{"factor", PluginField::Type::kFloat, std::nullopt, "required"},
            {"offset", PluginField::Type::kFloat, AttrValue{0.0}, "added"}};
  }
  bool has_cuda() const override { return false; }
  bool has_cpu() const override { return true; }
  std::unique_ptr<PluginLayer> create(const Attributes& f, int) const override {
    const double offset = f.get_float("offset", "affine");
    if (!std::isfinite(offset)) throw std::invalid_argument("offset must be finite");
    return std::make_unique<AffineLayer>(f.get_float("factor", "affine"), offset);
  }
};

// create() returns null: a broken plugin.
class NullCreator : public AffineCreator {
 public:
  std::string name() const override { return "null_layer"; }
  std::unique_ptr<PluginLayer> create(const Attributes&, int) const override { return nullptr; }
};

const bool kRegistered = [] {
  register_plugin(std::make_shared<AffineCreator>());
  register_plugin(std::make_shared<NullCreator>());
  return true;
}();

Network affine_network(double factor, double offset) {
  Network net;
  const TensorId x = net.add_input("x", DataType::kFloat32, {2, 3});
  const Layer& l =
      add_plugin(net, "affine", {x}, Attributes().set("factor", factor).set("offset", offset), "kiln_test");
  net.mark_output(l.outputs[0], "y");
  return net;
}

TEST(Plugin, BuildsRunsAndSurvivesAPlanRoundTrip) {
  ASSERT_TRUE(kRegistered);
  BuilderConfig config;
  config.target = BuildTarget::kReference;
  const Plan plan = Plan::deserialize(Builder().build(affine_network(2.0, 0.5), config).serialize());
  const Layer& layer = plan.network.layers().at(0);
  EXPECT_EQ(layer.op, "plugin:kiln_test::affine");
  EXPECT_EQ(layer.attrs.get_string("plugin_version", "test"), "2");
  const std::vector<float> x = {1, 2, 3, -1, -2, -3};
  const auto out = test::run_float(Engine::create(plan, Backend::kReference), {{"x", {{2, 3}, x}}});
  for (size_t i = 0; i < x.size(); ++i) EXPECT_FLOAT_EQ(out.at("y")[i], x[i] * 2.0f + 0.5f);
  const std::vector<std::string> plugins = registered_plugins();
  EXPECT_NE(std::find(plugins.begin(), plugins.end(), "kiln_test::affine 2"), plugins.end());
}

TEST(Plugin, MisbehavingPluginsAndLayersGiveErrorsNamingThem) {
  Network net;
  const TensorId x = net.add_input("x", DataType::kFloat32, {2, 3});
  const TensorId i = net.add_input("i", DataType::kInt32, {2, 3});
  auto fails_with = [](const std::function<void()>& f, const std::string& text) {
    try {
      f();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
      return;
    }
    ADD_FAILURE() << "no error; expected one with: " << text;
  };
  fails_with([&] { add_plugin(net, "null_layer", {x}, Attributes().set("factor", 1.0), "kiln_test"); },
             "create() returned null");
  fails_with([&] { add_plugin(net, "affine", {i}, Attributes().set("factor", 1.0), "kiln_test"); },
             "affine takes float32");
  fails_with([&] { add_plugin(net, "affine", {x}, Attributes(), "kiln_test"); }, "needs field 'factor'");
  fails_with(
      [&] {
        add_plugin(net, "affine", {x}, Attributes().set("factor", 1.0).set("offset", NAN), "kiln_test");
      },
      "offset must be finite");
  fails_with([&] { add_plugin(net, "affine", {x}, Attributes().set("factor", 1.0)); },
             "plugin 'affine' is not registered");
  fails_with(
      [&] {
        net.add_layer("plugin:kiln_test::affine", {x},
                      Attributes().set("factor", 1.0).set("plugin_version", std::string("1")));
      },
      "version '1', and this process has version '2'");
  fails_with([&] { net.add_layer("plugin:nowhere::thing", {x}, Attributes()); },
             "plugin 'nowhere::thing' is not loaded");
  fails_with([] { register_plugin(std::make_shared<AffineCreator>()); }, "is registered already");
  fails_with([] { load_plugin_library("/nonexistent/libplugin.so"); }, "cannot load plugin library");
}

}  // namespace
}  // namespace kiln
