// Parameters of the generator ops (arange, fill) as their kernels need them; the schemas in
// ir/ops/generate.cpp have validated the layer before a kernel reads them.
#pragma once

#include <cstdint>

#include "ir/dtype.h"
#include "ir/network.h"

namespace kiln {

// arange: element i is start + step * i; the output's length is known from its shape, so `end`
// is not needed here. Integer dtypes use the exact integers, floating ones the doubles.
struct ArangeParams {
  DataType dtype;
  double start, step;
  int64_t start_int, step_int;
};
ArangeParams arange_params(const Layer& layer);

// fill: every element is `value`; integer dtypes use `int_value` (exact, truncated toward zero
// when the attribute is a float), bool is value != 0.
struct FillParams {
  DataType dtype;
  double value;
  int64_t int_value;
};
FillParams fill_params(const Layer& layer);

}  // namespace kiln
