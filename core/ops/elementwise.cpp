// elementwise: y = a <op> b with NumPy broadcasting. Operands share one dtype.
//   arithmetic  add sub mul div floor_div pow max min -> the operands' dtype (not bool)
//   comparison  eq ne lt le gt ge                     -> bool
//   logical     and or xor (bool operands)            -> bool
// Integer div truncates toward zero, floor_div rounds toward -inf; integer division by zero is
// undefined (the reference backend returns 0).
#include "core/ops/elementwise.h"

#include <algorithm>

#include "core/error.h"
#include "core/op_schema.h"
#include "core/ops/ops.h"

namespace kiln {

const std::vector<std::string>& elementwise_ops() {
  static const std::vector<std::string> ops = {"add", "sub", "mul", "div", "floor_div", "pow",
                                               "max", "min", "eq",  "ne",  "lt",        "le",
                                               "gt",  "ge",  "and", "or",  "xor"};
  return ops;
}

ElementwiseKind elementwise_kind(const std::string& op) {
  if (op == "eq" || op == "ne" || op == "lt" || op == "le" || op == "gt" || op == "ge") {
    return ElementwiseKind::kComparison;
  }
  if (op == "and" || op == "or" || op == "xor") return ElementwiseKind::kLogical;
  return ElementwiseKind::kArithmetic;
}

namespace {

std::vector<TensorDesc> infer_elementwise(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  std::string op = layer.attrs.get_string("op", who);
  const auto& ops = elementwise_ops();
  KILN_CHECK(std::find(ops.begin(), ops.end(), op) != ops.end(),
             who << ": unknown elementwise op '" << op << "'");
  DataType t = in[0].dtype;
  KILN_CHECK(t == in[1].dtype, who << ": operand dtypes differ (" << dtype_name(t) << " vs "
                                   << dtype_name(in[1].dtype) << "); insert a cast");
  KILN_CHECK(t != DataType::kInt8, who << ": int8 operands are not supported");
  ElementwiseKind kind = elementwise_kind(op);
  if (kind == ElementwiseKind::kLogical) {
    KILN_CHECK(t == DataType::kBool, who << ": " << op << " takes bool operands, got " << dtype_name(t));
  } else if (kind == ElementwiseKind::kArithmetic) {
    KILN_CHECK(t != DataType::kBool, who << ": " << op << " does not take bool operands");
  } else {
    KILN_CHECK(t != DataType::kBool || op == "eq" || op == "ne",
               who << ": " << op << " does not take bool operands");
  }
  Dims out;
  KILN_CHECK(broadcast_shapes(in[0].dims, in[1].dims, &out), who << ": shapes " << to_string(in[0].dims)
                                                                 << " and " << to_string(in[1].dims)
                                                                 << " do not broadcast");
  return {{kind == ElementwiseKind::kArithmetic ? t : DataType::kBool, out}};
}

}  // namespace

void register_elementwise_schema() { register_schema({"elementwise", 2, 2, infer_elementwise}); }

}  // namespace kiln
