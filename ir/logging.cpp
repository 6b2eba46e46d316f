#include "ir/logging.h"

#include <atomic>
#include <cstdio>
#include <mutex>

#include "ir/error.h"

namespace kiln {
namespace {

std::atomic<int> g_level{static_cast<int>(Severity::kWarning)};
std::mutex g_sink_mutex;
LogSink g_sink;  // empty: default sink

void default_sink(Severity s, const std::string& message) {
  std::fprintf(stderr, "[kiln] %s: %s\n", severity_name(s), message.c_str());
}

}  // namespace

const char* severity_name(Severity s) {
  switch (s) {
    case Severity::kError:
      return "ERROR";
    case Severity::kWarning:
      return "WARNING";
    case Severity::kInfo:
      return "INFO";
    case Severity::kVerbose:
      return "VERBOSE";
  }
  return "?";
}

Severity parse_severity(const std::string& name) {
  if (name == "error") return Severity::kError;
  if (name == "warning") return Severity::kWarning;
  if (name == "info") return Severity::kInfo;
  if (name == "verbose") return Severity::kVerbose;
  KILN_FAIL("unknown log level '" << name << "': use error, warning, info or verbose");
}

void set_log_level(Severity level) { g_level.store(static_cast<int>(level)); }
Severity log_level() { return static_cast<Severity>(g_level.load()); }
bool log_enabled(Severity s) { return static_cast<int>(s) <= g_level.load(); }

void set_log_sink(LogSink sink) {
  std::lock_guard<std::mutex> lock(g_sink_mutex);
  g_sink = std::move(sink);
}

void log_message(Severity s, const std::string& message) {
  LogSink sink;
  {
    std::lock_guard<std::mutex> lock(g_sink_mutex);
    sink = g_sink;
  }
  if (sink) {
    sink(s, message);
  } else {
    default_sink(s, message);
  }
}

}  // namespace kiln
