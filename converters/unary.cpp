// Pointwise math on one tensor: aten.exp / log / sqrt / rsqrt / abs / neg / erf / sin / cos /
// reciprocal -> unary layers; aten.isinf -> |x| == inf.
#include <limits>

#include "converters/converter.h"
#include "converters/converter_util.h"

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

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
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

  // isinf(x) = |x| == inf (NaN compares unequal, as torch gives false).
  Converter isinf;
  isinf.target = "aten.isinf.default";
  isinf.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (x.dtype == DataType::kInt32 || x.dtype == DataType::kInt64 || x.dtype == DataType::kBool) return "";
    return require_floating(x, "self");
  };
  isinf.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const DataType dtype = ctx.net().tensor(x).dtype;
    if (!is_floating(dtype)) {  // integers are never infinite
      TensorId shape = ctx.add(n, "shape", {x}, {}, "shape").outputs[0];
      ctx.set_output(n, 0,
                     ctx.add(n, "fill", {shape}, Attributes().set("dtype", std::string("bool"))).outputs[0]);
      return;
    }
    TensorId a = ctx.add(n, "unary", {x}, Attributes().set("op", std::string("abs")), "abs").outputs[0];
    const float inf = std::numeric_limits<float>::infinity();
    TensorId c = ctx.net().add_constant(n.name + "/inf", DataType::kFloat32, {}, &inf, sizeof inf);
    c = cast_to(ctx, n, c, dtype, "inf_cast");
    ctx.set_output(n, 0,
                   ctx.add(n, "elementwise", {a, c}, Attributes().set("op", std::string("eq"))).outputs[0]);
  };
  isinf.limits = "floating dtypes (abs(x) == inf); integer and bool inputs give false";
  register_converter(std::move(isinf));
});

}  // namespace kiln
