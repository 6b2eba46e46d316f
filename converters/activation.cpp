// aten activations -> activation layers.
#include "converters/converter_util.h"
#include "converters/families.h"

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

void register_activation_converters() {
  register_activation("aten.relu.default", "relu");
  register_activation("aten.sigmoid.default", "sigmoid");
  register_activation("aten.tanh.default", "tanh");
  register_activation("aten.silu.default", "silu");

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
}

}  // namespace kiln
