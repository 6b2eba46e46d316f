// Matrix products: aten.mm / bmm / matmul -> matmul; aten.addmm -> matmul + add.
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

std::string floating_operands(const KGraph& g, const KNode& n, const char* a, const char* b) {
  std::string r = require_floating(value_arg(g, n, a), a);
  return r.empty() ? require_floating(value_arg(g, n, b), b) : r;
}

void register_product(const std::string& target, const char* a, const char* b, const std::string& limits) {
  Converter c;
  c.target = target;
  c.capability = [a, b](const KGraph& g, const KNode& n) { return floating_operands(g, n, a, b); };
  c.convert = [a, b](ConversionContext& ctx, const KNode& n) {
    ctx.set_output(n, 0, ctx.add(n, "matmul", {ctx.tensor(n, a), ctx.tensor(n, b)}).outputs[0]);
  };
  c.limits = limits;
  register_converter(std::move(c));
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  register_product("aten.mm.default", "self", "mat2", "floating dtypes");
  register_product("aten.bmm.default", "self", "mat2", "floating dtypes");
  register_product("aten.matmul.default", "self", "other", "floating dtypes; broadcasting batch dims");

  Converter addmm;
  addmm.target = "aten.addmm.default";
  addmm.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (n.arg("beta").as_double() != 1.0 || n.arg("alpha").as_double() != 1.0)
      return "beta and alpha must be 1";
    std::string r = floating_operands(g, n, "mat1", "mat2");
    return r.empty() ? require_floating(value_arg(g, n, "self"), "self") : r;
  };
  addmm.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId product =
        ctx.add(n, "matmul", {ctx.tensor(n, "mat1"), ctx.tensor(n, "mat2")}, {}, "mm").outputs[0];
    TensorId sum =
        ctx.add(n, "elementwise", {product, ctx.tensor(n, "self")}, Attributes().set("op", "add")).outputs[0];
    ctx.set_output(n, 0, sum);
  };
  addmm.limits = "beta = alpha = 1; floating dtypes";
  register_converter(std::move(addmm));
});

}  // namespace kiln
