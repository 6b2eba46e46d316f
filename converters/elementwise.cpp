// Binary arithmetic: aten add/sub/mul/div on tensors (a number operand becomes a constant of the
// tensor's dtype) and Python's operator.add/sub/mul/floordiv on symbolic sizes (host scalars,
// evaluated through tracked shape values).
#include "converters/converter_util.h"
#include "converters/families.h"

namespace kiln {
namespace {

// torch type promotion is not modelled: every tensor operand must already have the result dtype.
std::string same_dtype_operands(const KGraph& g, const KNode& n) {
  const Arg& self = n.arg("self");
  const Arg& other = n.arg("other");
  if (!self.is_value() && !other.is_value()) return "one operand must be a tensor";
  const DataType out =
      g.value(n.outputs.at(0) == kNoValue ? (self.is_value() ? self.value : other.value) : n.outputs[0])
          .dtype;
  for (const char* name : {"self", "other"}) {
    const Arg& a = n.arg(name);
    if (a.is_value() && g.value(a.value).dtype != out) {
      return std::string(name) + " has dtype " + dtype_name(g.value(a.value).dtype) + ", the result " +
             dtype_name(out) + " (type promotion is not converted)";
    }
    if (!a.is_value() && !a.is_number()) return std::string(name) + " must be a tensor or a number";
  }
  if (const Arg* alpha = n.find("alpha"); alpha && alpha->is_number() && alpha->as_double() != 1.0) {
    return "alpha other than 1 is not supported";
  }
  return "";
}

void register_tensor_op(const std::string& target, const std::string& op, const std::string& limits) {
  Converter c;
  c.target = target;
  c.capability = same_dtype_operands;
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    const ValueId tensor = n.arg("self").is_value() ? n.arg("self").value : n.arg("other").value;
    const DataType dtype = ctx.graph().value(tensor).dtype;
    TensorId a = ctx.scalar_or_tensor(n, "self", dtype);  // 1 - x: a number self is a constant too
    TensorId b = ctx.scalar_or_tensor(n, "other", dtype);
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

// Comparisons give bool; operands share a dtype (a number becomes a constant of self's dtype).
void register_compare(const std::string& target, const std::string& op) {
  Converter c;
  c.target = target;
  c.capability = [op](const KGraph& g, const KNode& n) -> std::string {
    const KValue& self = value_arg(g, n, "self");
    const Arg& other = n.arg("other");
    if (other.is_value() && g.value(other.value).dtype != self.dtype) return "operands differ in dtype";
    if (!other.is_value() && !other.is_number()) return "other must be a tensor or a number";
    if (self.dtype == DataType::kBool && op != "eq" && op != "ne") return "bool tensors only compare eq/ne";
    return "";
  };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    TensorId a = ctx.tensor(n, "self");
    TensorId b = ctx.scalar_or_tensor(n, "other", ctx.net().tensor(a).dtype);
    ctx.set_output(n, 0, ctx.add(n, "elementwise", {a, b}, Attributes().set("op", op)).outputs[0]);
  };
  c.limits = "operands of one dtype (a number becomes a constant of self's dtype); result bool";
  register_converter(std::move(c));
}

}  // namespace

void register_elementwise_converters() {
  const std::string same_dtype =
      "operands of the result's dtype (no type promotion); a number operand becomes a constant";
  register_tensor_op("aten.add.Tensor", "add", same_dtype + "; alpha = 1");
  register_tensor_op("aten.sub.Tensor", "sub", same_dtype + "; alpha = 1");
  register_tensor_op("aten.mul.Tensor", "mul", same_dtype);
  register_tensor_op("aten.div.Tensor", "div", same_dtype + " (so integer division is not converted)");
  register_tensor_op("aten.add.Scalar", "add", same_dtype + "; alpha = 1");
  register_tensor_op("aten.sub.Scalar", "sub", same_dtype + "; alpha = 1");
  register_tensor_op("aten.mul.Scalar", "mul", same_dtype);
  register_tensor_op("aten.div.Scalar", "div", same_dtype + " (so integer division is not converted)");
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
    if (value_arg(g, n, "self").dtype != value_arg(g, n, "other").dtype)
      return "self and other differ in dtype";
    return "";
  };
  where.convert = [](ConversionContext& ctx, const KNode& n) {
    std::vector<TensorId> in = {ctx.tensor(n, "condition"), ctx.tensor(n, "self"), ctx.tensor(n, "other")};
    ctx.set_output(n, 0, ctx.add(n, "where", in).outputs[0]);
  };
  where.limits = "bool condition; self and other of one dtype";
  register_converter(std::move(where));

  register_host_scalar_op("_operator.add", "add");
  register_host_scalar_op("_operator.sub", "sub");
  register_host_scalar_op("_operator.mul", "mul");
  register_host_scalar_op("_operator.floordiv", "floor_div");
}

}  // namespace kiln
