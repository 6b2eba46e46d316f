// Binary arithmetic: aten add/sub/rsub/mul/div (also with rounding modes)/pow/minimum/maximum,
// remainder/fmod on integers, comparisons, bitwise and/or/xor on bool, logical and/or/xor, where,
// masked_fill, clamp with tensor bounds and clamp_min/clamp_max, all with torch type promotion (a number
// operand becomes a constant of the promoted dtype) and Python's operator.add/sub/mul/floordiv on symbolic
// sizes (host scalars, evaluated through tracked shape values).
#include <limits>

#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// Arithmetic follows torch type promotion (result_type over self and other): tensor operands of
// another dtype get a cast, numbers become constants of the compute dtype. div computes in the
// result's floating dtype (true division, so int / int is float as in torch).
// torch's arithmetic on bool tensors: mul is logical and, add logical or ("" when not defined).
std::string bool_op(const std::string& op) {
  if (op == "mul") return "and";
  if (op == "add") return "or";
  return "";
}

std::string arithmetic_operands(const KGraph& g, const KNode& n, const std::string& op) {
  const Arg& self = n.arg("self");
  const Arg& other = n.arg("other");
  if (!self.is_value() && !other.is_value()) return "one operand must be a tensor";
  if (const Arg* alpha = n.find("alpha"); alpha && alpha->is_number() && alpha->as_double() != 1.0) {
    return "alpha other than 1 is not supported";
  }
  const DataType common = result_type(g, n, {"self", "other"});
  const DataType out = n.outputs.at(0) == kNoValue ? common : g.value(n.outputs[0]).dtype;
  if (op == "div" ? !is_floating(out) : out != common) {
    return std::string("result dtype ") + dtype_name(out) + " is not the promoted dtype " +
           dtype_name(common);
  }
  if (common == DataType::kBool && bool_op(op).empty()) return "bool " + op + " is not converted";
  if (common == DataType::kInt8) return "int8 arithmetic is not converted";
  return "";
}

void register_tensor_op(const std::string& target, const std::string& op, const std::string& limits) {
  Converter c;
  c.target = target;
  c.capability = [op](const KGraph& g, const KNode& n) { return arithmetic_operands(g, n, op); };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    DataType dtype = result_type(ctx.graph(), n, {"self", "other"});
    if (op == "div" && !is_floating(dtype)) dtype = ctx.graph().value(n.outputs.at(0)).dtype;
    TensorId a = operand_as(ctx, n, "self", dtype);  // 1 - x: a number self is a constant too
    TensorId b = operand_as(ctx, n, "other", dtype);
    const std::string engine_op = dtype == DataType::kBool ? bool_op(op) : op;
    ctx.set_output(n, 0, ctx.add(n, "elementwise", {a, b}, Attributes().set("op", engine_op)).outputs[0]);
  };
  c.limits = limits;
  register_converter(std::move(c));
}

void register_host_scalar_op(const std::string& target, const std::string& op) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    for (const char* name : {"a", "b"}) {
      const Arg& a = n.arg(name);
      if (a.is_value() ? !g.value(a.value).host_scalar : a.kind != Arg::Kind::kInt) {
        return std::string("operand ") + name + " is not an integer size";
      }
    }
    return "";
  };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    TensorId a = ctx.scalar_or_tensor(n, "a", DataType::kInt64);
    TensorId b = ctx.scalar_or_tensor(n, "b", DataType::kInt64);
    ctx.set_output(n, 0, ctx.add(n, "elementwise", {a, b}, Attributes().set("op", op)).outputs[0]);
  };
  c.limits = "symbolic integer sizes (evaluated as tracked shape values)";
  register_converter(std::move(c));
}

// Comparisons give bool; operands are promoted to their common dtype first (torch.result_type).
void register_compare(const std::string& target, const std::string& op) {
  Converter c;
  c.target = target;
  c.capability = [op](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    const DataType common = result_type(g, n, {"self", "other"});
    if (common == DataType::kInt8) return "int8 operands are not converted";
    return "";
  };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    DataType dtype = result_type(ctx.graph(), n, {"self", "other"});
    if (dtype == DataType::kBool && op != "eq" && op != "ne") dtype = DataType::kInt32;  // false < true
    TensorId a = operand_as(ctx, n, "self", dtype);
    TensorId b = operand_as(ctx, n, "other", dtype);
    ctx.set_output(n, 0, ctx.add(n, "elementwise", {a, b}, Attributes().set("op", op)).outputs[0]);
  };
  c.limits = "operands promoted to their common dtype (torch.result_type; bools order as 0 < 1); result bool";
  register_converter(std::move(c));
}

