// Progress of long steps (the compile driver's engines, tactic timing): a sink that front ends
// show as progress bars (kiln/progress.py: tqdm when attached to a terminal). Without a sink,
// reporting costs one atomic load and nothing is shown.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace kiln {

using ProgressSink = std::function<void(const std::string& task, int64_t done, int64_t total)>;

// Replace the sink (empty: none). Thread-safe.
void set_progress_sink(ProgressSink sink);
// `done` of `total` units of `task` are finished (0 of total: the task starts).
void report_progress(const std::string& task, int64_t done, int64_t total);

}  // namespace kiln
