// choose_tactics: build step 6. For every layer whose kernel on the target backend reports
// num_tactics() > 1 (kernels/kernel.h), time each tactic at the first optimization profile's opt
// shapes and store the fastest in the layer's int attribute "tactic" (one the kernel calls less
// precise only when it beats every other by kLessPreciseMargin), which the plan keeps and
// the kernel's factory reads at load time. Tactics that throw are skipped, and so are tactics
// whose output disagrees with the first tactic's on the same inputs (the CUDA timer checks);
// when every tactic fails, the layer keeps the kernel's heuristic (no attribute). A timing cache
// (timing_cache.h) answers layers timed before, in this build or an earlier one, without running anything.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/plan.h"
#include "core/timing_cache.h"
#include "ir/network.h"
#include "kernels/kernel.h"

namespace kiln {

// How much faster than every other tactic a less precise one (Kernel::less_precise_tactic) must
// be to be chosen: within 10% the more precise one wins.
constexpr double kLessPreciseMargin = 1.10;
// The margin in use: KILN_LESS_PRECISE_MARGIN (a number >= 1; "inf" never takes such a tactic)
// when set, else kLessPreciseMargin. A malformed value throws, naming the variable.
double less_precise_margin();

// Times every tactic of one layer: element t is tactic t's time in milliseconds, or nullopt
// when the tactic cannot run for these shapes. `inputs`/`outputs` have concrete dims.
using TacticTimer = std::function<std::vector<std::optional<double>>(const Layer& layer, int num_tactics,
                                                                     const std::vector<TensorDesc>& inputs,
                                                                     const std::vector<TensorDesc>& outputs)>;

struct TacticStats {
  int layers = 0;      // layers with several tactics
  int timed = 0;       // of them, timed in this build
  int cache_hits = 0;  // of them, answered by the timing cache
};

// Returns whether any layer's "tactic" attribute changed. `cache` may be null.
bool choose_tactics(Network& net, const std::vector<OptimizationProfile>& profiles, Backend backend,
                    const TacticTimer& timer, TimingCache* cache, const TimingEnvironment& env,
                    TacticStats* stats = nullptr);

// How far a tactic's output may be from the first tactic's on the same inputs: the relative L2
// distance of the sampled values (tactics sum in other orders, round an int8 value to the other
// neighbour, or round once more (less precise tactics): far below this; a tactic that computes
// something else, or leaves its output unwritten, lands near 1 or beyond).
constexpr double kTacticAgreement = 0.05;
// Values of each output compared: all of a smaller output, else every s-th (s prime to 210, so
// that the samples do not fall on one channel of a packed layout).
constexpr size_t kTacticSamples = size_t{1} << 16;

// The stride at which `elements` values are sampled (1: all of them).
size_t tactic_sample_stride(size_t elements);
// Whether `candidate` (samples of a tactic's output, dtype `dtype`) agrees with `baseline` (the
// same samples of the first tactic's output): "" when it does, else what differs. Values that
// are NaN or infinite in one and finite in the other count against it (outputs are filled with
// NaN bytes before each tactic runs, so an unwritten output shows as NaN), beyond one in a
// thousand; the finite ones must lie within kTacticAgreement (relative L2).
std::string tactic_outputs_disagree(DataType dtype, const std::vector<uint8_t>& baseline,
                                    const std::vector<uint8_t>& candidate);

// The real timer: runs the layer alone on the current GPU, on its own stream, with random
// inputs (constants: the layer's real weights), a workspace of `workspace_bytes`, a few warm-up
// runs and CUDA-event timing of the rest. Each tactic's first run is checked against the first
// tactic that ran (tactic_outputs_disagree); one that disagrees is not timed, with a warning.
TacticTimer cuda_tactic_timer(const Network& net, size_t workspace_bytes);

}  // namespace kiln
