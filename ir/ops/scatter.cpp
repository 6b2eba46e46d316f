// scatter_elements: data, indices, updates -> data with each element of updates written to (or
// reduced into) the position whose coordinate along `axis` is the matching element of indices and
// whose other coordinates are its own (torch.Tensor.scatter / scatter_add / scatter_reduce, ONNX
// ScatterElements). indices has data's rank and every dim of it but the axis is at most data's;
// updates has that rank too and is at least as large as indices in every dim (as torch, only the
// region indices covers is read). The output has data's shape and dtype.
//   reduction     none (a write: where indices repeat a position, one of the writes lands,
//                 unspecified which, as in torch), add, mul, max, min (max/min propagate NaN)
//   include_self  1: data's element takes part in the reduction; 0: a position that indices hit
//                 starts from the updates alone (torch scatter_reduce(include_self=False))
// An index outside [0, axis size) (negatives included: torch.scatter does not wrap) is refused at
// build time when known, and by the reference kernel at run time; the CUDA kernel cannot raise
// without synchronizing and skips that update.
#include "ir/ops/scatter.h"

#include <algorithm>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/shape_values.h"

namespace kiln {

std::string scatter_reduction(const Layer& layer) {
  return layer.attrs.has("reduction") ? layer.attrs.get_string("reduction", describe(layer))
                                      : std::string("none");
}

const std::vector<std::string>& scatter_reductions() {
  static const std::vector<std::string> r = {"none", "add", "mul", "max", "min"};
  return r;
}

namespace {

std::vector<TensorDesc> infer_scatter_elements(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& data = in[0];
  const TensorDesc& indices = in[1];
  const TensorDesc& updates = in[2];
  KILN_CHECK(
      indices.dtype == DataType::kInt32 || indices.dtype == DataType::kInt64,
      who << ": indices must be int32 or int64, got " << dtype_name(indices.dtype) << "; insert a cast");
  KILN_CHECK(updates.dtype == data.dtype, who << ": updates dtype " << dtype_name(updates.dtype)
                                              << " differs from data's " << dtype_name(data.dtype)
                                              << "; insert a cast");
  const std::string reduction = scatter_reduction(layer);
  const auto& reductions = scatter_reductions();
  KILN_CHECK(std::find(reductions.begin(), reductions.end(), reduction) != reductions.end(),
             who << ": unknown reduction '" << reduction << "' (none, add, mul, max or min)");
  KILN_CHECK(reduction == "none" || is_floating(data.dtype) || data.dtype == DataType::kInt32 ||
                 data.dtype == DataType::kInt64,
             who << ": reduction " << reduction << " takes floating, int32 or int64 data, got "
                 << dtype_name(data.dtype));
  const int64_t include_self = layer.attrs.get_int("include_self", int64_t{1});
  KILN_CHECK(include_self == 0 || include_self == 1,
             who << ": attribute 'include_self' must be 0 or 1, got " << include_self);
  const int64_t rank = static_cast<int64_t>(data.dims.size());
  KILN_CHECK(rank >= 1, who << ": data must have rank >= 1, got a scalar");
  KILN_CHECK(indices.dims.size() == data.dims.size(), who << ": indices " << to_string(indices.dims)
                                                          << " must have the rank of data "
                                                          << to_string(data.dims));
  KILN_CHECK(updates.dims.size() == indices.dims.size(), who << ": updates " << to_string(updates.dims)
                                                             << " must have the rank of indices "
                                                             << to_string(indices.dims));
  const int64_t axis = normalize_axis(layer.attrs.get_int("axis", int64_t{0}), rank, who);
  for (int64_t d = 0; d < rank; ++d) {
    const int64_t i = indices.dims[d], u = updates.dims[d], n = data.dims[d];
    KILN_CHECK(i == kDynamic || u == kDynamic || i <= u, who << ": updates " << to_string(updates.dims)
                                                             << " are smaller than indices "
                                                             << to_string(indices.dims) << " in dim " << d);
    KILN_CHECK(d == axis || i == kDynamic || n == kDynamic || i <= n,
               who << ": indices " << to_string(indices.dims) << " are larger than data "
                   << to_string(data.dims) << " in dim " << d << " (only the scattered axis may be larger)");
  }
  const int64_t n = data.dims[axis];
  if (n != kDynamic && indices.values) {
    for (int64_t v : *indices.values) {
      KILN_CHECK(v == kUnknownValue || (v >= 0 && v < n),
                 who << ": index " << v << " is out of range for an axis of size " << n);
    }
  }
  return {{data.dtype, data.dims}};
}

const std::vector<AttrSpec> kScatterElementsAttributes = {
    {"axis", AttrType::kInt, AttrValue{int64_t{0}}, "the scattered axis, negative counts from the end"},
    {"reduction", AttrType::kString, AttrValue{std::string("none")}, "none, add, mul, max or min"},
    {"include_self", AttrType::kInt, AttrValue{int64_t{1}},
     "0/1: data's element takes part in the reduction at the positions indices hit"},
};

const SchemaRegistration kRegistered{
    {"scatter_elements", 3, 3, infer_scatter_elements, kScatterElementsAttributes},
};

}  // namespace

}  // namespace kiln
