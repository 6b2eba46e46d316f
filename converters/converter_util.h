// Small helpers shared by the converter families: typed argument access for capability checks.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "converters/converter.h"
#include "ir/error.h"

namespace kiln {

// The KValue of a tensor argument; throws (the capability check turns it into a reason).
inline const KValue& value_arg(const KGraph& g, const KNode& n, const std::string& name) {
  const Arg& a = n.arg(name);
  KILN_CHECK(a.is_value(), "argument '" << name << "' is not a tensor (" << a.describe() << ")");
  return g.value(a.value);
}

inline int64_t int_arg(const KNode& n, const std::string& name) {
  const Arg& a = n.arg(name);
  KILN_CHECK(a.kind == Arg::Kind::kInt || a.kind == Arg::Kind::kBool,
             "argument '" << name << "' must be a constant int, got " << a.describe());
  return a.i;
}

inline bool bool_arg(const KNode& n, const std::string& name) { return int_arg(n, name) != 0; }

inline std::vector<int64_t> ints_arg(const KNode& n, const std::string& name) {
  const Arg& a = n.arg(name);
  KILN_CHECK(a.is_int_list(), "argument '" << name << "' must be a constant int list, got " << a.describe());
  return a.ints();
}

// "" when every output from `first` on is unused, otherwise the reason.
inline std::string require_unused_outputs(const KNode& n, size_t first, const std::string& what) {
  for (size_t k = first; k < n.outputs.size(); ++k) {
    if (n.outputs[k] != kNoValue) return what + " (output " + std::to_string(k) + ") is used";
  }
  return "";
}

inline std::string require_floating(const KValue& v, const std::string& arg_name) {
  if (!is_floating(v.dtype))
    return arg_name + " has dtype " + dtype_name(v.dtype) + ", needs a floating dtype";
  return "";
}

// Normalizes a possibly negative axis against a rank.
inline int64_t wrap_axis(int64_t axis, size_t rank) {
  return axis < 0 ? axis + static_cast<int64_t>(rank) : axis;
}

// ---- torch type promotion (torch.result_type) ----------------------------------------------
// Operands are dim tensors (rank >= 1), zero-dim tensors, or numbers (immediates and symbolic
// sizes). The result category (bool < integer < floating) is the highest over all operands; within
// it, dim tensors decide over zero-dim tensors, which decide over numbers (int -> int64, float ->
// float32, the default dtype). So int64 tensor * 0.5 is float32, float16 tensor * float32 0-d
// tensor is float16, bool tensor + 1 is int64.

inline int dtype_category(DataType t) { return t == DataType::kBool ? 0 : is_floating(t) ? 2 : 1; }

// torch.promote_types over the dtypes Kiln has.
inline DataType promote_types(DataType a, DataType b) {
  if (a == b) return a;
  if (a == DataType::kBool) return b;
  if (b == DataType::kBool) return a;
  const bool fa = is_floating(a), fb = is_floating(b);
  if (fa != fb) return fa ? a : b;
  if (fa) return DataType::kFloat32;  // float16 with bfloat16, or either with float32
  auto width = [](DataType t) { return dtype_size(t); };
  return width(a) >= width(b) ? a : b;
}

inline DataType result_type(const KGraph& g, const KNode& n, const std::vector<std::string>& names) {
  std::optional<DataType> level[3];  // 0: numbers, 1: zero-dim tensors, 2: dim tensors
  for (const std::string& name : names) {
    const Arg& a = n.arg(name);
    if (a.is_none()) continue;
    DataType t;
    int rank;
    if (a.is_value()) {
      const KValue& v = g.value(a.value);
      t = v.dtype;
      rank = v.host_scalar ? 0 : v.dims.empty() ? 1 : 2;
    } else {
      KILN_CHECK(a.is_number(),
                 "argument '" << name << "' must be a tensor or a number, got " << a.describe());
      t = a.kind == Arg::Kind::kBool  ? DataType::kBool
          : a.kind == Arg::Kind::kInt ? DataType::kInt64
                                      : DataType::kFloat32;
      rank = 0;
    }
    level[rank] = level[rank] ? promote_types(*level[rank], t) : t;
  }
  // c10 combine_categories(higher, lower): a higher level keeps its dtype unless a lower level
  // has a higher category.
  auto combine = [](std::optional<DataType> higher, std::optional<DataType> lower) {
    if (!higher) return lower;
    if (!lower || is_floating(*higher)) return higher;
    if (*higher == DataType::kBool || is_floating(*lower)) {
      if (dtype_category(*lower) > dtype_category(*higher)) return std::optional<DataType>(*lower);
      return std::optional<DataType>(*higher);
    }
    return higher;
  };
  std::optional<DataType> r = combine(level[2], combine(level[1], level[0]));
  KILN_CHECK(r.has_value(), n.describe() << ": no operands to promote");
  return *r;
}

// A tensor or number argument as a tensor of `dtype`: tensors of another dtype get a cast
// (named "<node>/<arg>_to_<dtype>"), numbers become constants.
inline TensorId operand_as(ConversionContext& ctx, const KNode& n, const std::string& name, DataType dtype) {
  const Arg& a = n.arg(name);
  if (!a.is_value()) return ctx.scalar_or_tensor(n, name, dtype);
  TensorId t = ctx.tensor(a.value);
  if (ctx.net().tensor(t).dtype == dtype) return t;
  return ctx
      .add(n, "cast", {t}, Attributes().set("to", std::string(dtype_name(dtype))),
           name + "_to_" + dtype_name(dtype))
      .outputs[0];
}

// A tensor as `dtype` (a cast when it differs).
inline TensorId cast_to(ConversionContext& ctx, const KNode& n, TensorId t, DataType dtype,
                        const std::string& suffix) {
  if (ctx.net().tensor(t).dtype == dtype) return t;
  return ctx.add(n, "cast", {t}, Attributes().set("to", std::string(dtype_name(dtype))), suffix).outputs[0];
}

// One elementwise layer (`op` of the elementwise family) named "<node>/<tag>".
inline TensorId binary(ConversionContext& ctx, const KNode& n, const std::string& op, TensorId a, TensorId b,
                       const std::string& tag) {
  return ctx.add(n, "elementwise", {a, b}, Attributes().set("op", op), tag).outputs[0];
}

// One unary layer (`op` of the unary family) named "<node>/<tag>".
inline TensorId unary(ConversionContext& ctx, const KNode& n, const std::string& op, TensorId x,
                      const std::string& tag) {
  return ctx.add(n, "unary", {x}, Attributes().set("op", op), tag).outputs[0];
}

// A rank-0 constant `value` of `dtype` named "<node>/<tag>" (integers exact; float16/bfloat16 as
// a float32 constant and a cast).
inline TensorId constant_of(ConversionContext& ctx, const KNode& n, double value, DataType dtype,
                            const std::string& tag) {
  const std::string name = n.name + "/" + tag;
  switch (dtype) {
    case DataType::kInt64: {
      const int64_t v = static_cast<int64_t>(value);
      return ctx.net().add_constant(name, dtype, {}, &v, sizeof v);
    }
    case DataType::kInt32: {
      const int32_t v = static_cast<int32_t>(value);
      return ctx.net().add_constant(name, dtype, {}, &v, sizeof v);
    }
    case DataType::kBool: {
      const uint8_t v = value != 0.0 ? 1 : 0;
      return ctx.net().add_constant(name, dtype, {}, &v, sizeof v);
    }
    default: {
      const float v = static_cast<float>(value);
      TensorId c = ctx.net().add_constant(name, DataType::kFloat32, {}, &v, sizeof v);
      return cast_to(ctx, n, c, dtype, tag + "_cast");
    }
  }
}

// The size of `x` along `axis` as a 0-d int64 tensor: a constant for a static dim, otherwise
// shape -> gather (a tracked value, known when the engine runs).
inline TensorId dim_size(ConversionContext& ctx, const KNode& n, TensorId x, int64_t axis,
                         const std::string& tag) {
  const Dims& dims = ctx.net().tensor(x).dims;
  if (dims.at(axis) != kDynamic) return ctx.constant_i64(n, {dims[axis]}, {}, tag);
  TensorId shape = ctx.add(n, "shape", {x}, {}, tag + "_shape").outputs[0];
  TensorId index = ctx.constant_i64(n, {axis}, {}, tag + "_axis");
  return ctx.add(n, "gather", {shape, index}, Attributes().set("axis", int64_t{0}), tag).outputs[0];
}

// x[start:end] along `axis` (constant bounds, Python slice semantics), named "<node>/<tag>".
inline TensorId slice_axis(ConversionContext& ctx, const KNode& n, TensorId x, int64_t axis, int64_t start,
                           int64_t end, const std::string& tag) {
  Attributes attrs;
  attrs.set("axes", std::vector<int64_t>{axis})
      .set("starts", std::vector<int64_t>{start})
      .set("ends", std::vector<int64_t>{end});
  return ctx.add(n, "slice", {x}, attrs, tag).outputs[0];
}

// The dtype torch.export recorded for the node's output `index` (the converter's result dtype).
inline DataType output_dtype(const KGraph& g, const KNode& n, size_t index = 0) {
  KILN_CHECK(index < n.outputs.size() && n.outputs[index] != kNoValue,
             n.describe() << ": output " << index << " is not used");
  return g.value(n.outputs[index]).dtype;
}

// True when the node's output `index` is used.
inline bool output_used(const KNode& n, size_t index) {
  return index < n.outputs.size() && n.outputs[index] != kNoValue;
}

inline bool is_integer(DataType t) { return t == DataType::kInt32 || t == DataType::kInt64; }

// An optional dim-list argument ("dim": None, an int or a list of ints) as axes; empty means all.
inline std::vector<int64_t> dims_arg(const KNode& n, const std::string& name) {
  const Arg* a = n.find(name);
  if (a == nullptr || a->is_none()) return {};
  if (a->kind == Arg::Kind::kInt) return {a->i};
  KILN_CHECK(a->is_int_list(), "argument '" << name << "' must be constant dims, got " << a->describe());
  return a->ints();
}

}  // namespace kiln
