// unary: y = f(x) for the pointwise math functions (activations live in `activation`).
// dtypes: abs, neg, sign also take int32/int64; not takes bool; the rest are floating only.
#include "ir/ops/unary.h"

#include <algorithm>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/shape_values.h"

namespace kiln {

const std::vector<std::string>& unary_ops() {
  static const std::vector<std::string> ops = {
      "exp",  "log",   "sqrt",       "rsqrt", "abs",   "neg",   "erf",  "sin",  "cos",  "floor",
      "ceil", "round", "reciprocal", "sign",  "not",   "tan",   "asin", "acos", "atan", "sinh",
      "cosh", "asinh", "acosh",      "atanh", "expm1", "log1p", "log2", "log10"};
  return ops;
}

namespace {

std::vector<TensorDesc> infer_unary(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  std::string op = layer.attrs.get_string("op", who);
  const auto& ops = unary_ops();
  KILN_CHECK(std::find(ops.begin(), ops.end(), op) != ops.end(), who << ": unknown unary op '" << op << "'");
  DataType t = in[0].dtype;
  if (op == "not") {
    KILN_CHECK(t == DataType::kBool, who << ": not takes bool, got " << dtype_name(t));
  } else if (op == "abs" || op == "neg" || op == "sign") {
    KILN_CHECK(is_floating(t) || t == DataType::kInt32 || t == DataType::kInt64,
               who << ": " << op << " takes floating or int32/int64 input, got " << dtype_name(t));
  } else {
    KILN_CHECK(is_floating(t), who << ": " << op << " takes floating input, got " << dtype_name(t));
  }
  TensorDesc out{in[0].dtype, in[0].dims};
  if (in[0].values && is_integral(t) && (op == "abs" || op == "neg" || op == "sign" || op == "not")) {
    // Shape arithmetic (ONNX's Neg of an axis count): the values follow.
    std::vector<int64_t> v = *in[0].values;
    for (int64_t& x : v) {
      if (x == kUnknownValue) continue;
      x = stored_int(op == "not"   ? x == 0
                     : op == "neg" ? -x
                     : op == "abs" ? (x < 0 ? -x : x)
                                   : (x > 0) - (x < 0),
                     t);
    }
    out.values = make_values(std::move(v));
  }
  return {out};
}

}  // namespace

namespace {

const std::vector<AttrSpec> kUnaryAttributes = {
    {"op", AttrType::kString, std::nullopt, "required: exp, log, sqrt, ... (unary_ops())"},
};

const SchemaRegistration kRegistered{
    {"unary", 1, 1, infer_unary, kUnaryAttributes, kPointwise | kLayoutTransparent},
};

}  // namespace

}  // namespace kiln
