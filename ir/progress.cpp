#include "ir/progress.h"

#include <atomic>
#include <mutex>

namespace kiln {
namespace {

std::mutex g_mutex;
ProgressSink g_sink;
std::atomic<bool> g_enabled{false};

}  // namespace

void set_progress_sink(ProgressSink sink) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_enabled.store(static_cast<bool>(sink));
  g_sink = std::move(sink);
}

void report_progress(const std::string& task, int64_t done, int64_t total) {
  if (!g_enabled.load()) return;
  ProgressSink sink;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    sink = g_sink;
  }
  if (sink) sink(task, done, total);
}

}  // namespace kiln
