// cast: y = x converted to dtype `to`, with torch's `.to(dtype)` semantics:
//   floating -> integer truncates toward zero (out-of-range values are undefined, as in torch),
//   anything -> bool is x != 0, bool -> number is 0/1, integer -> integer wraps (two's complement),
//   -> float16/bfloat16 rounds to nearest even (integers pass through float32 first, as torch does).
// Tracked shape values propagate through integer/bool -> integer/bool casts.
#include <cstdint>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "ir/ops/shape_values.h"

namespace kiln {
namespace {

DataType parse_target(const Layer& layer, const std::string& who) {
  std::string name = layer.attrs.get_string("to", who);
  for (int i = 0; i < kNumDataTypes; ++i) {
    auto t = static_cast<DataType>(i);
    if (name == dtype_name(t)) return t;
  }
  KILN_FAIL(who << ": unknown dtype '" << name
                << "' for `to`: use float32, float16, bfloat16, int32, int64, bool or int8");
}

std::vector<TensorDesc> infer_cast(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  DataType to = parse_target(layer, who);
  KILN_CHECK(!is_float8(to) && !is_float8(in[0].dtype),
             who << ": no cast to or from float8_e4m3fn; FP8 tensors come from quantize (dtype "
                    "float8_e4m3fn) and feed FP8 fully_connected layers");
  TensorDesc out{to, in[0].dims, nullptr};
  if (in[0].values && is_integral(in[0].dtype) && is_integral(to)) {
    std::vector<int64_t> v = *in[0].values;
    for (int64_t& x : v) {
      if (x != kUnknownValue) x = stored_int(x, to);
    }
    out.values = make_values(std::move(v));
  }
  return {out};
}

}  // namespace

namespace {

const std::vector<AttrSpec> kCastAttributes = {
    {"to", AttrType::kString, std::nullopt, "required: the target dtype's name (float32, ..., int8)"},
};

const SchemaRegistration kRegistered{
    {"cast", 1, 1, infer_cast, kCastAttributes, kPointwise | kLayoutTransparent},
};

}  // namespace

}  // namespace kiln
