// INT8 post-training calibration in the native API (docs/quantization.md): a BuilderConfig with
// an Int8Calibrator makes the builder run the unquantized network over the calibrator's batches,
// record the range of every quantized activation, and build the network with those activations
// fake-quantized per tensor (symmetric, -127..127) and the weights fake-quantized per output
// channel, as kiln.compile's calibration does on the exported graph (py/kiln/calibration.py).
//
// What is quantized: the data input of each convolution and fully_connected layer whose weight is
// a constant, and that weight (its dim 0 is the output channel for both ops).
//
// The interface is the one users of other engines know: get_batch hands over one batch of host
// inputs at a time, read_cache / write_cache keep the ranges (a small text file, tensor name ->
// range) so that a rebuild skips the batches. A cache that does not match the network is refused
// with the names that differ.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "core/plan.h"
#include "ir/network.h"
#include "kernels/kernel.h"

namespace kiln {

enum class CalibrationAlgorithm : uint8_t {
  kEntropy,     // the clipping threshold with the least KL divergence after 8-bit quantization
  kMinMax,      // the largest magnitude seen
  kPercentile,  // the magnitude below which `percentile` % of the values fall
};
CalibrationAlgorithm parse_calibration_algorithm(const std::string& name);  // entropy, minmax, percentile
const char* calibration_algorithm_name(CalibrationAlgorithm algorithm);

// One network input of a calibration batch: row-major host memory in the input's dtype, valid
// until the next get_batch call.
struct CalibrationInput {
  std::string name;
  DataType dtype = DataType::kFloat32;  // must be the input's
  Dims dims;
  const void* data = nullptr;
};

class Int8Calibrator {
 public:
  virtual ~Int8Calibrator() = default;
  // Fills `batch` with one entry per network input (`names`, in the network's order) and returns
  // true, or returns false when no batch is left. Called until it returns false.
  virtual bool get_batch(const std::vector<std::string>& names, std::vector<CalibrationInput>& batch) = 0;
  // The text write_cache stored earlier, or "" (then the batches run).
  virtual std::string read_cache() { return ""; }
  virtual void write_cache(const std::string& cache) { (void)cache; }
  virtual CalibrationAlgorithm algorithm() const { return CalibrationAlgorithm::kEntropy; }
  virtual double percentile() const { return 99.99; }  // kPercentile: in (0, 100]
  virtual int num_bins() const { return 2048; }        // the |x| histogram's resolution, >= 256
};

// The calibrated range of one tensor from its |x| histogram (`hist[i]` counts values in
// [i * width, (i + 1) * width)). kMinMax needs no histogram: its range is the largest magnitude.
// Shared with kiln.Calibrator (py/kiln/calibration.py), which histograms on the compile device.
double calibrated_range(const std::vector<double>& hist, double width, CalibrationAlgorithm algorithm,
                        double percentile);

// Tensor name -> range, as the cache stores them (text: a header line, the algorithm, then one
// "name range" line per tensor, ranges as hexadecimal floats). parse throws a kiln::Error saying
// what is wrong with the text.
std::string format_calibration_cache(const std::vector<std::pair<std::string, double>>& ranges,
                                     CalibrationAlgorithm algorithm);
std::vector<std::pair<std::string, double>> parse_calibration_cache(const std::string& text);

// What calibration quantizes to: INT8 (convolution and fully_connected inputs per tensor, their
// weights per output channel, -127..127) or FP8 (fully_connected inputs and weights per tensor,
// float8 e4m3, scale = range / 448; the builder's quantize_fp8_gemms makes FP8 GEMMs of them).
enum class QuantFormat : uint8_t { kInt8, kFp8 };

// A tensor's per-tensor float8 e4m3 scale: max |w| / 448 (1 when every value is 0). FP8
// calibration puts weights on this grid, and quantize_fp8_gemms quantizes them with it.
float e4m3_tensor_scale(const Tensor& w);

// The network with fake_quantize layers before each quantized activation and fake-quantized
// weights, from the calibrator's cache when it has one, else by running the unquantized network
// over the batches on `backend` (the build's: on a GPU in float32, or on the reference backend;
// profiles: the build's, for dynamic inputs). Writes the cache after running. Layers named in
// `pinned` (BuilderConfig's per-layer precisions) are left unquantized.
Network quantize_network(const Network& network, Int8Calibrator& calibrator,
                         const std::vector<OptimizationProfile>& profiles,
                         QuantFormat format = QuantFormat::kInt8, const std::set<std::string>& pinned = {},
                         Backend backend = Backend::kReference);

}  // namespace kiln
