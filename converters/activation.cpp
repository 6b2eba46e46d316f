// aten activations -> activation layers.
#include <limits>

#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

void register_activation(const std::string& target, const std::string& type) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) {
    return require_floating(value_arg(g, n, "self"), "self");
  };
  c.convert = [type](ConversionContext& ctx, const KNode& n) {
    ctx.set_output(
        n, 0, ctx.add(n, "activation", {ctx.tensor(n, "self")}, Attributes().set("type", type)).outputs[0]);
  };
  c.limits = "floating dtypes";
  register_converter(std::move(c));
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  register_activation("aten.relu.default", "relu");
  register_activation("aten.sigmoid.default", "sigmoid");
  register_activation("aten.tanh.default", "tanh");
  register_activation("aten.silu.default", "silu");
  register_activation("aten.selu.default", "selu");
  register_activation("aten.hardswish.default", "hardswish");
  register_activation("aten.hardsigmoid.default", "hardsigmoid");

  Converter gelu;
  gelu.target = "aten.gelu.default";
  gelu.capability = [](const KGraph& g, const KNode& n) {
    const std::string approximate = n.arg("approximate").s;
    if (approximate != "none" && approximate != "tanh")
      return "approximate='" + approximate + "' is not supported";
    return require_floating(value_arg(g, n, "self"), "self");
  };
  gelu.convert = [](ConversionContext& ctx, const KNode& n) {
    const std::string type = n.arg("approximate").s == "tanh" ? "gelu_tanh" : "gelu";
    ctx.set_output(
        n, 0, ctx.add(n, "activation", {ctx.tensor(n, "self")}, Attributes().set("type", type)).outputs[0]);
  };
  gelu.limits = "approximate 'none' (erf) or 'tanh'; floating dtypes";
  register_converter(std::move(gelu));

  Converter leaky;
  leaky.target = "aten.leaky_relu.default";
  leaky.capability = [](const KGraph& g, const KNode& n) {
    n.arg("negative_slope").as_double();
    return require_floating(value_arg(g, n, "self"), "self");
  };
  leaky.convert = [](ConversionContext& ctx, const KNode& n) {
    Attributes attrs;
    attrs.set("type", std::string("leaky_relu")).set("alpha", n.arg("negative_slope").as_double());
    ctx.set_output(n, 0, ctx.add(n, "activation", {ctx.tensor(n, "self")}, attrs).outputs[0]);
  };
  leaky.limits = "floating dtypes";
  register_converter(std::move(leaky));

  // clip(alpha = min, beta = max); a missing bound is -inf / +inf, so infinities pass through as
  // in torch (clamp(inf, min=0) = inf; a float-max bound would turn it into 3.4e38).
  auto register_clip = [](const std::string& target, const std::string& lo, const std::string& hi) {
    Converter c;
    c.target = target;
    c.capability = [lo, hi](const KGraph& g, const KNode& n) -> std::string {
      for (const std::string& name : {lo, hi}) {
        const Arg& a = n.arg(name);
        if (!a.is_none() && !a.is_number()) return name + " must be a number";
      }
      return require_floating(value_arg(g, n, "self"), "self");
    };
    c.convert = [lo, hi](ConversionContext& ctx, const KNode& n) {
      const double big = std::numeric_limits<double>::infinity();
      Attributes attrs;
      attrs.set("type", std::string("clip"))
          .set("alpha", n.arg(lo).is_none() ? -big : n.arg(lo).as_double())
          .set("beta", n.arg(hi).is_none() ? big : n.arg(hi).as_double());
      ctx.set_output(n, 0, ctx.add(n, "activation", {ctx.tensor(n, "self")}, attrs).outputs[0]);
    };
    c.limits = "number bounds; floating dtypes";
    register_converter(std::move(c));
  };
  register_clip("aten.hardtanh.default", "min_val", "max_val");
  register_activation("aten.mish.default", "mish");

  // elu(x, alpha, scale, input_scale) = scale * (x > 0 ? x : alpha * (exp(input_scale * x) - 1));
  // the activation's elu with a mul for scale; input_scale must be 1.
  Converter elu;
  elu.target = "aten.elu.default";
  elu.capability = [](const KGraph& g, const KNode& n) -> std::string {
    for (const char* name : {"alpha", "scale", "input_scale"}) {
      if (!n.arg(name).is_number()) return std::string(name) + " must be a number";
    }
    if (n.arg("input_scale").as_double() != 1.0) return "input_scale other than 1 is not converted";
    return require_floating(value_arg(g, n, "self"), "self");
  };
  elu.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    Attributes attrs;
    attrs.set("type", std::string("elu")).set("alpha", n.arg("alpha").as_double());
    const double scale = n.arg("scale").as_double();
    TensorId y = ctx.add(n, "activation", {x}, attrs, scale == 1.0 ? "" : "elu").outputs[0];
    if (scale != 1.0)
      y = binary(ctx, n, "mul", y, constant_of(ctx, n, scale, ctx.net().tensor(x).dtype, "scale"), "");
    ctx.set_output(n, 0, y);
  };
  elu.limits = "number alpha and scale; input_scale = 1; floating dtypes";
  register_converter(std::move(elu));

  Converter softplus;
  softplus.target = "aten.softplus.default";
  softplus.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (!n.arg("beta").is_number() || !n.arg("threshold").is_number())
      return "beta and threshold must be numbers";
    if (n.arg("beta").as_double() == 0.0) return "beta must not be 0";
    return require_floating(value_arg(g, n, "self"), "self");
  };
  softplus.convert = [](ConversionContext& ctx, const KNode& n) {
    Attributes attrs;
    attrs.set("type", std::string("softplus"))
        .set("beta", n.arg("beta").as_double())
        .set("threshold", n.arg("threshold").as_double());
    ctx.set_output(n, 0, ctx.add(n, "activation", {ctx.tensor(n, "self")}, attrs).outputs[0]);
  };
  softplus.limits = "number beta (not 0) and threshold; floating dtypes";
  register_converter(std::move(softplus));
});

}  // namespace kiln
