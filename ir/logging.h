// The library's one logger. Kiln writes nothing to stdout/stderr except through it.
// Default sink: stderr, "[kiln] WARNING: ...", for messages at or above the set level (warning).
#pragma once

#include <functional>
#include <sstream>
#include <string>

namespace kiln {

enum class Severity { kError = 0, kWarning = 1, kInfo = 2, kVerbose = 3 };

const char* severity_name(Severity s);
Severity parse_severity(const std::string& name);  // "error" | "warning" | "info" | "verbose"

using LogSink = std::function<void(Severity, const std::string&)>;

void set_log_level(Severity level);
Severity log_level();
bool log_enabled(Severity s);
// Replace the sink; an empty function restores the default stderr sink. Thread-safe.
void set_log_sink(LogSink sink);
void log_message(Severity s, const std::string& message);

}  // namespace kiln

#define KILN_LOG(severity, msg)                                                \
  do {                                                                         \
    if (::kiln::log_enabled(::kiln::Severity::severity)) {                     \
      std::ostringstream kiln_log_stream_;                                     \
      kiln_log_stream_ << msg;                                                 \
      ::kiln::log_message(::kiln::Severity::severity, kiln_log_stream_.str()); \
    }                                                                          \
  } while (0)
