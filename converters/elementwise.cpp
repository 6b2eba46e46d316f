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
  if (!self.is_value()) return "self must be a tensor";
  const DataType out = g.value(n.outputs.at(0) == kNoValue ? self.value : n.outputs[0]).dtype;
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

void register_tensor_op(const std::string& target, const std::string& op) {
  Converter c;
  c.target = target;
  c.capability = same_dtype_operands;
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    const DataType dtype = ctx.net().tensor(ctx.tensor(n, "self")).dtype;
    TensorId a = ctx.tensor(n, "self");
    TensorId b = ctx.scalar_or_tensor(n, "other", dtype);
    ctx.set_output(n, 0, ctx.add(n, "elementwise", {a, b}, Attributes().set("op", op)).outputs[0]);
  };
  c.limits = "operands of the result's dtype (no type promotion); alpha = 1";
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

}  // namespace

void register_elementwise_converters() {
  register_tensor_op("aten.add.Tensor", "add");
  register_tensor_op("aten.sub.Tensor", "sub");
  register_tensor_op("aten.mul.Tensor", "mul");
  register_tensor_op("aten.div.Tensor", "div");
  register_host_scalar_op("_operator.add", "add");
  register_host_scalar_op("_operator.sub", "sub");
  register_host_scalar_op("_operator.mul", "mul");
  register_host_scalar_op("_operator.floordiv", "floor_div");
}

}  // namespace kiln
