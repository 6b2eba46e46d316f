// Quantization ops (ir/ops/quantize.cpp), shared with their kernels.
#pragma once

#include <cstdint>

#include "ir/minifloat.h"
#include "ir/network.h"

namespace kiln {

// How a quantize / dequantize / fake_quantize layer applies its scale and zero point to x:
// one value for every element (per tensor), or one per index along `axis` (per channel).
struct QuantParams {
  bool per_channel = false;
  int64_t axis = 0;  // normalized, per channel only
  int64_t quant_min = -128, quant_max = 127;
  bool has_inv_scale = false;  // per tensor: x's multiplier given (torch's decomposed quantize)
  float inv_scale = 0.f;
  // format "e4m3": the quantized values are float8 e4m3fn (ir/float8.h: round to nearest even,
  // saturated to +-448) instead of integers; per tensor, no zero point, no quant_min/max.
  bool e4m3 = false;
  // fake_quantize only, formats "e5m2", "e4m3fnuz", "e5m2fnuz", "e2m1" (ir/minifloat.h): x * (1 /
  // scale) rounded to that format, times scale; no zero point; `saturate` (default true) or
  // overflow to infinity / NaN.
  bool minifloat = false;
  Minifloat format;
  bool saturate = true;
};

// Reads and checks the layer's attributes against x's rank (errors name the layer).
QuantParams quant_params(const Layer& layer, size_t rank, int64_t scale_count);

}  // namespace kiln
