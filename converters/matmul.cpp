// Matrix products: aten.mm / bmm / matmul -> matmul; aten.addmm -> matmul + add.
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// Operands are promoted to their common dtype first (torch.result_type), which must be floating.
std::string floating_operands(const KGraph& g, const KNode& n, const std::vector<std::string>& names) {
  for (const std::string& name : names) value_arg(g, n, name);
  const DataType common = result_type(g, n, names);
  if (!is_floating(common))
    return std::string("operands promote to ") + dtype_name(common) + ", needs a floating dtype";
  return "";
}

void register_product(const std::string& target, const std::string& a, const std::string& b,
                      const std::string& limits) {
  Converter c;
  c.target = target;
  c.capability = [a, b](const KGraph& g, const KNode& n) { return floating_operands(g, n, {a, b}); };
  c.convert = [a, b](ConversionContext& ctx, const KNode& n) {
    const DataType dtype = result_type(ctx.graph(), n, {a, b});
    ctx.set_output(
        n, 0, ctx.add(n, "matmul", {operand_as(ctx, n, a, dtype), operand_as(ctx, n, b, dtype)}).outputs[0]);
  };
  c.limits = limits;
  register_converter(std::move(c));
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  const std::string promoted = "floating dtypes (mixed operands promoted, casts inserted)";
  register_product("aten.mm.default", "self", "mat2", promoted);
  register_product("aten.bmm.default", "self", "mat2", promoted);
  register_product("aten.matmul.default", "self", "other", promoted + "; broadcasting batch dims");

  Converter addmm;
  addmm.target = "aten.addmm.default";
  addmm.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (n.arg("beta").as_double() != 1.0 || n.arg("alpha").as_double() != 1.0)
      return "beta and alpha must be 1";
    return floating_operands(g, n, {"self", "mat1", "mat2"});
  };
  addmm.convert = [](ConversionContext& ctx, const KNode& n) {
    const DataType dtype = result_type(ctx.graph(), n, {"self", "mat1", "mat2"});
    TensorId product =
        ctx.add(n, "matmul", {operand_as(ctx, n, "mat1", dtype), operand_as(ctx, n, "mat2", dtype)}, {}, "mm")
            .outputs[0];
    TensorId sum =
        ctx.add(n, "elementwise", {product, operand_as(ctx, n, "self", dtype)}, Attributes().set("op", "add"))
            .outputs[0];
    ctx.set_output(n, 0, sum);
  };
  addmm.limits = "beta = alpha = 1; floating dtypes (mixed operands promoted, casts inserted)";
  register_converter(std::move(addmm));
});

}  // namespace kiln
