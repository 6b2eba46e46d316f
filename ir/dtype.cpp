#include "ir/dtype.h"

#include "ir/error.h"

namespace kiln {

size_t dtype_size(DataType t) {
  switch (t) {
    case DataType::kFloat32:
    case DataType::kInt32:
      return 4;
    case DataType::kFloat16:
    case DataType::kBFloat16:
      return 2;
    case DataType::kInt64:
      return 8;
    case DataType::kBool:
    case DataType::kInt8:
    case DataType::kFloat8E4M3:
      return 1;
  }
  KILN_FAIL("unknown data type " << static_cast<int>(t));
}

const char* dtype_name(DataType t) {
  switch (t) {
    case DataType::kFloat32:
      return "float32";
    case DataType::kFloat16:
      return "float16";
    case DataType::kBFloat16:
      return "bfloat16";
    case DataType::kInt32:
      return "int32";
    case DataType::kInt64:
      return "int64";
    case DataType::kBool:
      return "bool";
    case DataType::kInt8:
      return "int8";
    case DataType::kFloat8E4M3:
      return "float8_e4m3fn";
  }
  return "unknown";
}

DataType parse_dtype(const std::string& name) {
  for (int i = 0; i < kNumDataTypes; ++i) {
    auto t = static_cast<DataType>(i);
    if (name == dtype_name(t)) return t;
  }
  KILN_FAIL(
      "unknown dtype '" << name
                        << "': use float32, float16, bfloat16, int32, int64, bool, int8 or float8_e4m3fn");
}

bool is_floating(DataType t) {
  return t == DataType::kFloat32 || t == DataType::kFloat16 || t == DataType::kBFloat16;
}

bool is_integral(DataType t) { return !is_floating(t) && !is_float8(t); }

bool is_float8(DataType t) { return t == DataType::kFloat8E4M3; }

bool is_valid_dtype(uint8_t raw) { return raw < kNumDataTypes; }

}  // namespace kiln
