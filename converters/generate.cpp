// Generators: aten.arange.start_step -> arange; aten.full / aten.full_like -> fill. The result dtype
// is the one torch.export recorded for the node's output (torch's default-dtype rules applied).
// Symbolic sizes (an arange end, a full size list, full_like's input shape) become tracked shape
// values, so the output follows dynamic dims.
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// A number argument as an attribute value: ints stay exact, floats stay floats.
AttrValue number_attr(const Arg& a) {
  if (a.kind == Arg::Kind::kFloat) return a.f;
  return a.i;
}

std::string output_dtype_ok(const KGraph& g, const KNode& n) {
  if (n.outputs.empty() || n.outputs[0] == kNoValue) return "";
  if (g.value(n.outputs[0]).dtype == DataType::kInt8) return "int8 is not converted";
  return "";
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter arange;
  arange.target = "aten.arange.start_step";
  arange.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (!n.arg("start").is_number()) return "start must be a constant number";
    if (!n.arg("step").is_number()) return "step must be a constant number";
    const Arg& end = n.arg("end");
    if (end.is_value() ? !g.value(end.value).host_scalar || g.value(end.value).dtype != DataType::kInt64
                       : !end.is_number())
      return "end must be a number or a symbolic integer size";
    if (n.outputs.at(0) != kNoValue && g.value(n.outputs[0]).dtype == DataType::kBool)
      return "bool is not converted";
    return output_dtype_ok(g, n);
  };
  arange.convert = [](ConversionContext& ctx, const KNode& n) {
    if (n.outputs.at(0) == kNoValue) return;
    Attributes attrs;
    attrs.set("start", number_attr(n.arg("start")))
        .set("step", number_attr(n.arg("step")))
        .set("dtype", std::string(dtype_name(output_dtype(ctx.graph(), n))));
    const Arg& end = n.arg("end");
    std::vector<TensorId> inputs;
    if (end.is_value()) {
      inputs.push_back(ctx.tensor(end.value));
    } else {
      attrs.set("end", number_attr(end));
    }
    ctx.set_output(n, 0, ctx.add(n, "arange", inputs, attrs).outputs[0]);
  };
  arange.limits = "constant start and step; end a number or a symbolic size";
  register_converter(std::move(arange));

  Converter full;
  full.target = "aten.full.default";
  full.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (!n.arg("fill_value").is_number()) return "fill_value must be a constant number";
    const Arg& size = n.arg("size");
    if (size.kind != Arg::Kind::kList) return "size must be a list";
    for (const Arg& e : size.list) {
      if (e.kind != Arg::Kind::kInt && !(e.is_value() && g.value(e.value).host_scalar))
        return "size entry " + e.describe() + " is not a size";
    }
    return output_dtype_ok(g, n);
  };
  full.convert = [](ConversionContext& ctx, const KNode& n) {
    if (n.outputs.at(0) == kNoValue) return;
    Attributes attrs;
    attrs.set("value", number_attr(n.arg("fill_value")))
        .set("dtype", std::string(dtype_name(output_dtype(ctx.graph(), n))));
    TensorId shape = ctx.size_tensor(n, "size");
    if (shape < 0) {
      attrs.set("shape", ints_arg(n, "size"));
      ctx.set_output(n, 0, ctx.add(n, "fill", {}, attrs).outputs[0]);
    } else {
      ctx.set_output(n, 0, ctx.add(n, "fill", {shape}, attrs).outputs[0]);
    }
  };
  full.limits = "a constant fill value; sizes: ints and symbolic sizes";
  register_converter(std::move(full));

  Converter full_like;
  full_like.target = "aten.full_like.default";
  full_like.capability = [](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    if (!n.arg("fill_value").is_number()) return "fill_value must be a constant number";
    return output_dtype_ok(g, n);
  };
  full_like.convert = [](ConversionContext& ctx, const KNode& n) {
    if (n.outputs.at(0) == kNoValue) return;
    TensorId x = ctx.tensor(n, "self");
    Attributes attrs;
    attrs.set("value", number_attr(n.arg("fill_value")))
        .set("dtype", std::string(dtype_name(output_dtype(ctx.graph(), n))));
    const Dims& dims = ctx.net().tensor(x).dims;
    if (is_static(dims)) {
      attrs.set("shape", std::vector<int64_t>(dims.begin(), dims.end()));
      ctx.set_output(n, 0, ctx.add(n, "fill", {}, attrs).outputs[0]);
    } else {
      TensorId shape = ctx.add(n, "shape", {x}, {}, "shape").outputs[0];
      ctx.set_output(n, 0, ctx.add(n, "fill", {shape}, attrs).outputs[0]);
    }
  };
  full_like.limits = "a constant fill value (memory_format ignored)";
  register_converter(std::move(full_like));
});

}  // namespace kiln
