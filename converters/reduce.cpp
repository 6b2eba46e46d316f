// Reductions over dims: aten.mean.dim, aten.sum.dim_IntList -> reduce.
#include "converters/converter_util.h"
#include "converters/families.h"

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

}  // namespace

void register_reduce_converters() {
  register_reduction("aten.mean.dim", "mean");
  register_reduction("aten.sum.dim_IntList", "sum");
}

}  // namespace kiln
