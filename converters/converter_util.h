// Small helpers shared by the converter families: typed argument access for capability checks.
#pragma once

#include <string>
#include <vector>

#include "converters/converter.h"
#include "core/error.h"

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

}  // namespace kiln
