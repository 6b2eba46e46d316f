// Little-endian byte writer and a bounds-checked reader for the plan format. Every read checks
// the remaining length first; a count read from the stream is checked against the bytes left
// before anything is allocated, so corrupt input cannot make the reader allocate or overrun.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ir/error.h"

namespace kiln {

class ByteWriter {
 public:
  template <typename T>
  void put(T v) {
    static_assert(std::is_trivially_copyable<T>::value, "put() takes plain values");
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    buf_.insert(buf_.end(), p, p + sizeof(T));
  }
  void put_bytes(const void* data, size_t n) {
    put<uint64_t>(n);
    const auto* p = static_cast<const uint8_t*>(data);
    buf_.insert(buf_.end(), p, p + n);
  }
  void put_string(const std::string& s) { put_bytes(s.data(), s.size()); }
  template <typename T>
  void put_vector(const std::vector<T>& v) {
    put<uint64_t>(v.size());
    for (const T& x : v) put<T>(x);
  }
  std::vector<uint8_t>& buffer() { return buf_; }

 private:
  std::vector<uint8_t> buf_;
};

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size, std::string what)
      : p_(data), end_(data + size), what_(std::move(what)) {}

  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    return v;
  }
  // A count of items that each take at least `min_item_bytes` bytes in the stream.
  uint64_t get_count(size_t min_item_bytes) {
    uint64_t n = get<uint64_t>();
    KILN_CHECK(min_item_bytes == 0 || n <= remaining() / min_item_bytes,
               what_ << ": count " << n << " exceeds the data left; the plan is corrupt or truncated");
    return n;
  }
  std::vector<uint8_t> get_bytes() {
    uint64_t n = get_count(1);
    std::vector<uint8_t> v(p_, p_ + n);
    p_ += n;
    return v;
  }
  std::string get_string() {
    uint64_t n = get_count(1);
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }
  template <typename T>
  std::vector<T> get_vector() {
    uint64_t n = get_count(sizeof(T));
    std::vector<T> v(n);
    for (auto& x : v) x = get<T>();
    return v;
  }
  const uint8_t* position() const { return p_; }
  size_t remaining() const { return static_cast<size_t>(end_ - p_); }
  void skip(size_t n) {
    need(n);
    p_ += n;
  }
  const std::string& what() const { return what_; }

 private:
  void need(size_t n) const {
    KILN_CHECK(static_cast<size_t>(end_ - p_) >= n,
               what_ << ": unexpected end of data; the plan is truncated or corrupt");
  }
  const uint8_t* p_;
  const uint8_t* end_;
  std::string what_;
};

}  // namespace kiln
