// Binary arithmetic: aten add/sub/mul/div/minimum/maximum, comparisons, bitwise and/or/xor on
// bool, where, clamp with tensor bounds, all with torch type promotion (a number operand becomes a
// constant of the promoted dtype) and Python's operator.add/sub/mul/floordiv on symbolic sizes (host scalars,
// evaluated through tracked shape values).
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// Arithmetic follows torch type promotion (result_type over self and other): tensor operands of
// another dtype get a cast, numbers become constants of the compute dtype. div computes in the
// result's floating dtype (true division, so int / int is float as in torch).
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
  if (common == DataType::kBool) return "bool arithmetic is not converted";
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
    ctx.set_output(n, 0, ctx.add(n, "elementwise", {a, b}, Attributes().set("op", op)).outputs[0]);
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
    if (common == DataType::kBool && op != "eq" && op != "ne") return "bool tensors only compare eq/ne";
    return "";
  };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    const DataType dtype = result_type(ctx.graph(), n, {"self", "other"});
    TensorId a = operand_as(ctx, n, "self", dtype);
    TensorId b = operand_as(ctx, n, "other", dtype);
    ctx.set_output(n, 0, ctx.add(n, "elementwise", {a, b}, Attributes().set("op", op)).outputs[0]);
  };
  c.limits = "operands promoted to their common dtype (torch.result_type); result bool";
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
    return require_floating(self, "self");
  };
  pow.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId a = ctx.tensor(n, "self");
    TensorId b = ctx.scalar_or_tensor(n, "exponent", ctx.net().tensor(a).dtype);
    ctx.set_output(n, 0,
                   ctx.add(n, "elementwise", {a, b}, Attributes().set("op", std::string("pow"))).outputs[0]);
  };
  pow.limits = "a number exponent; floating dtypes";
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

  // clamp(x, min, max) = min(max(x, lo), hi) in the promoted dtype of x, min and max.
  Converter clamp;
  clamp.target = "aten.clamp.Tensor";
  clamp.capability = [](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    if (n.arg("min").is_none() && n.arg("max").is_none()) return "needs min or max";
    const DataType common = result_type(g, n, {"self", "min", "max"});
    if (common == DataType::kBool || common == DataType::kInt8)
      return std::string(dtype_name(common)) + " is not converted";
    return "";
  };
  clamp.convert = [](ConversionContext& ctx, const KNode& n) {
    const DataType dtype = result_type(ctx.graph(), n, {"self", "min", "max"});
    TensorId x = operand_as(ctx, n, "self", dtype);
    for (const char* bound : {"min", "max"}) {
      if (n.arg(bound).is_none()) continue;
      TensorId b = operand_as(ctx, n, bound, dtype);
      const std::string op = std::string(bound) == "min" ? "max" : "min";
      x = ctx.add(n, "elementwise", {x, b}, Attributes().set("op", op), bound).outputs[0];
    }
    ctx.set_output(n, 0, x);
  };
  clamp.limits = "tensor bounds (either may be None); torch type promotion (casts inserted)";
  register_converter(std::move(clamp));
});

}  // namespace kiln
