// elementwise: y = a <op> b with NumPy broadcasting. Operands share one dtype.
//   arithmetic  add sub mul div floor_div pow max min -> the operands' dtype (not bool)
//               atan2 (a = y, b = x)                  -> the operands' dtype (floating only)
//   comparison  eq ne lt le gt ge                     -> bool
//   logical     and or xor (bool operands)            -> bool
// Integer div truncates toward zero, floor_div rounds toward -inf; integer division by zero is
// undefined (the reference backend returns 0).
// Integer operands with tracked values (shape arithmetic) give tracked results, computed here.
#include "ir/ops/elementwise.h"

#include <algorithm>
#include <cstdint>
#include <limits>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/shape_values.h"

namespace kiln {

const std::vector<std::string>& elementwise_ops() {
  static const std::vector<std::string> ops = {"add", "sub", "mul", "div", "floor_div", "pow",
                                               "max", "min", "eq",  "ne",  "lt",        "le",
                                               "gt",  "ge",  "and", "or",  "xor",       "atan2"};
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

// The integer kernels' result on host values, or kUnknownValue where it is not representable
// (overflow, division by zero, pow) so that such an entry is never folded into a constant.
int64_t apply_on_values(const std::string& op, int64_t a, int64_t b) {
  int64_t r = 0;
  if (op == "add") return __builtin_add_overflow(a, b, &r) ? kUnknownValue : r;
  if (op == "sub") return __builtin_sub_overflow(a, b, &r) ? kUnknownValue : r;
  if (op == "mul") return __builtin_mul_overflow(a, b, &r) ? kUnknownValue : r;
  if (op == "div" || op == "floor_div") {
    if (b == 0 || (a == std::numeric_limits<int64_t>::min() && b == -1)) return kUnknownValue;
    r = a / b;  // truncates toward zero
    if (op == "floor_div" && a % b != 0 && ((a % b < 0) != (b < 0))) --r;
    return r;
  }
  if (op == "max") return std::max(a, b);
  if (op == "min") return std::min(a, b);
  if (op == "eq") return a == b;
  if (op == "ne") return a != b;
  if (op == "lt") return a < b;
  if (op == "le") return a <= b;
  if (op == "gt") return a > b;
  if (op == "ge") return a >= b;
  if (op == "and") return a != 0 && b != 0;
  if (op == "or") return a != 0 || b != 0;
  if (op == "xor") return (a != 0) != (b != 0);
  return kUnknownValue;  // pow (atan2 takes floating operands only)
}

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
    KILN_CHECK(op != "atan2" || is_floating(t),
               who << ": atan2 takes floating operands, got " << dtype_name(t));
  } else {
    KILN_CHECK(t != DataType::kBool || op == "eq" || op == "ne",
               who << ": " << op << " does not take bool operands");
  }
  Dims out;
  KILN_CHECK(broadcast_shapes(in[0].dims, in[1].dims, &out), who << ": shapes " << to_string(in[0].dims)
                                                                 << " and " << to_string(in[1].dims)
                                                                 << " do not broadcast");
  DataType out_type = kind == ElementwiseKind::kArithmetic ? t : DataType::kBool;
  ShapeValues values = nullptr;
  if (is_integral(t)) {
    values = broadcast_values(in[0], in[1], out, [&](int64_t a, int64_t b) {
      int64_t r = apply_on_values(op, a, b);
      bool fits = out_type != DataType::kInt32 ||
                  (r >= std::numeric_limits<int32_t>::min() && r <= std::numeric_limits<int32_t>::max());
      return fits ? r : kUnknownValue;
    });
  }
  return {{out_type, out, values}};
}

}  // namespace

namespace {

const std::vector<AttrSpec> kElementwiseAttributes = {
    {"op", AttrType::kString, std::nullopt, "required: add, sub, mul, ... (elementwise_ops())"},
};

const SchemaRegistration kRegistered{
    {"elementwise", 2, 2, infer_elementwise, kElementwiseAttributes, kPointwise | kLayoutTransparent},
};

}  // namespace

}  // namespace kiln
