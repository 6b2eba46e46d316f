// Indexing ops: reading elements by index, padding, running sums and top-k selection.
//   gather           data, indices -> data.shape[:axis] + indices.shape + data.shape[axis+1:]
//                    (ONNX Gather / numpy.take; 0-d indices remove the axis). Propagates tracked
//                    shape values, so shape -> gather(dim i) gives one dim as a host-known scalar.
//   gather_elements  data, index (same rank) -> index.shape (torch.gather)
//   embedding        weight [num, dim], indices -> indices.shape + [dim] (gather along axis 0)
//   pad              x -> x padded per dim (torch.nn.functional.pad order; negative pads crop)
//   cumsum           x -> running sum along `axis` (ONNX CumSum: `exclusive`, `reverse`)
//   topk             x -> values, indices (int64) of the k largest/smallest along `axis`
// gather and gather_elements wrap a negative index once (-1 is the last element) unless their
// `wrap` attribute is 0 (torch.gather and converters that wrapped indices themselves); embedding
// never wraps (F.embedding raises for a negative index). An index out of range after that is
// refused here when it is known at build time and by the reference kernel at run time; CUDA
// kernels cannot raise without synchronizing, so they read nothing for it and write NaN (floating
// data) or 0 (integer and bool data): never a plausible element.
#include "ir/ops/indexing.h"

#include <algorithm>

#include "ir/error.h"
#include "ir/op_schema.h"

namespace kiln {
namespace indexing {

bool wraps_negative_indices(const Layer& layer) {
  if (layer.op == "embedding") return false;
  return layer.attrs.get_int("wrap", int64_t{1}) != 0;
}

const std::vector<std::string>& pad_modes() {
  static const std::vector<std::string> modes = {"constant", "reflect", "replicate"};
  return modes;
}

std::vector<int64_t> resolve_pads(const std::vector<int64_t>& pads, int64_t rank) {
  std::vector<int64_t> out(static_cast<size_t>(2 * rank), 0);
  for (size_t i = 0; i + 1 < pads.size(); i += 2) {
    int64_t d = rank - 1 - static_cast<int64_t>(i / 2);
    out[2 * d] = pads[i];
    out[2 * d + 1] = pads[i + 1];
  }
  return out;
}

}  // namespace indexing

namespace {

using indexing::normalize_axis;

// An attribute that must be an int when given; `fallback` when absent.
int64_t int_attr(const Layer& layer, const std::string& name, int64_t fallback, const std::string& who) {
  return layer.attrs.has(name) ? layer.attrs.get_int(name, who) : fallback;
}

bool flag_attr(const Layer& layer, const std::string& name, bool fallback, const std::string& who) {
  int64_t v = int_attr(layer, name, fallback ? 1 : 0, who);
  KILN_CHECK(v == 0 || v == 1, who << ": attribute '" << name << "' must be 0 or 1, got " << v);
  return v == 1;
}

void check_index_dtype(const TensorDesc& t, const char* what, const std::string& who) {
  KILN_CHECK(
      t.dtype == DataType::kInt32 || t.dtype == DataType::kInt64,
      who << ": " << what << " must be int32 or int64, got " << dtype_name(t.dtype) << "; insert a cast");
}

// Index `i` of an axis of size `n` as an element position (negatives wrap once when `wrap`);
// refuses one out of range.
int64_t checked_index(int64_t i, int64_t n, bool wrap, const std::string& who) {
  const int64_t w = indexing::resolve_index(i, n, wrap);
  KILN_CHECK(w >= 0, who << ": index " << i << " is out of range for an axis of size " << n
                         << (i < 0 && !wrap ? " (negative indices do not count from the end here)" : ""));
  return w;
}

// Checks indices whose values are known at build time against a static axis size.
void check_known_indices(const TensorDesc& indices, int64_t n, bool wrap, const std::string& who) {
  if (n == kDynamic || !indices.values) return;
  for (int64_t i : *indices.values) {
    if (i != kUnknownValue) checked_index(i, n, wrap, who);
  }
}

std::vector<TensorDesc> infer_gather(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& data = in[0];
  const TensorDesc& indices = in[1];
  check_index_dtype(indices, "indices", who);
  const int64_t rank = static_cast<int64_t>(data.dims.size());
  KILN_CHECK(rank >= 1, who << ": data must have rank >= 1, got a scalar");
  const int64_t axis = normalize_axis(int_attr(layer, "axis", 0, who), rank, who);
  Dims out(data.dims.begin(), data.dims.begin() + axis);
  out.insert(out.end(), indices.dims.begin(), indices.dims.end());
  out.insert(out.end(), data.dims.begin() + axis + 1, data.dims.end());
  KILN_CHECK(out.size() <= static_cast<size_t>(kMaxRank),
             who << ": output rank " << out.size() << " exceeds the maximum of " << kMaxRank);
  const int64_t n = data.dims[axis];
  const bool wrap = flag_attr(layer, "wrap", true, who);
  check_known_indices(indices, n, wrap, who);
  TensorDesc result{data.dtype, out, nullptr};
  // Shape arithmetic: the same gather over the host-known values of data.
  if (data.values && fully_known(indices.values) && is_static(out) && volume(out) <= kMaxShapeValues) {
    // An empty output has no values, however large the other dims (the loop would never end).
    int64_t outer = volume(out) == 0 ? 0 : volume(Dims(data.dims.begin(), data.dims.begin() + axis));
    int64_t inner = volume(Dims(data.dims.begin() + axis + 1, data.dims.end()));
    const auto& dv = *data.values;
    const auto& iv = *indices.values;
    std::vector<int64_t> v;
    v.reserve(static_cast<size_t>(volume(out)));
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t idx : iv) {
        int64_t j = checked_index(idx, n, wrap, who);
        for (int64_t k = 0; k < inner; ++k) v.push_back(dv[static_cast<size_t>((o * n + j) * inner + k)]);
      }
    }
    result.values = make_values(std::move(v));
  }
  return {result};
}

