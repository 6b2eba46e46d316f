// Errors and the one check macro. Every failure Kiln reports to a user is a kiln::Error whose
// message says what is wrong, where (layer / tensor / plan section), and what to do next.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace kiln {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace kiln

// KILN_CHECK(cond, "conv " << layer.name << ": groups must divide C") throws kiln::Error.
#define KILN_CHECK(cond, msg)                        \
  do {                                               \
    if (!(cond)) {                                   \
      std::ostringstream kiln_check_stream_;         \
      kiln_check_stream_ << msg;                     \
      throw ::kiln::Error(kiln_check_stream_.str()); \
    }                                                \
  } while (0)

#define KILN_FAIL(msg) KILN_CHECK(false, msg)
