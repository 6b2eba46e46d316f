// Tensor shapes. A dim of -1 is dynamic: its range comes from an optimization profile.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace kiln {

using Dims = std::vector<int64_t>;

constexpr int64_t kDynamic = -1;
constexpr int kMaxRank = 8;

std::string to_string(const Dims& d);  // "[2, -1, 64]"
bool is_static(const Dims& d);
// Element count of a static shape; throws on a dynamic dim or on overflow past 2^62.
int64_t volume(const Dims& d);
// Bytes of a dense tensor of `d` with `element_size`-byte elements: volume x element size,
// overflow-checked (throws past 2^62 bytes). The one place a byte count is computed from a shape:
// shapes come from files (plans, safetensors) and users, and an unchecked product wraps.
int64_t tensor_bytes(const Dims& d, size_t element_size);

// True when the dims, zero and dynamic ones aside, multiply to at most 2^62. Every shape a layer
// reads or writes must (infer_layer checks): kernels multiply dims into strides and row counts
// also for an empty tensor, and [0, 2^62, 8] has volume 0 but strides past int64.
bool dims_product_fits(const Dims& d);

// NumPy-style broadcast of two shapes. Dynamic dims broadcast against 1 and against themselves;
// returns false when the shapes cannot broadcast.
bool broadcast_shapes(const Dims& a, const Dims& b, Dims* out);

}  // namespace kiln
