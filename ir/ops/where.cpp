// where: y = cond ? a : b, elementwise, with NumPy broadcasting of all three operands.
// cond is bool; a and b share one dtype (any), which is the output's.
#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/shape_values.h"

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
  TensorDesc y{in[1].dtype, out};
  if (in[0].values && in[1].values && in[2].values && is_integral(in[1].dtype) && trackable(out)) {
    // Shape arithmetic (ONNX exporters' Where(Equal(shape, -1), ones, shape) before an Expand).
    const TensorDesc zeros{DataType::kInt64, out,
                           make_values(std::vector<int64_t>(static_cast<size_t>(volume(out)), 0))};
    auto spread = [&](const TensorDesc& t) {
      return broadcast_values(t, zeros, out, [](int64_t x, int64_t) { return x; });
    };
    ShapeValues c = spread(in[0]), a = spread(in[1]), b = spread(in[2]);
    if (c && a && b) {
      std::vector<int64_t> v(c->size());
      for (size_t i = 0; i < v.size(); ++i)
        v[i] = (*c)[i] == kUnknownValue ? kUnknownValue : (*c)[i] ? (*a)[i] : (*b)[i];
      y.values = make_values(std::move(v));
    }
  }
  return {y};
}

}  // namespace

namespace {

const SchemaRegistration kRegistered{
    {"where", 3, 3, infer_where, {} /* no attributes */, kPointwise},
};

}  // namespace

}  // namespace kiln
