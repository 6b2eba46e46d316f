// elementwise: y = a <op> b with NumPy broadcasting; op in add, sub, mul, div, max, min, pow.
#include "core/ops/elementwise.h"

#include <algorithm>

#include "core/error.h"
#include "core/op_schema.h"
#include "core/ops/ops.h"

namespace kiln {

const std::vector<std::string>& elementwise_ops() {
  static const std::vector<std::string> ops = {"add", "sub", "mul", "div", "max", "min", "pow"};
  return ops;
}

namespace {

std::vector<TensorDesc> infer_elementwise(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  std::string op = layer.attrs.get_string("op", who);
  const auto& ops = elementwise_ops();
  KILN_CHECK(std::find(ops.begin(), ops.end(), op) != ops.end(),
             who << ": unknown elementwise op '" << op << "'");
  KILN_CHECK(in[0].dtype == in[1].dtype, who << ": operand dtypes differ (" << dtype_name(in[0].dtype)
                                             << " vs " << dtype_name(in[1].dtype) << "); insert a cast");
  KILN_CHECK(in[0].dtype != DataType::kBool && in[0].dtype != DataType::kInt8,
             who << ": " << dtype_name(in[0].dtype) << " operands are not supported");
  Dims out;
  KILN_CHECK(broadcast_shapes(in[0].dims, in[1].dims, &out), who << ": shapes " << to_string(in[0].dims)
                                                                 << " and " << to_string(in[1].dims)
                                                                 << " do not broadcast");
  return {{in[0].dtype, out}};
}

}  // namespace

void register_elementwise_schema() { register_schema({"elementwise", 2, 2, infer_elementwise}); }

}  // namespace kiln