// Binary ops whose result is the promoted dtype: minimum / maximum (-> elementwise min / max) and
// bitwise_and / or / xor on bool (-> elementwise and / or / xor).
void register_promoted_binary(const std::string& target, const std::string& op, bool bool_only,
                              const std::string& limits) {
  Converter c;
  c.target = target;
  c.capability = [bool_only](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    const DataType common = result_type(g, n, {"self", "other"});
    if (bool_only && common != DataType::kBool) return "only bool operands are converted";
    if (!bool_only && (common == DataType::kBool || common == DataType::kInt8))
      return std::string(dtype_name(common)) + " operands are not converted";
    return "";
  };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    const DataType dtype = result_type(ctx.graph(), n, {"self", "other"});
    TensorId a = operand_as(ctx, n, "self", dtype);
    TensorId b = operand_as(ctx, n, "other", dtype);
    ctx.set_output(n, 0, ctx.add(n, "elementwise", {a, b}, Attributes().set("op", op)).outputs[0]);
  };
  c.limits = limits;
  register_converter(std::move(c));
}

// clamp family: x bounded by each of `bounds` ("min": max(x, lo), "max": min(x, hi)) in the
// promoted dtype of x and the bounds; a None bound is skipped.
void register_clamp(const std::string& target, const std::vector<std::string>& bounds,
                    const std::string& limits) {
  Converter c;
  c.target = target;
  c.capability = [bounds](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    std::vector<std::string> names = {"self"};
    for (const std::string& b : bounds) {
      if (!n.arg(b).is_none()) names.push_back(b);
    }
    if (names.size() == 1) return "needs min or max";
    const DataType common = result_type(g, n, names);
    if (common == DataType::kBool || common == DataType::kInt8)
      return std::string(dtype_name(common)) + " is not converted";
    return "";
  };
  c.convert = [bounds](ConversionContext& ctx, const KNode& n) {
    std::vector<std::string> names = {"self"};
    for (const std::string& b : bounds) {
      if (!n.arg(b).is_none()) names.push_back(b);
    }
    const DataType dtype = result_type(ctx.graph(), n, names);
    TensorId x = operand_as(ctx, n, "self", dtype);
    bool number_bounds = is_floating(dtype);
    for (size_t k = 1; k < names.size(); ++k) number_bounds = number_bounds && n.arg(names[k]).is_number();
    if (number_bounds) {  // one clip activation (fuses into the producer's epilogue)
      const double inf = std::numeric_limits<double>::infinity();
      const Arg* lo = n.find("min");
      const Arg* hi = n.find("max");
      Attributes attrs;
      attrs.set("type", std::string("clip"))
          .set("alpha", lo && !lo->is_none() ? lo->as_double() : -inf)
          .set("beta", hi && !hi->is_none() ? hi->as_double() : inf);
      ctx.set_output(n, 0, ctx.add(n, "activation", {x}, attrs).outputs[0]);
      return;
    }
    for (size_t k = 1; k < names.size(); ++k) {
      TensorId b = operand_as(ctx, n, names[k], dtype);
      x = binary(ctx, n, names[k] == "min" ? "max" : "min", x, b, names[k]);
    }
    ctx.set_output(n, 0, x);
  };
  c.limits = limits;
  register_converter(std::move(c));
}

// Floating or int32/int64 promoted operands ("" when they convert).
std::string numeric_operands(const KGraph& g, const KNode& n, const std::vector<std::string>& names) {
  const DataType common = result_type(g, n, names);
  if (is_floating(common) || is_integer(common)) return "";
  return std::string(dtype_name(common)) + " operands are not converted";
}

