#pragma once

#include <cstdint>

#include "ir/network.h"

namespace kiln {

// Default `eps` of batch_norm, layer_norm and group_norm (torch's default).
constexpr double kDefaultNormEps = 1e-5;
// Default `eps` of rms_norm. torch's default (eps=None) is finfo(dtype).eps, which depends on the
// dtype; Kiln takes the usual 1e-6 instead, and converters pass torch's value explicitly.
constexpr double kDefaultRmsNormEps = 1e-6;

// A layer_norm's or rms_norm's quantized copy (attribute `quantized_copy`, set by the builder's
// fold_quantize_copies): a second output holding y quantized per tensor exactly as a quantize
// layer computes it from y (y rounded to its dtype first): "int8": clamp(nearbyint(y *
// copy_inv_scale), copy_quant_min, copy_quant_max); "e4m3": float8_e4m3fn(y * copy_inv_scale)
// (nearest even, saturated to +-448). A transformer's normalized value is both the next GEMM's
// quantized input and a residual: the normalization writes both. Validated; errors name the layer.
struct QuantizedCopy {
  bool on = false;
  bool e4m3 = false;  // else int8
  float inv_scale = 1.f;
  int64_t lo = -128, hi = 127;
};
QuantizedCopy quantized_copy(const Layer& layer);

}  // namespace kiln
