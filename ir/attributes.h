// Typed layer attributes: a small map from name to int / float / int list / float list / string.
// Serialized generically, so a new op needs no plan-format change.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace kiln {

using AttrValue = std::variant<int64_t, double, std::vector<int64_t>, std::vector<double>, std::string>;

class Attributes {
 public:
  Attributes& set(const std::string& name, AttrValue value) {
    values_[name] = std::move(value);
    return *this;
  }
  bool has(const std::string& name) const { return values_.count(name) != 0; }

  // Typed getters; `who` names the layer in the error when the attribute is missing or mistyped.
  int64_t get_int(const std::string& name, const std::string& who) const;
  int64_t get_int(const std::string& name, int64_t fallback) const;
  double get_float(const std::string& name, const std::string& who) const;
  double get_float(const std::string& name, double fallback) const;
  std::vector<int64_t> get_ints(const std::string& name, const std::string& who) const;
  std::string get_string(const std::string& name, const std::string& who) const;

  const std::map<std::string, AttrValue>& values() const { return values_; }
  bool operator==(const Attributes& o) const { return values_ == o.values_; }

 private:
  const AttrValue& at(const std::string& name, const std::string& who) const;
  std::map<std::string, AttrValue> values_;
};

}  // namespace kiln
