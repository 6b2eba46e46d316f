// TorchScript graphs carry no reliable shapes, so Kiln observes them: the lowered graph runs in
// PyTorch on random inputs at the min, opt and max shapes of the input specs (and once more at
// opt with other data, which tells data-dependent sizes from static ones), and every top-level
// value of tensor, int, float, bool or int[] type is recorded. A dim that differs between runs
// is dynamic; the recorded shapes of a segment input give its optimization-profile range.
#pragma once

#include <torch/script.h>

#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace kiln::torchscript {

// One value in one run: a tensor's dtype and shape (and the tensor itself when it is small, for
// folding), or a scalar / int list.
struct Observed {
  bool is_tensor = false;
  c10::ScalarType dtype = c10::kFloat;
  std::vector<int64_t> shape;
  c10::IValue value;  // small tensors (numel <= kSmallTensor), numbers, int lists; else None
};

constexpr int64_t kSmallTensor = 64;

// Index of the runs in Observed vectors.
enum Run { kMinRun = 0, kOptRun = 1, kMaxRun = 2, kOptRerun = 3, kNumRuns = 4 };

using ValueRecord = std::unordered_map<const torch::jit::Value*, std::vector<Observed>>;

// What record_values throws when the graph fails on the inputs of one run (the module cannot
// take those shapes or dtypes): the run's index (a Run) and PyTorch's message.
struct RunFailure : std::runtime_error {
  RunFailure(size_t run, const std::string& message) : std::runtime_error(message), run(run) {}
  size_t run;
};

// Runs `graph` (its first input is `self`) once per entry of `runs` (the forward inputs) and
// records every top-level value; throws RunFailure for a run that fails. The graph is left as
// it was.
ValueRecord record_values(const std::shared_ptr<torch::jit::Graph>& graph, const c10::IValue& self,
                          const std::vector<std::vector<at::Tensor>>& runs);

}  // namespace kiln::torchscript