std::vector<TensorDesc> infer_gather_elements(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& data = in[0];
  const TensorDesc& index = in[1];
  check_index_dtype(index, "index", who);
  const int64_t rank = static_cast<int64_t>(data.dims.size());
  KILN_CHECK(rank >= 1, who << ": data must have rank >= 1, got a scalar");
  KILN_CHECK(index.dims.size() == data.dims.size(), who << ": index " << to_string(index.dims)
                                                        << " must have the rank of data "
                                                        << to_string(data.dims));
  const int64_t axis = normalize_axis(int_attr(layer, "axis", 0, who), rank, who);
  for (int64_t d = 0; d < rank; ++d) {
    int64_t i = index.dims[d], n = data.dims[d];
    KILN_CHECK(d == axis || i == kDynamic || n == kDynamic || i <= n,
               who << ": index " << to_string(index.dims) << " is larger than data " << to_string(data.dims)
                   << " in dim " << d << " (only the gathered axis may be larger)");
  }
  check_known_indices(index, data.dims[axis], flag_attr(layer, "wrap", true, who), who);
  return {{data.dtype, index.dims}};
}

std::vector<TensorDesc> infer_embedding(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& weight = in[0];
  const TensorDesc& indices = in[1];
  check_index_dtype(indices, "indices", who);
  KILN_CHECK(weight.dims.size() == 2,
             who << ": weight must be [num_embeddings, dim], got " << to_string(weight.dims));
  Dims out = indices.dims;
  out.push_back(weight.dims[1]);
  KILN_CHECK(out.size() <= static_cast<size_t>(kMaxRank),
             who << ": output rank " << out.size() << " exceeds the maximum of " << kMaxRank);
  check_known_indices(indices, weight.dims[0], /*wrap=*/false, who);
  return {{weight.dtype, out}};
}

std::vector<TensorDesc> infer_pad(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& x = in[0];
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  const std::vector<int64_t> pads = layer.attrs.get_ints("pads", who);
  KILN_CHECK(pads.size() % 2 == 0,
             who << ": pads must hold (before, after) pairs, got " << pads.size() << " values");
  KILN_CHECK(static_cast<int64_t>(pads.size()) <= 2 * rank, who << ": pads cover " << pads.size() / 2
                                                                << " dims but the input " << to_string(x.dims)
                                                                << " has rank " << rank);
  std::string mode = layer.attrs.has("mode") ? layer.attrs.get_string("mode", who) : "constant";
  const auto& modes = indexing::pad_modes();
  KILN_CHECK(std::find(modes.begin(), modes.end(), mode) != modes.end(),
             who << ": unknown pad mode '" << mode << "' (use constant, reflect or replicate)");
  std::vector<int64_t> p = indexing::resolve_pads(pads, rank);
  Dims out = x.dims;
  for (int64_t d = 0; d < rank; ++d) {
    int64_t before = p[2 * d], after = p[2 * d + 1], n = x.dims[d];
    if (n == kDynamic) continue;
    KILN_CHECK(before >= -n && after >= -n, who << ": pads (" << before << ", " << after << ") of dim " << d
                                                << " crop more than its size " << n);
    if (mode == "reflect") {
      KILN_CHECK(before < n && after < n, who << ": reflect padding (" << before << ", " << after
                                              << ") of dim " << d << " must be smaller than its size " << n
                                              << "; use replicate or constant padding");
    } else if (mode == "replicate") {
      KILN_CHECK(n > 0 || (before <= 0 && after <= 0),
                 who << ": replicate padding of dim " << d << " needs a non-empty dim");
    }
    // Pads are any int64 (negative crops): the sum is checked, not left to wrap.
    KILN_CHECK(!__builtin_add_overflow(n, before, &out[d]) && !__builtin_add_overflow(out[d], after, &out[d]),
               who << ": pads (" << before << ", " << after << ") of dim " << d << " are out of range");
    KILN_CHECK(out[d] >= 0, who << ": pads (" << before << ", " << after << ") crop dim " << d << " of size "
                                << n << " below zero");
  }
  return {{x.dtype, out}};
}

