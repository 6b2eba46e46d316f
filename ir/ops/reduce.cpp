// reduce: y = op over `axes` of x. `op`: sum, mean, max, min, prod, var; `axes` (ints, negative
// counts from the end; empty or missing = all axes); `keepdim` (0/1, default 0: reduced axes are
// dropped; 1: kept with size 1); `correction` (var only, default 1: divide by N - correction,
// clamped at 0, as torch.var does).
// Floating inputs (float16/bfloat16 accumulate in float32); sum, max, min, prod also take int32 and
// int64 (accumulated in int64, the result wraps to the input dtype). The output has x's dtype.
// Over an empty axis sum gives 0, prod 1, mean and var NaN (torch); max and min have no identity
// and are refused, at build time for a static shape and at run time for a dynamic one.
//
// arg_reduce: the int64 index of the max (argmax) or min (argmin) along one `axis`; `keepdim`.
// Ties give the first index; a NaN counts as larger and smaller than everything (the first NaN
// wins), as in torch. Refused over an empty axis.
#include "ir/ops/reduce.h"

#include <algorithm>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/shape_values.h"

namespace kiln {

const std::vector<std::string>& reduce_ops() {
  static const std::vector<std::string> ops = {"sum", "mean", "max", "min", "prod", "var"};
  return ops;
}

const std::vector<std::string>& arg_reduce_ops() {
  static const std::vector<std::string> ops = {"argmax", "argmin"};
  return ops;
}

std::vector<bool> reduced_axes(const Layer& layer, int rank) {
  const std::string who = describe(layer);
  std::vector<int64_t> axes;
  if (layer.attrs.has("axes")) axes = layer.attrs.get_ints("axes", who);
  std::vector<bool> mask(static_cast<size_t>(rank), axes.empty());
  // A rank-0 tensor accepts axis 0 / -1 (torch does) and reduces its one element.
  int limit = std::max(rank, 1);
  for (int64_t a : axes) {
    KILN_CHECK(a >= -limit && a < limit, who << ": axis " << a << " is out of range for rank " << rank
                                             << " (use -" << limit << " .. " << limit - 1 << ")");
    if (rank == 0) continue;
    int64_t r = a < 0 ? a + rank : a;
    KILN_CHECK(!mask[r], who << ": axis " << a << " is listed twice in axes");
    mask[r] = true;
  }
  return mask;
}

int resolve_axis(const Layer& layer, int rank, int64_t fallback) {
  const std::string who = describe(layer);
  int64_t a = layer.attrs.has("axis") ? layer.attrs.get_int("axis", who) : fallback;
  int limit = std::max(rank, 1);
  KILN_CHECK(a >= -limit && a < limit, who << ": axis " << a << " is out of range for rank " << rank
                                           << " (use -" << limit << " .. " << limit - 1 << ")");
  return rank == 0 ? 0 : static_cast<int>(a < 0 ? a + rank : a);
}

namespace {

bool keepdim(const Layer& layer) {
  int64_t k = layer.attrs.get_int("keepdim", int64_t{0});
  KILN_CHECK(k == 0 || k == 1, describe(layer) << ": keepdim must be 0 or 1, got " << k);
  return k != 0;
}

Dims reduced_dims(const Dims& in, const std::vector<bool>& mask, bool keep) {
  Dims out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (!mask[i]) {
      out.push_back(in[i]);
    } else if (keep) {
      out.push_back(1);
    }
  }
  return out;
}

std::vector<TensorDesc> infer_reduce(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  std::string op = layer.attrs.get_string("op", who);
  const auto& ops = reduce_ops();
  KILN_CHECK(std::find(ops.begin(), ops.end(), op) != ops.end(),
             who << ": unknown reduce op '" << op << "' (use sum, mean, max, min, prod or var)");
  DataType t = in[0].dtype;
  bool integer_ok = op == "sum" || op == "max" || op == "min" || op == "prod";
  KILN_CHECK(is_floating(t) || (integer_ok && (t == DataType::kInt32 || t == DataType::kInt64)),
             who << ": " << op << " does not take " << dtype_name(t) << " input"
                 << (integer_ok ? " (floating, int32 or int64)" : " (floating only; cast first)"));
  if (layer.attrs.has("correction")) {
    KILN_CHECK(op == "var", who << ": correction applies to var only");
    KILN_CHECK(layer.attrs.get_int("correction", who) >= 0, who << ": correction must be >= 0");
  }
  const Dims& dims = in[0].dims;
  std::vector<bool> mask = reduced_axes(layer, static_cast<int>(dims.size()));
  if (op == "max" || op == "min") {
    for (size_t i = 0; i < dims.size(); ++i) {
      KILN_CHECK(!mask[i] || dims[i] != 0, who << ": " << op << " over axis " << i << " of size 0 of "
                                               << to_string(dims) << " has no result (torch raises too)");
    }
  }
  TensorDesc out{t, reduced_dims(dims, mask, keepdim(layer))};
  if (in[0].values && dims.size() <= 1 && (dims.empty() || mask[0]) && is_integral(t) && op != "mean" &&
      op != "var") {
    // Shape arithmetic (ONNX's Size: the product of a shape): a vector reduced to one value.
    int64_t acc = op == "prod" ? 1 : 0;
    bool known = true, first = true;
    for (int64_t x : *in[0].values) {
      if (x == kUnknownValue) {
        known = false;
        break;
      }
      if (op == "sum")
        acc += x;
      else if (op == "prod")
        acc *= x;
      else if (first || (op == "max" ? x > acc : x < acc))
        acc = x;
      first = false;
    }
    out.values = make_values({known ? stored_int(acc, t) : kUnknownValue});
  }
  return {out};
}

std::vector<TensorDesc> infer_arg_reduce(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  std::string op = layer.attrs.get_string("op", who);
  const auto& ops = arg_reduce_ops();
  KILN_CHECK(std::find(ops.begin(), ops.end(), op) != ops.end(),
             who << ": unknown arg_reduce op '" << op << "' (use argmax or argmin)");
  DataType t = in[0].dtype;
  KILN_CHECK(is_floating(t) || t == DataType::kInt32 || t == DataType::kInt64,
             who << ": input must be floating, int32 or int64, got " << dtype_name(t));
  KILN_CHECK(layer.attrs.has("axis"), who << ": missing attribute 'axis'");
  const Dims& dims = in[0].dims;
  int rank = static_cast<int>(dims.size());
  int axis = resolve_axis(layer, rank, 0);
  std::vector<bool> mask(static_cast<size_t>(rank), false);
  if (rank > 0) {
    mask[axis] = true;
    KILN_CHECK(dims[axis] != 0, who << ": " << op << " over axis " << axis << " of size 0 of "
                                    << to_string(dims) << " has no result (torch raises too)");
  }
  return {{DataType::kInt64, reduced_dims(dims, mask, keepdim(layer))}};
}

}  // namespace

namespace {

const std::vector<AttrSpec> kReduceAttributes = {
    {"op", AttrType::kString, std::nullopt, "required: sum, mean, max, min, prod or var (reduce_ops())"},
    {"axes", AttrType::kInts, std::nullopt, "negative counts from the end; absent or empty: every axis"},
    {"keepdim", AttrType::kInt, AttrValue{int64_t{0}}, "0/1: keep reduced axes with size 1"},
    {"correction", AttrType::kInt, AttrValue{int64_t{1}}, "var only, >= 0: divide by max(0, N - correction)"},
};

const std::vector<AttrSpec> kArgReduceAttributes = {
    {"op", AttrType::kString, std::nullopt, "required: argmax or argmin (arg_reduce_ops())"},
    {"axis", AttrType::kInt, std::nullopt, "required: the reduced axis, negative counts from the end"},
    {"keepdim", AttrType::kInt, AttrValue{int64_t{0}}, "0/1: keep the reduced axis with size 1"},
};

const SchemaRegistration kRegistered{
    {"reduce", 1, 1, infer_reduce, kReduceAttributes},
    {"arg_reduce", 1, 1, infer_arg_reduce, kArgReduceAttributes},
};

}  // namespace

}  // namespace kiln
