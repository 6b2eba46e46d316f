#include "ir/attributes.h"

#include "ir/error.h"

namespace kiln {

const AttrValue& Attributes::at(const std::string& name, const std::string& who) const {
  auto it = values_.find(name);
  KILN_CHECK(it != values_.end(), who << ": missing attribute '" << name << "'");
  return it->second;
}

int64_t Attributes::get_int(const std::string& name, const std::string& who) const {
  const auto& v = at(name, who);
  KILN_CHECK(std::holds_alternative<int64_t>(v), who << ": attribute '" << name << "' must be an int");
  return std::get<int64_t>(v);
}

int64_t Attributes::get_int(const std::string& name, int64_t fallback) const {
  auto it = values_.find(name);
  if (it == values_.end() || !std::holds_alternative<int64_t>(it->second)) return fallback;
  return std::get<int64_t>(it->second);
}

double Attributes::get_float(const std::string& name, const std::string& who) const {
  const auto& v = at(name, who);
  if (std::holds_alternative<int64_t>(v)) return static_cast<double>(std::get<int64_t>(v));
  KILN_CHECK(std::holds_alternative<double>(v), who << ": attribute '" << name << "' must be a float");
  return std::get<double>(v);
}

double Attributes::get_float(const std::string& name, double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  if (std::holds_alternative<int64_t>(it->second)) return static_cast<double>(std::get<int64_t>(it->second));
  if (std::holds_alternative<double>(it->second)) return std::get<double>(it->second);
  return fallback;
}

std::vector<int64_t> Attributes::get_ints(const std::string& name, const std::string& who) const {
  const auto& v = at(name, who);
  KILN_CHECK(std::holds_alternative<std::vector<int64_t>>(v),
             who << ": attribute '" << name << "' must be a list of ints");
  return std::get<std::vector<int64_t>>(v);
}

std::string Attributes::get_string(const std::string& name, const std::string& who) const {
  const auto& v = at(name, who);
  KILN_CHECK(std::holds_alternative<std::string>(v), who << ": attribute '" << name << "' must be a string");
  return std::get<std::string>(v);
}

}  // namespace kiln
