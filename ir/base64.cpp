#include "ir/base64.h"

#include <array>
#include <cstdint>

namespace kiln {
namespace {

const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace

std::string base64_encode(const void* data, size_t size) {
  const auto* in = static_cast<const uint8_t*>(data);
  std::string out((size + 2) / 3 * 4, '=');
  size_t o = 0, i = 0;
  for (; i + 3 <= size; i += 3) {
    const uint32_t v = (uint32_t(in[i]) << 16) | (uint32_t(in[i + 1]) << 8) | uint32_t(in[i + 2]);
    out[o++] = kAlphabet[(v >> 18) & 63];
    out[o++] = kAlphabet[(v >> 12) & 63];
    out[o++] = kAlphabet[(v >> 6) & 63];
    out[o++] = kAlphabet[v & 63];
  }
  if (i < size) {  // 1 or 2 bytes left: '=' padding stays in place
    uint32_t v = uint32_t(in[i]) << 16;
    if (i + 1 < size) v |= uint32_t(in[i + 1]) << 8;
    out[o++] = kAlphabet[(v >> 18) & 63];
    out[o++] = kAlphabet[(v >> 12) & 63];
    if (i + 1 < size) out[o] = kAlphabet[(v >> 6) & 63];
  }
  return out;
}

// One pass over 4-character groups with a table; validity is accumulated and only a bad input
// is scanned again, for the position (saved plans are ~100 MB: this runs at load).
std::optional<std::string> base64_decode(const std::string& in, size_t* bad_at) {
  if (in.size() % 4 != 0) {
    if (bad_at != nullptr) *bad_at = in.size();
    return std::nullopt;
  }
  static const std::array<int, 256> table = [] {
    std::array<int, 256> t;
    t.fill(-1);
    for (int i = 0; i < 64; ++i) t[static_cast<uint8_t>(kAlphabet[i])] = i;
    return t;
  }();
  auto at = [&](size_t i) { return table[static_cast<uint8_t>(in[i])]; };
  size_t pad = 0;
  if (!in.empty() && in.back() == '=') pad = in[in.size() - 2] == '=' ? 2 : 1;
  const size_t full = pad ? in.size() - 4 : in.size();  // groups without padding
  std::string out(in.size() / 4 * 3 - pad, '\0');
  int bad = 0;
  size_t o = 0;
  for (size_t i = 0; i < full; i += 4) {
    const int a = at(i), b = at(i + 1), c = at(i + 2), d = at(i + 3);
    bad |= a | b | c | d;  // negative when any character is not base64
    const uint32_t v = (uint32_t(a) << 18) | (uint32_t(b) << 12) | (uint32_t(c) << 6) | uint32_t(d);
    out[o++] = static_cast<char>(v >> 16);
    out[o++] = static_cast<char>(v >> 8);
    out[o++] = static_cast<char>(v);
  }
  if (pad) {
    const size_t i = full;
    const int a = at(i), b = at(i + 1), c = pad == 1 ? at(i + 2) : 0;
    bad |= a | b | c;
    const uint32_t v = (uint32_t(a) << 18) | (uint32_t(b) << 12) | (uint32_t(c) << 6);
    out[o++] = static_cast<char>(v >> 16);
    if (pad == 1) out[o++] = static_cast<char>(v >> 8);
  }
  if (bad < 0) {
    if (bad_at != nullptr) {
      size_t i = 0;
      while (i < in.size() && (at(i) >= 0 || (in[i] == '=' && i >= in.size() - pad))) ++i;
      *bad_at = i;
    }
    return std::nullopt;
  }
  return out;
}

}  // namespace kiln
