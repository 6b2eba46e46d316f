// Base64 (RFC 4648, standard alphabet, '=' padding): the one codec of Kiln. Plans keep generated
// cubins in string attributes (kernels/cuda/fused_pointwise.cpp) and saved engines keep their plan
// in their pickled state (runtime/runtime.cpp) as base64 text.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

namespace kiln {

std::string base64_encode(const void* data, size_t size);

// The decoded bytes, or nullopt when `text` is not valid base64; `bad_at` then receives the
// offset of the first bad character (or text.size() when the length is wrong).
std::optional<std::string> base64_decode(const std::string& text, size_t* bad_at = nullptr);

}  // namespace kiln
