// One element of a dtype, encoded on the host: the fill value of `fill` for both backends.
#pragma once

#include <cstdint>
#include <cstring>

#include "ir/dtype.h"
#include "kernels/reference/host_access.h"

namespace kiln {

// The element's bytes in the low bytes of the result (little-endian). Floating dtypes take
// `value` (rounded to float32 first, then to nearest even), integer dtypes `int_value`
// (two's-complement wrap), bool is int_value != 0.
inline uint64_t encode_scalar(DataType t, double value, int64_t int_value) {
  uint64_t bits = 0;
  switch (t) {
    case DataType::kFloat32: {
      float f = static_cast<float>(value);
      std::memcpy(&bits, &f, 4);
      break;
    }
    case DataType::kFloat16:
      bits = float_to_half_bits(static_cast<float>(value));
      break;
    case DataType::kBFloat16:
      bits = float_to_bf16_bits(static_cast<float>(value));
      break;
    case DataType::kInt32:
      bits = static_cast<uint32_t>(static_cast<int32_t>(int_value));
      break;
    case DataType::kInt64:
      bits = static_cast<uint64_t>(int_value);
      break;
    case DataType::kBool:
      bits = int_value != 0;
      break;
    case DataType::kInt8:
      bits = static_cast<uint8_t>(static_cast<int8_t>(int_value));
      break;
  }
  return bits;
}

}  // namespace kiln
