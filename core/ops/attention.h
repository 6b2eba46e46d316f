#pragma once

#include <cstdint>

#include "core/network.h"

namespace kiln {

// The attention layer's attributes, read once for both backends. The schema has validated them.
struct AttentionAttrs {
  bool causal = false;
  double scale = 0.0;  // <= 0: 1/sqrt(D)
};

AttentionAttrs attention_attrs(const Layer& layer);

// The factor applied to q @ k^T: the `scale` attribute, or 1/sqrt(d) when it is absent or <= 0.
double attention_scale(const AttentionAttrs& attrs, int64_t d);

}  // namespace kiln
