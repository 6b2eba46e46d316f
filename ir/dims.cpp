#include "ir/dims.h"

#include <algorithm>
#include <sstream>

#include "ir/error.h"

namespace kiln {

std::string to_string(const Dims& d) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < d.size(); ++i) s << (i ? ", " : "") << d[i];
  s << "]";
  return s.str();
}

bool is_static(const Dims& d) {
  return std::all_of(d.begin(), d.end(), [](int64_t x) { return x >= 0; });
}

int64_t volume(const Dims& d) {
  int64_t n = 1;
  for (int64_t x : d) {
    KILN_CHECK(x >= 0, "volume of shape " << to_string(d) << ": dim is dynamic");
    KILN_CHECK(x == 0 || n <= (int64_t{1} << 62) / x, "shape " << to_string(d) << " has too many elements");
    n *= x;
  }
  return n;
}

int64_t tensor_bytes(const Dims& d, size_t element_size) {
  const int64_t n = volume(d);
  int64_t bytes = 0;
  KILN_CHECK(
      !__builtin_mul_overflow(n, static_cast<int64_t>(element_size), &bytes) && bytes <= (int64_t{1} << 62),
      "shape " << to_string(d) << " of " << element_size << "-byte elements is too large (" << n
               << " elements)");
  return bytes;
}

bool dims_product_fits(const Dims& d) {
  int64_t n = 1;
  for (int64_t x : d) {
    if (x <= 0) continue;
    if (n > (int64_t{1} << 62) / x) return false;
    n *= x;
  }
  return true;
}

bool broadcast_shapes(const Dims& a, const Dims& b, Dims* out) {
  size_t rank = std::max(a.size(), b.size());
  Dims r(rank);
  for (size_t i = 0; i < rank; ++i) {
    int64_t x = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    int64_t y = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (x == y) {
      r[i] = x;
    } else if (x == 1) {
      r[i] = y;
    } else if (y == 1) {
      r[i] = x;
    } else if (x == kDynamic || y == kDynamic) {
      // One side is unknown, the other a concrete size > 1: the result is that size, and the
      // runtime shape check (shape inference on concrete dims) enforces the dynamic side.
      r[i] = x == kDynamic ? y : x;
    } else {
      return false;
    }
  }
  *out = std::move(r);
  return true;
}

}  // namespace kiln