// div with rounding_mode: integers use the elementwise div (truncating) and floor_div; floats
// round the true quotient (floor(a / b) can differ from torch by one where a / b rounds onto a
// whole number, as with every engine that divides first).
void register_div_mode(const std::string& target) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    const Arg& mode = n.arg("rounding_mode");
    if (!mode.is_none() && mode.s != "trunc" && mode.s != "floor")
      return "unknown rounding_mode " + mode.describe();
    if (mode.is_none() && output_used(n, 0) && !is_floating(output_dtype(g, n)))
      return "integer true division";
    return numeric_operands(g, n, {"self", "other"});
  };
  c.convert = [](ConversionContext& ctx, const KNode& n) {
    const Arg& mode = n.arg("rounding_mode");
    DataType dtype = result_type(ctx.graph(), n, {"self", "other"});
    if (mode.is_none()) dtype = output_dtype(ctx.graph(), n);
    TensorId a = operand_as(ctx, n, "self", dtype);
    TensorId b = operand_as(ctx, n, "other", dtype);
    if (mode.is_none()) {
      ctx.set_output(n, 0, binary(ctx, n, "div", a, b, ""));
    } else if (is_integer(dtype)) {
      ctx.set_output(n, 0, binary(ctx, n, mode.s == "floor" ? "floor_div" : "div", a, b, ""));
    } else {
      TensorId q = binary(ctx, n, "div", a, b, "quotient");
      TensorId floor =
          ctx.add(n, "unary", {q}, Attributes().set("op", std::string("floor")), "floor").outputs[0];
      if (mode.s == "floor") {
        ctx.set_output(n, 0, floor);
        return;
      }
      TensorId ceil =
          ctx.add(n, "unary", {q}, Attributes().set("op", std::string("ceil")), "ceil").outputs[0];
      TensorId negative = binary(ctx, n, "lt", q, constant_of(ctx, n, 0.0, dtype, "zero"), "negative");
      ctx.set_output(n, 0, ctx.add(n, "where", {negative, ceil, floor}).outputs[0]);
    }
  };
  c.limits = "rounding_mode None, trunc or floor; floating, int32 or int64 (integers exact)";
  register_converter(std::move(c));
}

// remainder (floor_div: the sign of the divisor) and fmod (div, truncating: the sign of the
// dividend) as a - (a op b) * b on integers, where it is exact. Floats need an exact fmod kernel
// (a - trunc(a / b) * b loses every digit once |a / b| is large), not there yet.
void register_remainder(const std::string& target, const std::string& div_op) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    const DataType common = result_type(g, n, {"self", "other"});
    if (is_integer(common)) return "";
    return std::string(dtype_name(common)) +
           " operands: only int32/int64 are converted (floats need an exact fmod)";
  };
  c.convert = [div_op](ConversionContext& ctx, const KNode& n) {
    const DataType dtype = result_type(ctx.graph(), n, {"self", "other"});
    TensorId a = operand_as(ctx, n, "self", dtype);
    TensorId b = operand_as(ctx, n, "other", dtype);
    TensorId q = binary(ctx, n, div_op, a, b, "quotient");
    ctx.set_output(n, 0, binary(ctx, n, "sub", a, binary(ctx, n, "mul", q, b, "product"), ""));
  };
  c.limits = "int32/int64 operands (exact; a zero divisor gives 0 instead of raising)";
  register_converter(std::move(c));
}

// pow with a tensor exponent (pow.Tensor_Tensor; pow.Scalar: a number base), floating results.
void register_pow(const std::string& target, const std::string& base, const std::string& exponent) {
  Converter c;
  c.target = target;
  c.capability = [base, exponent](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, exponent);
    const DataType common = result_type(g, n, {base, exponent});
    if (!is_floating(common))
      return std::string(dtype_name(common)) + " pow is not converted (floating only)";
    return "";
  };
  c.convert = [base, exponent](ConversionContext& ctx, const KNode& n) {
    const DataType dtype = result_type(ctx.graph(), n, {base, exponent});
    TensorId a = operand_as(ctx, n, base, dtype);
    TensorId b = operand_as(ctx, n, exponent, dtype);
    ctx.set_output(n, 0, binary(ctx, n, "pow", a, b, ""));
  };
  c.limits = "floating results (torch type promotion)";
  register_converter(std::move(c));
}

