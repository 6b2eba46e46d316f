// matmul: C = op(A) @ op(B), op = optional transpose of the last two dims. Both operands have
// rank >= 2; leading (batch) dims broadcast NumPy-style. A and B share one floating dtype.
#include "core/error.h"
#include "core/op_schema.h"
#include "core/ops/ops.h"

namespace kiln {
namespace {

std::vector<TensorDesc> infer_matmul(const Layer& layer, const std::vector<TensorDesc>& in) {
  const TensorDesc& a = in[0];
  const TensorDesc& b = in[1];
  const std::string who = describe(layer);
  KILN_CHECK(is_floating(a.dtype), who << ": operands must be floating point, got " << dtype_name(a.dtype));
  KILN_CHECK(a.dtype == b.dtype, who << ": operand dtypes differ (" << dtype_name(a.dtype) << " vs "
                                     << dtype_name(b.dtype) << "); insert a cast");
  KILN_CHECK(a.dims.size() >= 2 && b.dims.size() >= 2,
             who << ": operands need rank >= 2, got " << to_string(a.dims) << " and " << to_string(b.dims));
  bool ta = layer.attrs.get_int("transpose_a", int64_t{0}) != 0;
  bool tb = layer.attrs.get_int("transpose_b", int64_t{0}) != 0;
  size_t ra = a.dims.size(), rb = b.dims.size();
  int64_t m = ta ? a.dims[ra - 1] : a.dims[ra - 2];
  int64_t ka = ta ? a.dims[ra - 2] : a.dims[ra - 1];
  int64_t kb = tb ? b.dims[rb - 1] : b.dims[rb - 2];
  int64_t n = tb ? b.dims[rb - 2] : b.dims[rb - 1];
  KILN_CHECK(ka == kb || ka == kDynamic || kb == kDynamic,
             who << ": inner dims differ: A is " << to_string(a.dims) << (ta ? " (transposed)" : "")
                 << ", B is " << to_string(b.dims) << (tb ? " (transposed)" : ""));
  Dims batch;
  Dims batch_a(a.dims.begin(), a.dims.end() - 2), batch_b(b.dims.begin(), b.dims.end() - 2);
  KILN_CHECK(broadcast_shapes(batch_a, batch_b, &batch), who << ": batch dims " << to_string(batch_a)
                                                             << " and " << to_string(batch_b)
                                                             << " do not broadcast");
  batch.push_back(m);
  batch.push_back(n);
  return {{a.dtype, batch}};
}

}  // namespace

void register_matmul_schema() { register_schema({"matmul", 2, 2, infer_matmul}); }

}  // namespace kiln
