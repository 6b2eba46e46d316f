// Normalizations and softmax: batch norm (inference, and batch statistics as InstanceNorm), layer
// norm, group norm, RMS norm, softmax / log_softmax.
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
  // _native_batch_norm_legit_no_training, and _native_batch_norm_legit_functional (the form
  // torch.export gives _native_batch_norm_legit) with training=False: its new running statistics
  // (outputs 3 and 4) are the old ones. training=True updates them: a model in train mode.
  for (const char* target : {"aten._native_batch_norm_legit_no_training.default",
                             "aten._native_batch_norm_legit_functional.default"}) {
    Converter bn;
    bn.target = target;
    bn.capability = [](const KGraph& g, const KNode& n) -> std::string {
      const KValue& x = value_arg(g, n, "input");
      if (x.dims.size() < 2 || x.dims[1] < 0) return "input needs a static channel dim (dim 1)";
      value_arg(g, n, "running_mean");
      value_arg(g, n, "running_var");
      if (n.find("training") != nullptr && bool_arg(n, "training"))
        return "training=True updates the running statistics (a model in train mode: call model.eval())";
      if (output_used(n, 1) || output_used(n, 2)) return "saved mean/invstd are used";
      return require_floating(x, "input");
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
      if (output_used(n, 3))
        ctx.set_output(n, 3, ctx.add(n, "identity", {mean}, {}, "running_mean").outputs[0]);
      if (output_used(n, 4)) {
        ctx.set_output(n, 4,
                       ctx.add(n, "identity", {ctx.tensor(n, "running_var")}, {}, "running_var").outputs[0]);
      }
    };
    bn.limits = std::string(target).find("no_training") != std::string::npos
                    ? "inference (running statistics); only output 0 used; static channel dim"
                    : "training=False (running statistics); only output 0 used; static channel dim";
    register_converter(std::move(bn));
  }

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

  // native_group_norm(input, weight, bias, N, C, HxW, group, eps) -> group_norm (output 0).
  Converter gn;
  gn.target = "aten.native_group_norm.default";
  gn.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "input");
    if (x.dims.size() < 2 || x.dims[1] == kDynamic) return "input needs a static channel dim (dim 1)";
    const int64_t groups = int_arg(n, "group");
    if (groups <= 0 || x.dims[1] % groups != 0) return "group must divide the channels";
    std::string r = require_unused_outputs(n, 1, "mean/rstd");
    return r.empty() ? require_floating(x, "input") : r;
  };
  gn.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "input");
    const int64_t channels = ctx.net().tensor(x).dims[1];
    std::vector<TensorId> inputs = {x};
    const bool weight = !n.arg("weight").is_none(), bias = !n.arg("bias").is_none();
    const DataType pdtype = ctx.net().tensor(x).dtype;
    if (weight || bias)
      inputs.push_back(weight ? ctx.tensor(n, "weight") : filled(ctx, n, pdtype, channels, 1.0f, "weight"));
    if (bias) inputs.push_back(ctx.tensor(n, "bias"));
    Attributes attrs;
    attrs.set("num_groups", int_arg(n, "group")).set("eps", n.arg("eps").as_double());
    ctx.set_output(n, 0, ctx.add(n, "group_norm", inputs, attrs).outputs[0]);
  };
  gn.limits = "only output 0 used; static channel dim";
  register_converter(std::move(gn));

  // _native_batch_norm_legit.no_stats (training): batch statistics over every dim but 1, as
  // InstanceNorm produces it. (x - mean) * rsqrt(var + eps) * weight + bias.
  Converter stats;
  stats.target = "aten._native_batch_norm_legit.no_stats";
  stats.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "input");
    if (x.dims.size() < 2) return "input must have rank ≥ 2";
    if (!bool_arg(n, "training")) return "training=False without running statistics";
    std::string r = require_unused_outputs(n, 1, "saved mean/invstd");
    return r.empty() ? require_floating(x, "input") : r;
  };
  stats.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "input");
    const size_t rank = ctx.net().tensor(x).dims.size();
    const DataType dtype = ctx.net().tensor(x).dtype;
    std::vector<int64_t> axes = {0};
    for (size_t d = 2; d < rank; ++d) axes.push_back(static_cast<int64_t>(d));
    auto reduce = [&](const std::string& op, TensorId t, const std::string& tag) {
      Attributes a;
      a.set("op", op).set("axes", axes).set("keepdim", int64_t{1});
      if (op == "var") a.set("correction", int64_t{0});
      return ctx.add(n, "reduce", {t}, a, tag).outputs[0];
    };
    TensorId mean = reduce("mean", x, "mean");
    TensorId var = reduce("var", x, "var");
    TensorId eps = constant_of(ctx, n, n.arg("eps").as_double(), dtype, "eps");
    TensorId inv = unary(ctx, n, "rsqrt", binary(ctx, n, "add", var, eps, "var_eps"), "rstd");
    TensorId y = binary(ctx, n, "mul", binary(ctx, n, "sub", x, mean, "centered"), inv, "normalized");
    // weight / bias are [C]: viewed as [C, 1, ...] to broadcast over the dims after 1.
    auto per_channel = [&](const std::string& name) {
      TensorId p = ctx.tensor(n, name);
      std::vector<int64_t> extra;
      for (size_t d = 2; d < rank; ++d) extra.push_back(static_cast<int64_t>(d - 1));
      if (!extra.empty())
        p = ctx.add(n, "unsqueeze", {p}, Attributes().set("axes", extra), name + "_c11").outputs[0];
      return cast_to(ctx, n, p, dtype, name + "_cast");
    };
    const bool weight = !n.arg("weight").is_none(), bias = !n.arg("bias").is_none();
    if (weight) y = binary(ctx, n, "mul", y, per_channel("weight"), bias ? "scaled" : "");
    if (bias) y = binary(ctx, n, "add", y, per_channel("bias"), "");
    if (!weight && !bias) y = ctx.add(n, "identity", {y}).outputs[0];
    ctx.set_output(n, 0, y);
  };
  stats.limits = "training=True (batch statistics, as InstanceNorm); only output 0 used";
  register_converter(std::move(stats));

  // rms_norm(input, normalized_shape, weight, eps) -> rms_norm (eps None: torch's dtype epsilon).
  Converter rms;
  rms.target = "aten.rms_norm.default";
  rms.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "input");
    const size_t k = ints_arg(n, "normalized_shape").size();
    if (k == 0 || k > x.dims.size()) return "normalized_shape must cover 1 to rank dims";
    return require_floating(x, "input");
  };
  rms.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "input");
    std::vector<TensorId> inputs = {x};
    if (!n.arg("weight").is_none()) inputs.push_back(ctx.tensor(n, "weight"));
    const DataType dtype = ctx.net().tensor(x).dtype;
    // torch.finfo(dtype).eps of the input when eps is None.
    const double eps = !n.arg("eps").is_none()        ? n.arg("eps").as_double()
                       : dtype == DataType::kFloat16  ? 0.0009765625
                       : dtype == DataType::kBFloat16 ? 0.0078125
                                                      : 1.1920928955078125e-07;
    Attributes attrs;
    attrs.set("normalized_ndim", static_cast<int64_t>(ints_arg(n, "normalized_shape").size()))
        .set("eps", eps);
    ctx.set_output(n, 0, ctx.add(n, "rms_norm", inputs, attrs).outputs[0]);
  };
  rms.limits = "floating dtypes; eps None is the input dtype's epsilon";
  register_converter(std::move(rms));

  register_softmax("aten._softmax.default", false);
  register_softmax("aten._log_softmax.default", true);
});

}  // namespace kiln