// logical_and / or / xor: both operands as bool (nonzero), then and / or / xor.
void register_logical(const std::string& target, const std::string& op) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    for (const char* name : {"self", "other"}) {
      const DataType t = value_arg(g, n, name).dtype;
      if (t == DataType::kInt8) return "int8 is not converted";
    }
    if (output_used(n, 0) && output_dtype(g, n) != DataType::kBool) return "only a bool result is converted";
    return "";
  };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    TensorId a = cast_to(ctx, n, ctx.tensor(n, "self"), DataType::kBool, "self_bool");
    TensorId b = cast_to(ctx, n, ctx.tensor(n, "other"), DataType::kBool, "other_bool");
    ctx.set_output(n, 0, binary(ctx, n, op, a, b, ""));
  };
  c.limits = "any dtypes (nonzero is true); bool result";
  register_converter(std::move(c));
}

// rsub(self, other, alpha = 1) = other - self.
void register_rsub(const std::string& target) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    return arithmetic_operands(g, n, "sub");
  };
  c.convert = [](ConversionContext& ctx, const KNode& n) {
    const DataType dtype = result_type(ctx.graph(), n, {"self", "other"});
    TensorId a = operand_as(ctx, n, "self", dtype);
    TensorId b = operand_as(ctx, n, "other", dtype);
    ctx.set_output(n, 0, binary(ctx, n, "sub", b, a, ""));
  };
  c.limits = "torch type promotion (casts inserted); alpha = 1";
  register_converter(std::move(c));
}

