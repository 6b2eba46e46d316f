// Normalizations and softmax: batch norm (inference), layer norm, softmax / log_softmax.
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// A [C] constant of `value` (batch_norm needs scale and bias even when the module has none).
TensorId filled(ConversionContext& ctx, const KNode& n, DataType dtype, int64_t c, float value,
                const std::string& suffix) {
  std::vector<float> data(static_cast<size_t>(c), value);
  TensorId t = ctx.net().add_constant(n.name + "/" + suffix, DataType::kFloat32, {c}, data.data(),
                                      data.size() * sizeof(float));
  if (dtype == DataType::kFloat32) return t;
  return ctx.add(n, "cast", {t}, Attributes().set("to", std::string(dtype_name(dtype))), suffix + "_cast")
      .outputs[0];
}

void register_softmax(const std::string& target, bool log) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (bool_arg(n, "half_to_float")) return "half_to_float is not supported";
    int_arg(n, "dim");
    return require_floating(value_arg(g, n, "self"), "self");
  };
  c.convert = [log](ConversionContext& ctx, const KNode& n) {
    Attributes attrs;
    attrs.set("axis", int_arg(n, "dim")).set("log", int64_t{log});
    ctx.set_output(n, 0, ctx.add(n, "softmax", {ctx.tensor(n, "self")}, attrs).outputs[0]);
  };
  c.limits = "half_to_float false; floating dtypes";
  register_converter(std::move(c));
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter bn;
  bn.target = "aten._native_batch_norm_legit_no_training.default";
  bn.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "input");
    if (x.dims.size() < 2 || x.dims[1] < 0) return "input needs a static channel dim (dim 1)";
    value_arg(g, n, "running_mean");
    value_arg(g, n, "running_var");
    std::string r = require_unused_outputs(n, 1, "saved mean/invstd");
    return r.empty() ? require_floating(x, "input") : r;
  };
  bn.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "input");
    TensorId mean = ctx.tensor(n, "running_mean");
    const DataType pdtype = ctx.net().tensor(mean).dtype;
    const int64_t channels = ctx.net().tensor(x).dims[1];
    TensorId scale = n.arg("weight").is_none() ? filled(ctx, n, pdtype, channels, 1.0f, "weight")
                                               : ctx.tensor(n, "weight");
    TensorId bias =
        n.arg("bias").is_none() ? filled(ctx, n, pdtype, channels, 0.0f, "bias") : ctx.tensor(n, "bias");
    TensorId out = ctx.add(n, "batch_norm", {x, scale, bias, mean, ctx.tensor(n, "running_var")},
                           Attributes().set("eps", n.arg("eps").as_double()))
                       .outputs[0];
    ctx.set_output(n, 0, out);
  };
  bn.limits = "inference (running statistics); only output 0 used; static channel dim";
  register_converter(std::move(bn));

  Converter ln;
  ln.target = "aten.native_layer_norm.default";
  ln.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (!n.arg("bias").is_none() && n.arg("weight").is_none())
      return "a bias without a weight is not supported";
    ints_arg(n, "normalized_shape");
    std::string r = require_unused_outputs(n, 1, "mean/rstd");
    return r.empty() ? require_floating(value_arg(g, n, "input"), "input") : r;
  };
  ln.convert = [](ConversionContext& ctx, const KNode& n) {
    std::vector<TensorId> inputs = {ctx.tensor(n, "input")};
    if (!n.arg("weight").is_none()) inputs.push_back(ctx.tensor(n, "weight"));
    if (!n.arg("bias").is_none()) inputs.push_back(ctx.tensor(n, "bias"));
    Attributes attrs;
    attrs.set("normalized_ndim", static_cast<int64_t>(ints_arg(n, "normalized_shape").size()))
        .set("eps", n.arg("eps").as_double());
    ctx.set_output(n, 0, ctx.add(n, "layer_norm", inputs, attrs).outputs[0]);
  };
  ln.limits = "only output 0 used; a bias needs a weight";
  register_converter(std::move(ln));

  register_softmax("aten._softmax.default", false);
  register_softmax("aten._log_softmax.default", true);
});

}  // namespace kiln
