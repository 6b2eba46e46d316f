#pragma once

namespace kiln {

// Default `eps` of batch_norm, layer_norm and group_norm (torch's default).
constexpr double kDefaultNormEps = 1e-5;
// Default `eps` of rms_norm. torch's default (eps=None) is finfo(dtype).eps, which depends on the
// dtype; Kiln takes the usual 1e-6 instead, and converters pass torch's value explicitly.
constexpr double kDefaultRmsNormEps = 1e-6;

}  // namespace kiln
