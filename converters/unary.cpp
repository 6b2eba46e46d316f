// Pointwise math on one tensor: aten.exp / log / sqrt / rsqrt / abs / neg / erf / sin / cos /
// reciprocal / floor / ceil / round / sign / tan / asin / acos / atan / sinh / cosh / asinh / acosh /
// atanh / expm1 / log1p / log2 / log10 -> unary layers (the rounding ops are identities on
// integers); trunc -> where(x < 0, ceil, floor); isinf -> |x| == inf; isnan -> x != x;
// logical_not -> x == 0; bitwise_not -> not (bool) or -x - 1 (integers, two's complement).
#include <limits>

#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// Integer and bool inputs of the floating functions compute in the output's floating dtype
// (torch.sin(int tensor) is float32), as torch promotes them.
void register_unary(const std::string& target, const std::string& op, bool integers) {
  Converter c;
  c.target = target;
  c.capability = [integers](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (is_floating(x.dtype) || (integers && is_integer(x.dtype))) return "";
    if ((is_integer(x.dtype) || x.dtype == DataType::kBool) && is_floating(output_dtype(g, n))) return "";
    return require_floating(x, "self");
  };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const DataType out = output_dtype(ctx.graph(), n);
    if (ctx.net().tensor(x).dtype != out) x = cast_to(ctx, n, x, out, "promoted");
    ctx.set_output(n, 0, unary(ctx, n, op, x, ""));
  };
  c.limits = integers ? "floating dtypes, int32, int64" : "floating dtypes (integer and bool inputs promote)";
  register_converter(std::move(c));
}

// A bool tensor of x's shape, all false (integers are never infinite or NaN).
TensorId all_false(ConversionContext& ctx, const KNode& n, TensorId x) {
  TensorId shape = ctx.add(n, "shape", {x}, {}, "shape").outputs[0];
  return ctx.add(n, "fill", {shape}, Attributes().set("dtype", std::string("bool"))).outputs[0];
}

std::string numeric(const KValue& x) {
  if (is_floating(x.dtype) || is_integer(x.dtype)) return "";
  return std::string("self has dtype ") + dtype_name(x.dtype) + ", needs a floating or int32/int64 dtype";
}

// floor / ceil / round / trunc: integers are already whole (torch returns them unchanged).
void register_rounding(const std::string& target, const std::string& op) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (const Arg* decimals = n.find("decimals"); decimals && int_arg(n, "decimals") != 0)
      return "decimals other than 0 are not converted";
    return numeric(value_arg(g, n, "self"));
  };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    if (!is_floating(ctx.net().tensor(x).dtype)) {
      ctx.set_output(n, 0, ctx.add(n, "identity", {x}).outputs[0]);
    } else if (op == "trunc") {
      TensorId negative =
          binary(ctx, n, "lt", x, constant_of(ctx, n, 0.0, ctx.net().tensor(x).dtype, "zero"), "neg");
      std::vector<TensorId> in = {negative, unary(ctx, n, "ceil", x, "ceil"),
                                  unary(ctx, n, "floor", x, "floor")};
      ctx.set_output(n, 0, ctx.add(n, "where", in).outputs[0]);
    } else {
      ctx.set_output(n, 0, unary(ctx, n, op, x, ""));
    }
  };
  c.limits = op == "round" ? "half to even; decimals = 0; integers unchanged" : "integers unchanged";
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
  for (const char* op : {"tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "expm1",
                         "log1p", "log2", "log10"}) {
    register_unary(std::string("aten.") + op + ".default", op, false);
  }

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
      ctx.set_output(n, 0, all_false(ctx, n, x));
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

  register_rounding("aten.floor.default", "floor");
  register_rounding("aten.ceil.default", "ceil");
  register_rounding("aten.round.default", "round");
  register_rounding("aten.round.decimals", "round");
  register_rounding("aten.trunc.default", "trunc");

  Converter sign;
  sign.target = "aten.sign.default";
  sign.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    return x.dtype == DataType::kBool ? "" : numeric(x);
  };
  sign.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const bool boolean = ctx.net().tensor(x).dtype == DataType::kBool;  // sign(b) = b
    ctx.set_output(n, 0, boolean ? ctx.add(n, "identity", {x}).outputs[0] : unary(ctx, n, "sign", x, ""));
  };
  sign.limits = "floating, int32, int64 or bool (sign(0) = 0; NaN stays NaN)";
  register_converter(std::move(sign));

  // isnan(x) = x != x.
  Converter isnan;
  isnan.target = "aten.isnan.default";
  isnan.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    return x.dtype == DataType::kBool ? "" : numeric(x);
  };
  isnan.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    ctx.set_output(
        n, 0, is_floating(ctx.net().tensor(x).dtype) ? binary(ctx, n, "ne", x, x, "") : all_false(ctx, n, x));
  };
  isnan.limits = "floating dtypes (x != x); integer and bool inputs give false";
  register_converter(std::move(isnan));

  // logical_not(x) = (x == 0), as bool.
  Converter logical_not;
  logical_not.target = "aten.logical_not.default";
  logical_not.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (output_used(n, 0) && output_dtype(g, n) != DataType::kBool) return "only a bool result is converted";
    return x.dtype == DataType::kBool ? "" : numeric(x);
  };
  logical_not.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const DataType dtype = ctx.net().tensor(x).dtype;
    ctx.set_output(n, 0,
                   dtype == DataType::kBool
                       ? unary(ctx, n, "not", x, "")
                       : binary(ctx, n, "eq", x, constant_of(ctx, n, 0.0, dtype, "zero"), ""));
  };
  logical_not.limits = "any floating, integer or bool input; bool result";
  register_converter(std::move(logical_not));

  // bitwise_not: not on bool; ~x = -x - 1 on integers (two's complement, exact).
  Converter bitwise_not;
  bitwise_not.target = "aten.bitwise_not.default";
  bitwise_not.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (x.dtype == DataType::kBool || is_integer(x.dtype)) return "";
    return std::string("self has dtype ") + dtype_name(x.dtype) + ", needs bool, int32 or int64";
  };
  bitwise_not.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const DataType dtype = ctx.net().tensor(x).dtype;
    if (dtype == DataType::kBool) {
      ctx.set_output(n, 0, unary(ctx, n, "not", x, ""));
      return;
    }
    TensorId negated = unary(ctx, n, "neg", x, "neg");
    ctx.set_output(n, 0, binary(ctx, n, "sub", negated, constant_of(ctx, n, 1.0, dtype, "one"), ""));
  };
  bitwise_not.limits = "bool, int32, int64";
  register_converter(std::move(bitwise_not));
});

}  // namespace kiln