// masked_fill(self, mask, value) = where(mask, value, self) in self's dtype.
void register_masked_fill(const std::string& target) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (value_arg(g, n, "mask").dtype != DataType::kBool) return "mask must be bool";
    const Arg& value = n.arg("value");
    if (value.is_value() && !g.value(value.value).dims.empty()) return "value must be a 0-d tensor";
    if (x.dtype == DataType::kInt8) return "int8 is not converted";
    return "";
  };
  c.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const DataType dtype = ctx.net().tensor(x).dtype;
    TensorId value = operand_as(ctx, n, "value", dtype);
    ctx.set_output(n, 0, ctx.add(n, "where", {ctx.tensor(n, "mask"), value, x}).outputs[0]);
  };
  c.limits = "bool mask; a number or 0-d tensor value, cast to self's dtype";
  register_converter(std::move(c));
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  const std::string same_dtype = "torch type promotion (casts inserted); a number operand becomes a constant";
  register_tensor_op("aten.add.Tensor", "add", same_dtype + "; alpha = 1");
  register_tensor_op("aten.sub.Tensor", "sub", same_dtype + "; alpha = 1");
  register_tensor_op("aten.mul.Tensor", "mul", same_dtype);
  register_tensor_op("aten.div.Tensor", "div", same_dtype + "; true division (rounding_mode None)");
  register_tensor_op("aten.add.Scalar", "add", same_dtype + "; alpha = 1");
  register_tensor_op("aten.sub.Scalar", "sub", same_dtype + "; alpha = 1");
  register_tensor_op("aten.mul.Scalar", "mul", same_dtype);
  register_tensor_op("aten.div.Scalar", "div", same_dtype + "; true division (rounding_mode None)");
  for (const char* op : {"eq", "ne", "lt", "le", "gt", "ge"}) {
    register_compare(std::string("aten.") + op + ".Tensor", op);
    register_compare(std::string("aten.") + op + ".Scalar", op);
  }

  Converter pow;
  pow.target = "aten.pow.Tensor_Scalar";
  pow.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& self = value_arg(g, n, "self");
    if (!n.arg("exponent").is_number()) return "exponent must be a number";
    const DataType out = output_dtype(g, n);
    if (is_floating(out))
      return is_floating(self.dtype) || is_integer(self.dtype) || self.dtype == DataType::kBool
                 ? ""
                 : require_floating(self, "self");
    if (!is_integer(out) || !is_integer(self.dtype)) return "integer pow needs integer self";
    if (n.arg("exponent").kind != Arg::Kind::kInt || n.arg("exponent").i < 0)
      return "an integer base takes a non-negative integer exponent";
    return "";
  };
  pow.convert = [](ConversionContext& ctx, const KNode& n) {
    const DataType out = output_dtype(ctx.graph(), n);
    TensorId a = cast_to(ctx, n, ctx.tensor(n, "self"), out, "self_cast");  // int ** 0.5 is float
    TensorId b = ctx.scalar_or_tensor(n, "exponent", out);
    ctx.set_output(n, 0,
                   ctx.add(n, "elementwise", {a, b}, Attributes().set("op", std::string("pow"))).outputs[0]);
  };
  pow.limits = "a number exponent; floating results, or integers to a non-negative integer power (exact)";
  register_converter(std::move(pow));

  Converter where;
  where.target = "aten.where.self";
  where.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (value_arg(g, n, "condition").dtype != DataType::kBool) return "condition must be bool";
    value_arg(g, n, "self");
    value_arg(g, n, "other");
    result_type(g, n, {"self", "other"});
    return "";
  };
  where.convert = [](ConversionContext& ctx, const KNode& n) {
    const DataType dtype = result_type(ctx.graph(), n, {"self", "other"});
    std::vector<TensorId> in = {ctx.tensor(n, "condition"), operand_as(ctx, n, "self", dtype),
                                operand_as(ctx, n, "other", dtype)};
    ctx.set_output(n, 0, ctx.add(n, "where", in).outputs[0]);
  };
  where.limits = "bool condition; self and other promoted to their common dtype";
  register_converter(std::move(where));

  register_host_scalar_op("_operator.add", "add");
  register_host_scalar_op("_operator.sub", "sub");
  register_host_scalar_op("_operator.mul", "mul");
  register_host_scalar_op("_operator.floordiv", "floor_div");

  register_promoted_binary("aten.minimum.default", "min", false,
                           "torch type promotion (casts inserted); not bool");
  register_promoted_binary("aten.maximum.default", "max", false,
                           "torch type promotion (casts inserted); not bool");
  register_promoted_binary("aten.bitwise_and.Tensor", "and", true, "bool operands");
  register_promoted_binary("aten.bitwise_or.Tensor", "or", true, "bool operands");
  register_promoted_binary("aten.bitwise_xor.Tensor", "xor", true, "bool operands");

  register_clamp("aten.clamp.default", {"min", "max"},
                 "number bounds (either may be None); torch type promotion; floating: one clip activation");
  register_clamp("aten.clamp.Tensor", {"min", "max"},
                 "tensor bounds (either may be None); torch type promotion (casts inserted)");
  register_clamp("aten.clamp_min.default", {"min"}, "torch type promotion (casts inserted)");
  register_clamp("aten.clamp_max.default", {"max"}, "torch type promotion (casts inserted)");
  register_clamp("aten.clamp_min.Tensor", {"min"}, "torch type promotion (casts inserted)");
  register_clamp("aten.clamp_max.Tensor", {"max"}, "torch type promotion (casts inserted)");

  for (const char* mode : {"Tensor_mode", "Scalar_mode"}) register_div_mode(std::string("aten.div.") + mode);
  register_remainder("aten.remainder.Tensor", "floor_div");
  register_remainder("aten.remainder.Scalar", "floor_div");
  register_remainder("aten.fmod.Tensor", "div");
  register_remainder("aten.fmod.Scalar", "div");

  register_pow("aten.pow.Tensor_Tensor", "self", "exponent");
  register_pow("aten.pow.Scalar", "self", "exponent");

  register_promoted_binary("aten.bitwise_and.Scalar", "and", true, "bool operands");
  register_promoted_binary("aten.bitwise_or.Scalar", "or", true, "bool operands");
  register_promoted_binary("aten.bitwise_xor.Scalar", "xor", true, "bool operands");
  register_logical("aten.logical_and.default", "and");
  register_logical("aten.logical_or.default", "or");
  register_logical("aten.logical_xor.default", "xor");

  register_rsub("aten.rsub.Tensor");
  register_rsub("aten.rsub.Scalar");
  register_masked_fill("aten.masked_fill.Scalar");
  register_masked_fill("aten.masked_fill.Tensor");
});

}  // namespace kiln