// cumsum and topk take a float32/float16/bfloat16/int32/int64 tensor of rank >= 1; returns the rank.
int64_t check_numeric_tensor(const TensorDesc& x, const std::string& who) {
  KILN_CHECK(
      is_floating(x.dtype) || x.dtype == DataType::kInt32 || x.dtype == DataType::kInt64,
      who << ": input must be float32, float16, bfloat16, int32 or int64, got " << dtype_name(x.dtype));
  KILN_CHECK(!x.dims.empty(), who << ": input must have rank >= 1, got a scalar");
  return static_cast<int64_t>(x.dims.size());
}

std::vector<TensorDesc> infer_cumsum(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& x = in[0];
  const int64_t rank = check_numeric_tensor(x, who);
  normalize_axis(layer.attrs.get_int("axis", who), rank, who);
  flag_attr(layer, "exclusive", false, who);
  flag_attr(layer, "reverse", false, who);
  return {{x.dtype, x.dims}};
}

std::vector<TensorDesc> infer_topk(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc& x = in[0];
  const int64_t rank = check_numeric_tensor(x, who);
  const int64_t axis = normalize_axis(int_attr(layer, "axis", -1, who), rank, who);
  const int64_t k = layer.attrs.get_int("k", who);
  const int64_t n = x.dims[axis];
  KILN_CHECK(k >= 0 && (n == kDynamic || k <= n),
             who << ": k = " << k << " must be between 0 and the size of axis " << axis << " (" << n << ")");
  flag_attr(layer, "largest", true, who);
  flag_attr(layer, "sorted", true, who);
  Dims out = x.dims;
  out[axis] = k;
  return {{x.dtype, out}, {DataType::kInt64, out}};
}

}  // namespace

namespace {

const std::vector<AttrSpec> kGatherAttributes = {
    {"axis", AttrType::kInt, AttrValue{int64_t{0}}, "the gathered axis, negative counts from the end"},
    {"wrap", AttrType::kInt, AttrValue{int64_t{1}},
     "0/1: a negative index counts from the end (1, ONNX Gather) or is out of range (0)"},
    {"alias", AttrType::kInt, AttrValue{int64_t{0}},
     "set by the builder (alias_views): 1 makes a gather of one leading slab a view"},
};

const std::vector<AttrSpec> kGatherElementsAttributes = {
    {"axis", AttrType::kInt, AttrValue{int64_t{0}}, "the gathered axis, negative counts from the end"},
    {"wrap", AttrType::kInt, AttrValue{int64_t{1}},
     "0/1: a negative index counts from the end (1, ONNX GatherElements) or is out of range (0, "
     "torch.gather)"},
};

const std::vector<AttrSpec> kPadAttributes = {
    {"pads", AttrType::kInts, std::nullopt,
     "required: (before, after) pairs, last dim first (torch F.pad order); negative values crop"},
    {"mode", AttrType::kString, AttrValue{std::string("constant")}, "constant, reflect or replicate"},
    {"value", AttrType::kFloat, AttrValue{0.0}, "the constant mode's fill value"},
};

const std::vector<AttrSpec> kCumsumAttributes = {
    {"axis", AttrType::kInt, std::nullopt, "required: the summed axis, negative counts from the end"},
    {"exclusive", AttrType::kInt, AttrValue{int64_t{0}}, "0/1: element i sums the elements before i"},
    {"reverse", AttrType::kInt, AttrValue{int64_t{0}}, "0/1: sum from the end of the axis"},
};

const std::vector<AttrSpec> kTopkAttributes = {
    {"k", AttrType::kInt, std::nullopt, "required: 0 <= k <= the axis size"},
    {"axis", AttrType::kInt, AttrValue{int64_t{-1}}, "the selected axis, negative counts from the end"},
    {"largest", AttrType::kInt, AttrValue{int64_t{1}}, "0/1: the k largest (1) or smallest (0)"},
    {"sorted", AttrType::kInt, AttrValue{int64_t{1}}, "0/1, checked only: results are always sorted"},
};

const SchemaRegistration kRegistered{
    {"gather", 2, 2, infer_gather, kGatherAttributes},
    {"gather_elements", 2, 2, infer_gather_elements, kGatherElementsAttributes},
    {"embedding", 2, 2, infer_embedding, {} /* no attributes */},
    {"pad", 1, 1, infer_pad, kPadAttributes},
    {"cumsum", 1, 1, infer_cumsum, kCumsumAttributes},
    {"topk", 1, 1, infer_topk, kTopkAttributes},
};

}  // namespace

}  // namespace kiln
