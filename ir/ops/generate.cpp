// Generator ops: layers that make a tensor from attributes (and, optionally, a shape input).
//   arange  start (default 0), end, step (default 1), dtype (default int64) -> 1-D
//           [ceil((end - start) / step)], element i = start + step * i (torch.arange). `end` may
//           instead come from an optional input: a 0-d or [1] int32/int64 tensor with tracked
//           values (shape arithmetic), so arange(seq_len) follows a dynamic dim: unknown at build
//           time -> dynamic output dim, known at run time.
//   fill    value (default 0), dtype (default float32), shape -> a tensor of that shape with every
//           element `value` (zeros / ones / full). The shape may instead come from an optional
//           1-D int32/int64 input with tracked values; unknown entries become dynamic dims.
// Integer outputs small enough to track (kMaxShapeValues) carry their values, so fold_constants
// and shape arithmetic downstream see them.
#include "ir/ops/generate.h"

#include <cmath>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/shape_values.h"

namespace kiln {
namespace {

DataType parse_dtype_attr(const Layer& layer, const std::string& who, const char* fallback) {
  std::string name = layer.attrs.has("dtype") ? layer.attrs.get_string("dtype", who) : fallback;
  for (int i = 0; i < kNumDataTypes; ++i) {
    auto t = static_cast<DataType>(i);
    if (name == dtype_name(t)) return t;
  }
  KILN_FAIL(who << ": unknown dtype '" << name
                << "': use float32, float16, bfloat16, int32, int64, bool or int8");
}

// An attribute read as an exact integer: ints as they are, floats only when integral.
int64_t exact_int(const Layer& layer, const std::string& name, int64_t fallback, const std::string& who) {
  auto it = layer.attrs.values().find(name);
  if (it == layer.attrs.values().end()) return fallback;
  if (std::holds_alternative<int64_t>(it->second)) return std::get<int64_t>(it->second);
  double v = layer.attrs.get_float(name, who);
  KILN_CHECK(std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.2e18,
             who << ": attribute '" << name << "' = " << v << " must be an integer for an integer dtype");
  return static_cast<int64_t>(v);
}

// Checks a shape-carrying input (0-d or [n] of int32/int64) and returns its tracked values.
const std::vector<int64_t>& tracked_input(const TensorDesc& in, const char* what, bool scalar,
                                          const std::string& who) {
  KILN_CHECK(in.dtype == DataType::kInt32 || in.dtype == DataType::kInt64,
             who << ": " << what << " input must be int32 or int64, got " << dtype_name(in.dtype));
  if (scalar) {
    KILN_CHECK(in.dims.empty() || in.dims == Dims{1},
               who << ": " << what << " input must be 0-d or [1], got " << to_string(in.dims));
  } else {
    KILN_CHECK(in.dims.size() == 1 && in.dims[0] >= 0,
               who << ": " << what << " input must be 1-D with a static length, got " << to_string(in.dims));
  }
  KILN_CHECK(in.values != nullptr,
             who << ": " << what
                 << " input must be computed from shapes or constants (tracked values); "
                    "a tensor computed on the device cannot set an output shape");
  return *in.values;
}

std::vector<TensorDesc> infer_arange(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  DataType t = parse_dtype_attr(layer, who, "int64");
  KILN_CHECK(t == DataType::kFloat32 || t == DataType::kFloat16 || t == DataType::kBFloat16 ||
                 t == DataType::kInt32 || t == DataType::kInt64,
             who << ": dtype must be float32, float16, bfloat16, int32 or int64, got " << dtype_name(t));
  ArangeParams p = arange_params(layer);
  KILN_CHECK(p.step != 0, who << ": step must not be 0");
  KILN_CHECK(std::isfinite(p.start) && std::isfinite(p.step), who << ": start and step must be finite");

  bool end_known = true;
  double end = 0;
  int64_t end_int = 0;
  if (!in.empty()) {
    KILN_CHECK(!layer.attrs.has("end"),
               who << ": give `end` either as an attribute or as an input, not both");
    const auto& v = tracked_input(in[0], "end", /*scalar=*/true, who);
    end_known = v[0] != kUnknownValue;
    end_int = v[0];
    end = static_cast<double>(v[0]);
  } else {
    KILN_CHECK(layer.attrs.has("end"), who << ": missing attribute 'end' (or an end input)");
    end = layer.attrs.get_float("end", who);
    KILN_CHECK(std::isfinite(end), who << ": end must be finite");
    if (is_integral(t)) end_int = exact_int(layer, "end", 0, who);
  }
  if (!end_known) return {{t, {kDynamic}, nullptr}};

  int64_t n = 0;
  if (is_integral(t)) {
    KILN_CHECK((p.step_int > 0 && end_int >= p.start_int) || (p.step_int < 0 && end_int <= p.start_int),
               who << ": end " << end_int << " is on the wrong side of start " << p.start_int << " for step "
                   << p.step_int << " (torch.arange refuses this too)");
    // Exact ceil of the quotient, in 128 bits: start and end may be any int64 (their distance
    // overflows int64).
    const __int128 sgn = p.step_int > 0 ? 1 : -1;
    const __int128 q = (static_cast<__int128>(end_int) - p.start_int + p.step_int - sgn) / p.step_int;
    KILN_CHECK(q < (int64_t{1} << 62), who << ": " << end_int << " - " << p.start_int << " in steps of "
                                           << p.step_int << " is too many elements");
    n = static_cast<int64_t>(q);
  } else {
    KILN_CHECK((p.step > 0 && end >= p.start) || (p.step < 0 && end <= p.start),
               who << ": end " << end << " is on the wrong side of start " << p.start << " for step "
                   << p.step << " (torch.arange refuses this too)");
    double size = std::ceil((end - p.start) / p.step);
    KILN_CHECK(size < 9.0e18, who << ": " << size << " elements is too many");
    n = static_cast<int64_t>(size);
  }
  TensorDesc out{t, {n}, nullptr};
  if (is_integral(t) && n <= kMaxShapeValues) {
    std::vector<int64_t> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[i] = stored_int(p.start_int + p.step_int * i, t);
    out.values = make_values(std::move(v));
  }
  return {out};
}

std::vector<TensorDesc> infer_fill(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  FillParams p = fill_params(layer);
  Dims dims;
  if (!in.empty()) {
    KILN_CHECK(!layer.attrs.has("shape"),
               who << ": give the shape either as attribute `shape` or as an input, not both");
    const auto& v = tracked_input(in[0], "shape", /*scalar=*/false, who);
    KILN_CHECK(v.size() <= static_cast<size_t>(kMaxRank),
               who << ": rank " << v.size() << " exceeds " << kMaxRank);
    for (int64_t d : v) {
      KILN_CHECK(d == kUnknownValue || d >= 0, who << ": negative dim " << d << " in the shape input");
      dims.push_back(d == kUnknownValue ? kDynamic : d);
    }
  } else {
    KILN_CHECK(layer.attrs.has("shape"), who << ": missing attribute 'shape' (or a shape input)");
    dims = layer.attrs.get_ints("shape", who);
    KILN_CHECK(dims.size() <= static_cast<size_t>(kMaxRank),
               who << ": rank " << dims.size() << " exceeds " << kMaxRank);
    for (int64_t d : dims) KILN_CHECK(d >= 0, who << ": negative dim in shape " << to_string(dims));
  }
  TensorDesc out{p.dtype, dims, nullptr};
  if (is_integral(p.dtype) && is_static(dims) && volume(dims) <= kMaxShapeValues) {
    out.values = make_values(
        std::vector<int64_t>(static_cast<size_t>(volume(dims)), stored_int(p.int_value, p.dtype)));
  }
  return {out};
}

}  // namespace

ArangeParams arange_params(const Layer& layer) {
  const std::string who = describe(layer);
  ArangeParams p;
  p.dtype = parse_dtype_attr(layer, who, "int64");
  p.start = layer.attrs.get_float("start", 0.0);
  p.step = layer.attrs.get_float("step", 1.0);
  p.start_int = is_integral(p.dtype) ? exact_int(layer, "start", 0, who) : 0;
  p.step_int = is_integral(p.dtype) ? exact_int(layer, "step", 1, who) : 0;
  return p;
}

FillParams fill_params(const Layer& layer) {
  const std::string who = describe(layer);
  FillParams p;
  p.dtype = parse_dtype_attr(layer, who, "float32");
  p.value = layer.attrs.get_float("value", 0.0);
  KILN_CHECK(!std::isnan(p.value) || is_floating(p.dtype), who << ": NaN cannot fill an integer dtype");
  auto it = layer.attrs.values().find("value");
  if (it != layer.attrs.values().end() && std::holds_alternative<int64_t>(it->second)) {
    p.int_value = std::get<int64_t>(it->second);
  } else if (p.dtype == DataType::kBool) {
    p.int_value = p.value != 0;
  } else {
    KILN_CHECK(!is_integral(p.dtype) || std::fabs(p.value) < 9.2e18,
               who << ": value " << p.value << " does not fit " << dtype_name(p.dtype));
    p.int_value = is_integral(p.dtype) ? static_cast<int64_t>(p.value) : 0;  // truncates, as torch.full
  }
  return p;
}

namespace {

const std::vector<AttrSpec> kArangeAttributes = {
    {"start", AttrType::kFloat, AttrValue{0.0},
     "the first element (an int, or an integral float, for integer dtypes)"},
    {"end", AttrType::kFloat, std::nullopt, "exclusive end; required unless the end comes as input 0"},
    {"step", AttrType::kFloat, AttrValue{1.0}, "not 0 (an int, or an integral float, for integer dtypes)"},
    {"dtype", AttrType::kString, AttrValue{std::string("int64")},
     "float32, float16, bfloat16, int32 or int64"},
};

const std::vector<AttrSpec> kFillAttributes = {
    {"value", AttrType::kFloat, AttrValue{0.0}, "every element's value (an int is exact for integer dtypes)"},
    {"dtype", AttrType::kString, AttrValue{std::string("float32")}, "the output's dtype"},
    {"shape", AttrType::kInts, std::nullopt, "the output shape; required unless the shape comes as input 0"},
};

const SchemaRegistration kRegistered{
    {"arange", 0, 1, infer_arange, kArangeAttributes},
    {"fill", 0, 1, infer_fill, kFillAttributes},
};

}  // namespace

}  // namespace kiln
