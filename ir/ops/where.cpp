// where: y = cond ? a : b, elementwise, with NumPy broadcasting of all three operands.
// cond is bool; a and b share one dtype (any), which is the output's.
#include "ir/error.h"
#include "ir/op_schema.h"

namespace kiln {
namespace {

std::vector<TensorDesc> infer_where(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  KILN_CHECK(in[0].dtype == DataType::kBool,
             who << ": cond must be bool, got " << dtype_name(in[0].dtype) << "; compare or cast it first");
  KILN_CHECK(in[1].dtype == in[2].dtype, who << ": a and b dtypes differ (" << dtype_name(in[1].dtype)
                                             << " vs " << dtype_name(in[2].dtype) << "); insert a cast");
  Dims ab, out;
  KILN_CHECK(broadcast_shapes(in[1].dims, in[2].dims, &ab) && broadcast_shapes(in[0].dims, ab, &out),
             who << ": shapes " << to_string(in[0].dims) << ", " << to_string(in[1].dims) << " and "
                 << to_string(in[2].dims) << " do not broadcast");
  return {{in[1].dtype, out}};
}

}  // namespace

namespace {

const SchemaRegistration kRegistered{
    {"where", 3, 3, infer_where, {} /* no attributes */, kPointwise},
};

}  // namespace

}  // namespace kiln
