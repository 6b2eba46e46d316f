#include "core/safetensors.h"

#include <cstring>
#include <fstream>
#include <iterator>

#include "ir/error.h"

namespace kiln {
namespace {

constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;  // the format's own limit is 100 MB

// The subset of JSON the header uses: objects, arrays, strings, integers (and, inside
// __metadata__, strings only). Every step is bounds-checked.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& what) : s_(text), what_(what) {}

  std::map<std::string, WeightTensor> parse(const uint8_t* data, size_t data_size) {
    std::map<std::string, WeightTensor> out;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    expect('{');
    if (peek() == '}') return ++pos_, out;
    while (true) {
      std::string name = string();
      expect(':');
      if (name == "__metadata__") {
        skip_string_map();
      } else {
        KILN_CHECK(!out.count(name), what_ << ": tensor '" << name << "' appears twice");
        out[name] = tensor(name, data, data_size, &ranges);
      }
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect('}');
      break;
    }
    skip_space();
    KILN_CHECK(pos_ == s_.size() || s_.find_first_not_of(' ', pos_) == std::string::npos,
               what_ << ": trailing characters after the JSON header");
    return out;
  }

 private:
  WeightTensor tensor(const std::string& name, const uint8_t* data, size_t data_size,
                      std::vector<std::pair<uint64_t, uint64_t>>* ranges) {
    std::string dtype;
    Dims shape;
    std::vector<uint64_t> offsets;
    bool has_shape = false;
    expect('{');
    while (true) {
      std::string key = string();
      expect(':');
      if (key == "dtype") {
        dtype = string();
      } else if (key == "shape") {
        has_shape = true;
        for (uint64_t v : integers()) shape.push_back(static_cast<int64_t>(v));
      } else if (key == "data_offsets") {
        offsets = integers();
      } else {
        KILN_FAIL(what_ << ": tensor '" << name << "' has an unknown field '" << key << "'");
      }
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect('}');
      break;
    }
    WeightTensor t;
    t.dtype = parse_dtype_code(dtype, name);
    KILN_CHECK(has_shape && shape.size() <= static_cast<size_t>(kMaxRank),
               what_ << ": tensor '" << name << "' needs a shape of rank <= " << kMaxRank);
    for (int64_t d : shape)
      KILN_CHECK(d >= 0 && d < (int64_t{1} << 40),
                 what_ << ": tensor '" << name << "' has an invalid dim " << d);
    t.dims = shape;
    KILN_CHECK(offsets.size() == 2 && offsets[0] <= offsets[1] && offsets[1] <= data_size,
               what_ << ": tensor '" << name << "' has data offsets outside the file's " << data_size
                     << " data bytes (the file is truncated or corrupt)");
    const uint64_t bytes = static_cast<uint64_t>(tensor_bytes(shape, dtype_size(t.dtype)));
    KILN_CHECK(offsets[1] - offsets[0] == bytes, what_ << ": tensor '" << name << "' has "
                                                       << offsets[1] - offsets[0] << " data bytes, its shape "
                                                       << to_string(shape) << " needs " << bytes);
    for (const auto& r : *ranges) {
      KILN_CHECK(offsets[1] <= r.first || offsets[0] >= r.second || bytes == 0,
                 what_ << ": tensor '" << name << "' overlaps another tensor's data");
    }
    ranges->push_back({offsets[0], offsets[1]});
    t.data = std::make_shared<const std::vector<uint8_t>>(data + offsets[0], data + offsets[1]);
    return t;
  }

  DataType parse_dtype_code(const std::string& code, const std::string& name) const {
    if (code == "F32") return DataType::kFloat32;
    if (code == "F16") return DataType::kFloat16;
    if (code == "BF16") return DataType::kBFloat16;
    if (code == "I32") return DataType::kInt32;
    if (code == "I64") return DataType::kInt64;
    if (code == "BOOL") return DataType::kBool;
    if (code == "I8") return DataType::kInt8;
    KILN_FAIL(what_ << ": tensor '" << name << "' has dtype '" << code
                    << "', which Kiln engines do not support (F32, F16, BF16, I32, I64, BOOL, I8); "
                    << "convert it before saving");
  }

  void skip_string_map() {
    expect('{');
    if (peek() == '}') return void(++pos_);
    while (true) {
      string();
      expect(':');
      string();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect('}');
      return;
    }
  }

  std::vector<uint64_t> integers() {
    std::vector<uint64_t> v;
    expect('[');
    if (peek() == ']') return ++pos_, v;
    while (true) {
      skip_space();
      uint64_t x = 0;
      size_t start = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
        KILN_CHECK(x <= (UINT64_MAX - 9) / 10, what_ << ": number too large in the JSON header");
        x = x * 10 + static_cast<uint64_t>(s_[pos_++] - '0');
      }
      KILN_CHECK(pos_ > start,
                 what_ << ": expected a non-negative integer at byte " << start << " of the JSON header");
      v.push_back(x);
      KILN_CHECK(v.size() <= 64, what_ << ": array too long in the JSON header");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect(']');
      return v;
    }
  }

  std::string string() {
    expect('"');
    std::string out;
    while (true) {
      KILN_CHECK(pos_ < s_.size(), what_ << ": unterminated string in the JSON header");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (c == '\\') {
        KILN_CHECK(pos_ < s_.size(), what_ << ": unterminated escape in the JSON header");
        char e = s_[pos_++];
        switch (e) {
          case 'n':
            out += '\n';
            break;
          case 't':
            out += '\t';
            break;
          case 'r':
            out += '\r';
            break;
          case 'b':
            out += '\b';
            break;
          case 'f':
            out += '\f';
            break;
          case 'u':  // kept verbatim: names are compared, never displayed as Unicode
            KILN_CHECK(pos_ + 4 <= s_.size(), what_ << ": truncated \\u escape in the JSON header");
            out += "\\u" + s_.substr(pos_, 4);
            pos_ += 4;
            break;
          default:
            out += e;
        }
      } else {
        out += c;
      }
    }
  }

  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r'))
      ++pos_;
  }
  char peek() {
    skip_space();
    KILN_CHECK(pos_ < s_.size(), what_ << ": the JSON header ends early");
    return s_[pos_];
  }
  void expect(char c) {
    KILN_CHECK(peek() == c, what_ << ": expected '" << c << "' at byte " << pos_
                                  << " of the JSON header, found '" << s_[pos_] << "'");
    ++pos_;
  }

  const std::string& s_;
  const std::string& what_;
  size_t pos_ = 0;
};

}  // namespace

std::map<std::string, WeightTensor> parse_safetensors(const uint8_t* bytes, size_t size,
                                                      const std::string& what) {
  KILN_CHECK(size >= 8, what << ": " << size << " bytes is too short for a safetensors file");
  uint64_t header = 0;
  std::memcpy(&header, bytes, 8);
  KILN_CHECK(header <= kMaxHeaderBytes && header <= size - 8,
             what << ": header length " << header << " does not fit the file's " << size
                  << " bytes (not a safetensors file, or truncated)");
  std::string text(reinterpret_cast<const char*>(bytes) + 8, static_cast<size_t>(header));
  return HeaderParser(text, what).parse(bytes + 8 + header, size - 8 - static_cast<size_t>(header));
}

std::map<std::string, WeightTensor> load_safetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  KILN_CHECK(f.good(), "cannot open weights file '" << path << "'");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return parse_safetensors(bytes.data(), bytes.size(), "weights file '" + path + "'");
}

}  // namespace kiln
