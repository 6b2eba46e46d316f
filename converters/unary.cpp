// Pointwise math on one tensor: aten.exp / log / sqrt / rsqrt / abs / neg / erf / sin / cos /
// reciprocal -> unary layers.
#include "converters/converter_util.h"
#include "converters/families.h"

namespace kiln {
namespace {

void register_unary(const std::string& target, const std::string& op, bool integers) {
  Converter c;
  c.target = target;
  c.capability = [integers](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (integers && (x.dtype == DataType::kInt32 || x.dtype == DataType::kInt64)) return "";
    return require_floating(x, "self");
  };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    ctx.set_output(n, 0, ctx.add(n, "unary", {ctx.tensor(n, "self")}, Attributes().set("op", op)).outputs[0]);
  };
  c.limits = integers ? "floating dtypes, int32, int64" : "floating dtypes";
  register_converter(std::move(c));
}

}  // namespace

void register_unary_converters() {
  register_unary("aten.exp.default", "exp", false);
  register_unary("aten.log.default", "log", false);
  register_unary("aten.sqrt.default", "sqrt", false);
  register_unary("aten.rsqrt.default", "rsqrt", false);
  register_unary("aten.erf.default", "erf", false);
  register_unary("aten.sin.default", "sin", false);
  register_unary("aten.cos.default", "cos", false);
  register_unary("aten.reciprocal.default", "reciprocal", false);
  register_unary("aten.abs.default", "abs", true);
  register_unary("aten.neg.default", "neg", true);
}

}  // namespace kiln
