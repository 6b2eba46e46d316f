// The "fused" layer attribute: the original layer names a fused layer computes, comma-separated,
// shown by plan inspection. Every fusion pass records what it absorbed through these helpers.
#pragma once

#include <string>

#include "core/network.h"

namespace kiln {

// The original layers `l` stands for: its "fused" list, or its own name when nothing was fused.
inline std::string fused_names(const Layer& l) {
  return l.attrs.has("fused") ? l.attrs.get_string("fused", l.name) : l.name;
}

// Records that `l` now also computes layer `absorbed`.
inline void add_fused_name(Layer& l, const std::string& absorbed) {
  l.attrs.set("fused", fused_names(l) + "," + absorbed);
}

}  // namespace kiln
