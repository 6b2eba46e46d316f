// Element types of engine tensors. The numeric values are part of the plan format: append only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln {

enum class DataType : uint8_t {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kInt32 = 3,
  kInt64 = 4,
  kBool = 5,
  kInt8 = 6,        // quantized tensors (quantize's output)
  kFloat8E4M3 = 7,  // float8 e4m3fn (torch.float8_e4m3fn): FP8 GEMM operands, CUDA sm_89+
};

constexpr int kNumDataTypes = 8;

size_t dtype_size(DataType t);
const char* dtype_name(DataType t);             // "float32", "float16", ...
DataType parse_dtype(const std::string& name);  // inverse of dtype_name
bool is_floating(DataType t);
bool is_integral(DataType t);  // int8/int32/int64 and bool
// float8 is neither floating nor integral here: it is a storage type that only the FP8 GEMM,
// quantize and cast layers read or write (ir/float8.h converts it on the host).
bool is_float8(DataType t);
bool is_valid_dtype(uint8_t raw);

}  // namespace kiln
