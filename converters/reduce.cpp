// Reductions over dims: aten.mean.dim, aten.sum.dim_IntList -> reduce; aten.any -> reduce max.
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

void register_reduction(const std::string& target, const std::string& op) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (!n.arg("dtype").is_none()) return "a dtype argument is not supported";
    const Arg& dim = n.arg("dim");
    if (!dim.is_none() && !dim.is_int_list()) return "dim must be a constant int list";
    return require_floating(value_arg(g, n, "self"), "self");
  };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    const Arg& dim = n.arg("dim");
    Attributes attrs;
    attrs.set("op", op)
        .set("axes", dim.is_none() ? std::vector<int64_t>{} : dim.ints())
        .set("keepdim", int64_t{bool_arg(n, "keepdim")});
    ctx.set_output(n, 0, ctx.add(n, "reduce", {ctx.tensor(n, "self")}, attrs).outputs[0]);
  };
  c.limits = "constant dims; no dtype argument; floating dtypes";
  register_converter(std::move(c));
}

// any(x) = max(int32(x != 0)) != 0 over the dims: the reduce op has no bool form.
void register_any(const std::string& target) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (x.dtype == DataType::kInt8) return "int8 is not converted";
    if (const Arg* dim = n.find("dim"); dim && !dim->is_none()) int_arg(n, "dim");
    return "";
  };
  c.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = cast_to(ctx, n, ctx.tensor(n, "self"), DataType::kBool, "nonzero");
    x = cast_to(ctx, n, x, DataType::kInt32, "as_int");
    Attributes attrs;
    attrs.set("op", std::string("max"));
    if (const Arg* dim = n.find("dim"); dim && !dim->is_none()) {
      attrs.set("axes", std::vector<int64_t>{int_arg(n, "dim")})
          .set("keepdim", int64_t{bool_arg(n, "keepdim")});
    } else {
      attrs.set("axes", std::vector<int64_t>{});
    }
    TensorId r = ctx.add(n, "reduce", {x}, attrs, "max").outputs[0];
    ctx.set_output(n, 0, cast_to(ctx, n, r, DataType::kBool, "to_bool"));
  };
  c.limits = "all dims, or one constant dim; as max over int32(x != 0)";
  register_converter(std::move(c));
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  register_reduction("aten.mean.dim", "mean");
  register_reduction("aten.sum.dim_IntList", "sum");
  register_any("aten.any.default");
  register_any("aten.any.dim");
});

}  // namespace kiln
