#include "core/calibration.h"

#include "core/weight_transforms.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "core/builder.h"
#include "core/engine.h"
#include "core/passes/fused_names.h"
#include "ir/error.h"
#include "ir/float8.h"
#include "ir/logging.h"
#include "kernels/device.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

constexpr int kQmax = 127;  // symmetric int8: [-127, 127]
const char* const kCacheHeader = "# kiln calibration cache v1";

// A layer whose activation input and constant weight are quantized.
struct QuantizedLayer {
  size_t layer;
  TensorId activation;
  TensorId weight;
};

std::vector<QuantizedLayer> quantized_layers(const Network& net, QuantFormat format,
                                             const std::set<std::string>& pinned) {
  std::vector<QuantizedLayer> out;
  const auto& layers = net.layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& l = layers[i];
    if (l.op != "fully_connected" && (l.op != "convolution" || format == QuantFormat::kFp8)) continue;
    if (pinned.count(l.name)) continue;  // the user's precision for this layer holds
    if (l.inputs.size() < 2 || net.tensor(l.inputs[1]).kind != TensorKind::kConstant) continue;
    if (!is_floating(net.tensor(l.inputs[0]).dtype)) continue;
    out.push_back({i, l.inputs[0], l.inputs[1]});
  }
  return out;
}

// The second operand of a residual add whose sum INT8 layers read (directly or through an
// activation), where quantized convolutions compute both operands (directly or through a batch
// norm) for the add alone: ResNet's downsample branch. Calibrated and fake-quantized for the
// add, as TensorRT's implicit INT8 quantizes both inputs of a residual add, it lets the builder
// have that convolution write int8 and the block's last convolution read its residual in one byte
// (int8_residuals; the identity branch is some INT8 layer's input already). Returns (the add's
// layer index, the operand) pairs.
std::vector<std::pair<size_t, TensorId>> residual_operands(const Network& net,
                                                           const std::vector<QuantizedLayer>& quantized,
                                                           const std::vector<TensorId>& activations) {
  const std::set<TensorId> quantized_inputs(activations.begin(), activations.end());
  std::set<size_t> quantized_convs;
  for (const auto& q : quantized)
    if (net.layers()[q.layer].op == "convolution") quantized_convs.insert(q.layer);
  const std::vector<int> producer = net.producers();
  std::vector<int> readers(net.tensors().size(), 0);
  std::vector<int> reader(net.tensors().size(), -1);  // the last layer reading each tensor
  const auto& layers = net.layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    for (TensorId t : layers[i].inputs) {
      ++readers[static_cast<size_t>(t)];
      reader[static_cast<size_t>(t)] = static_cast<int>(i);
    }
  }
  const auto sole_reader = [&](TensorId t) {
    return readers[static_cast<size_t>(t)] == 1 && !net.is_output(t) ? reader[static_cast<size_t>(t)] : -1;
  };
  std::vector<std::pair<size_t, TensorId>> out;
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& add = layers[i];
    if (add.op != "elementwise" || add.attrs.get_string("op", add.name) != "add" || add.inputs.size() != 2 ||
        add.inputs[0] == add.inputs[1])
      continue;
    TensorId sum = add.outputs[0];
    const int act = sole_reader(sum);
    if (!quantized_inputs.count(sum) && act >= 0 && layers[static_cast<size_t>(act)].op == "activation")
      sum = layers[static_cast<size_t>(act)].outputs[0];
    if (!quantized_inputs.count(sum)) continue;
    // Whether a quantized convolution computes t (directly or through a batch norm) for the add alone.
    const auto from_conv = [&](TensorId t) {
      if (sole_reader(t) != static_cast<int>(i)) return false;
      int p = producer[static_cast<size_t>(t)];
      if (p >= 0 && layers[static_cast<size_t>(p)].op == "batch_norm") {
        const TensorId bn_in = layers[static_cast<size_t>(p)].inputs[0];
        p = sole_reader(bn_in) == p ? producer[static_cast<size_t>(bn_in)] : -1;
      }
      return p >= 0 && quantized_convs.count(static_cast<size_t>(p)) > 0;
    };
    // fuse_conv_epilogue fuses the add into the convolution computing its first operand, which
    // stays unquantized for that; the second, when a convolution computes it too, is quantized.
    const TensorId t = add.inputs[1];
    const Tensor& operand = net.tensor(t);
    if (quantized_inputs.count(t) || !is_floating(operand.dtype) ||
        operand.dims != net.tensor(add.outputs[0]).dims)
      continue;
    if (from_conv(add.inputs[0]) && from_conv(t)) out.emplace_back(i, t);
  }
  return out;
}

// Largest magnitude and |x| histogram of one tensor over every batch. The histogram covers
// [0, top); when a batch holds a larger magnitude, `top` doubles (neighbouring bins merge) until
// it covers it, so one pass over the batches suffices.
struct RangeObserver {
  double amax = 0.0;
  double top = 0.0;
  std::vector<double> hist;

  void observe(const TensorView& t, const std::string& name, int bins) {
    const int64_t n = volume(t.dims);
    double batch_max = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double v = std::fabs(load_element(t, i));
      KILN_CHECK(std::isfinite(v),
                 "INT8 calibration: " << name << " holds inf or NaN on a calibration batch");
      batch_max = std::max(batch_max, v);
    }
    amax = std::max(amax, batch_max);
    if (batch_max <= 0.0) return;
    if (hist.empty()) {
      hist.assign(static_cast<size_t>(bins), 0.0);
      top = batch_max;
    }
    while (batch_max > top) {
      for (size_t b = 0; b < hist.size() / 2; ++b) hist[b] = hist[2 * b] + hist[2 * b + 1];
      std::fill(hist.begin() + static_cast<std::ptrdiff_t>(hist.size() / 2), hist.end(), 0.0);
      top *= 2;
    }
    const double scale = static_cast<double>(hist.size()) / top;
    for (int64_t i = 0; i < n; ++i) {
      const auto b = static_cast<size_t>(std::fabs(load_element(t, i)) * scale);
      hist[std::min(b, hist.size() - 1)] += 1.0;
    }
  }

  double range(CalibrationAlgorithm algorithm, double percentile) const {
    if (algorithm == CalibrationAlgorithm::kMinMax || amax <= 0.0) return amax;
    return std::min(amax,
                    calibrated_range(hist, top / static_cast<double>(hist.size()), algorithm, percentile));
  }
};

double percentile_range(const std::vector<double>& hist, double width, double percentile) {
  double total = 0.0;
  for (double h : hist) total += h;
  if (total <= 0.0) return 0.0;
  const double want = total * percentile / 100.0;
  double cdf = 0.0;
  for (size_t k = 0; k < hist.size(); ++k) {
    cdf += hist[k];
    if (cdf >= want) return static_cast<double>(k + 1) * width;
  }
  return static_cast<double>(hist.size()) * width;
}

// For each threshold i (bins), p = hist[:i] with the clipped mass added to its last bin, q = the
// 128-level quantization of hist[:i] (each level's mass spread over its nonzero bins); the i with
// the least KL(p || q) wins (TensorRT's entropy calibrator's rule).
double entropy_range(const std::vector<double>& hist, double width) {
  const size_t n = hist.size(), levels = kQmax + 1;
  size_t best_i = n;
  double best_kl = std::numeric_limits<double>::infinity();
  std::vector<double> suffix(n + 1, 0.0);
  for (size_t k = n; k-- > 0;) suffix[k] = suffix[k + 1] + hist[k];
  std::vector<double> p, q;
  for (size_t i = levels; i <= n; ++i) {
    p.assign(hist.begin(), hist.begin() + static_cast<std::ptrdiff_t>(i));
    p[i - 1] += suffix[i];
    double p_total = 0.0;
    for (double v : p) p_total += v;
    if (p_total <= 0.0) continue;
    q.assign(i, 0.0);
    for (size_t g = 0; g < levels; ++g) {
      const size_t lo = g * i / levels, hi = (g + 1) * i / levels;
      double sum = 0.0, nonzero = 0.0;
      for (size_t k = lo; k < hi; ++k) {
        sum += hist[k];
        nonzero += hist[k] != 0.0 ? 1.0 : 0.0;
      }
      if (nonzero <= 0.0) continue;
      for (size_t k = lo; k < hi; ++k) q[k] = hist[k] != 0.0 ? sum / nonzero : 0.0;
    }
    double q_total = 0.0;
    for (double v : q) q_total += v;
    if (q_total <= 0.0) continue;
    double kl = 0.0;
    for (size_t k = 0; k < i; ++k) {
      if (p[k] <= 0.0) continue;
      const double pk = p[k] / p_total, qk = q[k] > 0.0 ? q[k] / q_total : 1e-12;
      kl += pk * std::log(pk / qk);
    }
    if (kl < best_kl) {
      best_kl = kl;
      best_i = i;
    }
  }
  return (static_cast<double>(best_i) + 0.5) * width;
}

// Runs the network's batches on `backend` (on a GPU: the float32 network, inputs copied in and the
// observed tensors copied out after each batch) and returns each quantized activation's range, by
// name.
std::map<std::string, double> run_batches(const Network& network, const std::vector<TensorId>& activations,
                                          Int8Calibrator& calibrator,
                                          const std::vector<OptimizationProfile>& profiles, Backend backend) {
  Network observed = network;
  std::vector<std::string> names;  // of the activations: observed as outputs, or inputs fed
  std::set<std::string> inputs;
  for (TensorId t : network.inputs()) inputs.insert(network.tensor(t).name);
  for (TensorId t : activations) {
    names.push_back(network.tensor(t).name);
    if (!inputs.count(names.back()) && !observed.is_output(t)) observed.mark_output(t);
  }
  const bool cuda = backend == Backend::kCuda;
  BuilderConfig config;
  config.target = cuda ? BuildTarget::kCuda : BuildTarget::kReference;
  config.optimization_level = 0;  // every observed tensor is computed as the network says
  config.profiles = profiles;
  auto engine = Engine::create(Builder().build(observed, config), backend);
  auto ctx = engine->create_execution_context();
  std::map<std::string, RangeObserver> observers;
  const int bins = calibrator.num_bins();
  KILN_CHECK(bins >= 256, "INT8 calibration: num_bins must be at least 256, got " << bins);
  std::vector<CalibrationInput> batch;
  int count = 0;
  while (true) {
    batch.clear();
    if (!calibrator.get_batch(engine->input_names(), batch)) break;
    ++count;
    std::map<std::string, const CalibrationInput*> given;
    for (const auto& in : batch) given[in.name] = &in;
    std::deque<DeviceBuffer> device;  // this batch's inputs and outputs on the GPU
    for (const std::string& name : engine->input_names()) {
      auto it = given.find(name);
      KILN_CHECK(it != given.end() && it->second->data,
                 "INT8 calibration: batch " << count << " has no data for input '" << name << "'");
      const DataType want = engine->binding(name).dtype;
      KILN_CHECK(it->second->dtype == want, "INT8 calibration: batch "
                                                << count << " input '" << name << "' is "
                                                << dtype_name(it->second->dtype)
                                                << ", the network's input is " << dtype_name(want));
      ctx->set_input_shape(name, it->second->dims);
      void* address = const_cast<void*>(it->second->data);
      if (cuda) {
        const size_t bytes = static_cast<size_t>(volume(it->second->dims)) * dtype_size(want);
        address = device.emplace_back(bytes ? bytes : 1).p;
        copy_to_device(address, it->second->data, bytes);
      }
      ctx->set_tensor_address(name, address);
    }
    KILN_CHECK(given.size() == engine->input_names().size(),
               "INT8 calibration: batch " << count << " has " << given.size() << " inputs, the network "
                                          << engine->input_names().size());
    std::map<std::string, std::vector<uint8_t>> outputs;
    std::map<std::string, void*> on_device;
    for (const std::string& name : engine->output_names()) {
      const Dims dims = ctx->tensor_shape(name);
      auto& buf = outputs[name];
      buf.resize(static_cast<size_t>(volume(dims)) * dtype_size(engine->binding(name).dtype) + 1);
      void* address = buf.data();
      if (cuda) address = on_device[name] = device.emplace_back(buf.size()).p;
      ctx->set_tensor_address(name, address);
    }
    ctx->enqueue(nullptr);
    if (cuda) {
      synchronize_stream(nullptr);
      for (const std::string& name : names) {
        auto found = on_device.find(name);
        if (found != on_device.end()) copy_to_host(outputs[name].data(), found->second, outputs[name].size());
      }
    }
    for (const std::string& name : names) {
      const bool is_input = given.count(name) > 0;
      const void* data = is_input ? given[name]->data : outputs.at(name).data();
      const TensorView view{const_cast<void*>(data), engine->binding(name).dtype, ctx->tensor_shape(name)};
      observers[name].observe(view, name, bins);
    }
    KILN_LOG(kInfo, "INT8 calibration (" << calibration_algorithm_name(calibrator.algorithm()) << ", on the "
                                         << (cuda ? "GPU" : "reference backend") << "): batch " << count
                                         << " done");
  }
  KILN_CHECK(count > 0, "INT8 calibration: the calibrator gave no batches (and no cache)");
  std::map<std::string, double> ranges;
  for (const std::string& name : names)
    ranges[name] = observers[name].range(calibrator.algorithm(), calibrator.percentile());
  return ranges;
}

std::shared_ptr<std::vector<uint8_t>> fake_quantize_per_channel(const Tensor& w) {
  const int64_t n = volume(w.dims), channels = w.dims.empty() ? 1 : w.dims[0];
  const int64_t per = channels > 0 ? n / channels : 0;
  auto bytes = std::make_shared<std::vector<uint8_t>>(*w.data);
  const TensorView in{const_cast<uint8_t*>(w.data->data()), w.dtype, w.dims};
  const TensorView out{bytes->data(), w.dtype, w.dims};
  for (int64_t c = 0; c < channels; ++c) {
    float amax = 0.0f;
    for (int64_t j = 0; j < per; ++j)
      amax = std::max(amax, std::fabs(static_cast<float>(load_element(in, c * per + j))));
    if (amax <= 0.0f) continue;
    // torch's fake_quantize_per_channel_affine in float32: 1 / scale rounded to float first.
    const float scale = amax / kQmax, inv = 1.0f / scale;
    for (int64_t j = 0; j < per; ++j) {
      const float x = static_cast<float>(load_element(in, c * per + j));
      const float q = std::min(std::max(std::nearbyint(x * inv), float{-kQmax}), float{kQmax});
      store_element(out, c * per + j, static_cast<double>(q * scale));
    }
  }
  return bytes;
}

// A weight on its per-tensor e4m3 grid (scale = max |W| / 448), in its own dtype.
std::shared_ptr<std::vector<uint8_t>> fake_quantize_e4m3(const Tensor& w) {
  const int64_t n = volume(w.dims);
  auto bytes = std::make_shared<std::vector<uint8_t>>(*w.data);
  const TensorView in{const_cast<uint8_t*>(w.data->data()), w.dtype, w.dims};
  const TensorView out{bytes->data(), w.dtype, w.dims};
  const float scale = e4m3_tensor_scale(w), inv = 1.0f / scale;
  for (int64_t j = 0; j < n; ++j) {
    const float q = e4m3_to_float(float_to_e4m3(static_cast<float>(load_element(in, j)) * inv));
    store_element(out, j, static_cast<double>(q * scale));
  }
  return bytes;
}

}  // namespace

float e4m3_tensor_scale(const Tensor& w) {
  const TensorView v{const_cast<uint8_t*>(w.data->data()), w.dtype, w.dims};
  float amax = 0.0f;
  for (int64_t j = 0; j < volume(w.dims); ++j)
    amax = std::max(amax, std::fabs(static_cast<float>(load_element(v, j))));
  return amax > 0.0f ? amax / kFloat8E4M3Max : 1.0f;
}

CalibrationAlgorithm parse_calibration_algorithm(const std::string& name) {
  if (name == "entropy") return CalibrationAlgorithm::kEntropy;
  if (name == "minmax") return CalibrationAlgorithm::kMinMax;
  if (name == "percentile") return CalibrationAlgorithm::kPercentile;
  KILN_FAIL("unknown calibration algorithm '" << name << "': use entropy, minmax or percentile");
}

const char* calibration_algorithm_name(CalibrationAlgorithm algorithm) {
  switch (algorithm) {
    case CalibrationAlgorithm::kMinMax:
      return "minmax";
    case CalibrationAlgorithm::kPercentile:
      return "percentile";
    default:
      return "entropy";
  }
}

double calibrated_range(const std::vector<double>& hist, double width, CalibrationAlgorithm algorithm,
                        double percentile) {
  KILN_CHECK(width >= 0.0 && std::isfinite(width), "calibrated_range: bad bin width " << width);
  if (hist.empty()) return 0.0;
  switch (algorithm) {
    case CalibrationAlgorithm::kPercentile:
      KILN_CHECK(percentile > 0.0 && percentile <= 100.0,
                 "percentile must be in (0, 100], got " << percentile);
      return percentile_range(hist, width, percentile);
    case CalibrationAlgorithm::kEntropy:
      return entropy_range(hist, width);
    default:
      return static_cast<double>(hist.size()) * width;  // minmax: the histogram's whole span
  }
}

std::string format_calibration_cache(const std::vector<std::pair<std::string, double>>& ranges,
                                     CalibrationAlgorithm algorithm) {
  std::ostringstream os;
  os << kCacheHeader << "\nalgorithm " << calibration_algorithm_name(algorithm) << "\n";
  for (const auto& [name, range] : ranges) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%a", range);
    os << name << " " << buf << "\n";
  }
  return os.str();
}

std::vector<std::pair<std::string, double>> parse_calibration_cache(const std::string& text) {
  std::istringstream is(text);
  std::string line;
  KILN_CHECK(std::getline(is, line) && line == kCacheHeader,
             "the calibration cache is not a Kiln calibration cache (its first line is not '"
                 << kCacheHeader << "'); delete it to calibrate again");
  std::vector<std::pair<std::string, double>> ranges;
  for (int k = 2; std::getline(is, line); ++k) {
    if (line.empty() || line.rfind("algorithm ", 0) == 0) continue;
    const size_t space = line.find(' ');
    const std::string name = line.substr(0, space),
                      value = space == std::string::npos ? "" : line.substr(space + 1);
    char* end = nullptr;
    const double range = value.empty() ? 0.0 : std::strtod(value.c_str(), &end);
    KILN_CHECK(!value.empty() && end && *end == '\0' && value.find(' ') == std::string::npos,
               "the calibration cache's line " << k << " is not 'name range': '" << line.substr(0, 80)
                                               << "'; delete the cache to calibrate again");
    KILN_CHECK(std::isfinite(range) && range >= 0.0,
               "the calibration cache's line " << k << ": the range must be >= 0");
    ranges.emplace_back(name, range);
  }
  return ranges;
}

Network quantize_network(const Network& network, Int8Calibrator& calibrator,
                         const std::vector<OptimizationProfile>& profiles, QuantFormat format,
                         const std::set<std::string>& pinned, Backend backend) {
  const bool fp8 = format == QuantFormat::kFp8;
  const std::vector<QuantizedLayer> quantized = quantized_layers(network, format, pinned);
  KILN_CHECK(!quantized.empty(), (fp8 ? "FP8" : "INT8")
                                     << " calibration: the network has no "
                                     << (fp8 ? "fully_connected" : "convolution or fully_connected")
                                     << " layer with a constant weight to quantize");
  std::vector<TensorId> activations;
  for (const auto& q : quantized) {
    if (std::find(activations.begin(), activations.end(), q.activation) == activations.end())
      activations.push_back(q.activation);
  }
  const std::vector<std::pair<size_t, TensorId>> residuals =
      fp8 ? std::vector<std::pair<size_t, TensorId>>{} : residual_operands(network, quantized, activations);
  std::vector<TensorId> observed = activations;
  for (const auto& r : residuals) observed.push_back(r.second);
  std::set<std::string> wanted;
  for (TensorId t : observed) wanted.insert(network.tensor(t).name);

  std::map<std::string, double> ranges;
  const std::string cache = calibrator.read_cache();
  if (!cache.empty()) {
    for (const auto& [name, range] : parse_calibration_cache(cache)) ranges[name] = range;
    std::vector<std::string> extra, lacking;
    for (const auto& kv : ranges)
      if (!wanted.count(kv.first)) extra.push_back(kv.first);
    for (const auto& name : wanted)
      if (!ranges.count(name)) lacking.push_back(name);
    if (!extra.empty() || !lacking.empty()) {
      std::ostringstream os;
      os << "the calibration cache was made for another network: it has ranges for " << extra.size()
         << " tensors this network does not have (" << (extra.empty() ? "-" : extra[0]) << ") and lacks "
         << lacking.size() << " it needs (" << (lacking.empty() ? "-" : lacking[0])
         << "). Delete it or give another cache.";
      KILN_FAIL(os.str());
    }
  } else {
    ranges = run_batches(network, observed, calibrator, profiles, backend);
    calibrator.write_cache(format_calibration_cache({ranges.begin(), ranges.end()}, calibrator.algorithm()));
  }

  Network net = network;
  std::set<std::string> used;  // layer and tensor names, for the ones added here
  for (const auto& l : net.layers()) used.insert(l.name);
  for (const auto& t : net.tensors()) used.insert(t.name);
  std::vector<Layer> old = std::move(net.mutable_layers());
  net.mutable_layers().clear();
  std::map<TensorId, TensorId> fake_quantized;  // activation -> its fake_quantize output
  // The fake_quantize of `t` (made once, before the layer being added), or -1 for a range of 0.
  const auto fake_quantize_of = [&](TensorId t) -> TensorId {
    const std::string act = network.tensor(t).name;
    const double range = ranges.at(act);
    if (range > 0.0 && !fake_quantized.count(t)) {
      const std::string tag = fp8 ? "/fp8" : "/int8";
      const float scale = static_cast<float>(range / (fp8 ? double{kFloat8E4M3Max} : double{kQmax}));
      const TensorId s = net.add_constant(unique_name(used, act + tag + "_scale"), DataType::kFloat32, {1},
                                          &scale, sizeof scale);
      std::vector<TensorId> in = {t, s};
      Attributes attrs;
      if (fp8) {
        attrs.set("format", std::string("e4m3"));
      } else {
        const int32_t zero = 0;
        in.push_back(net.add_constant(unique_name(used, act + "/int8_zero_point"), DataType::kInt32, {1},
                                      &zero, sizeof zero));
        attrs.set("quant_min", int64_t{-kQmax});
        attrs.set("quant_max", int64_t{kQmax});
        attrs.set("calibrated", int64_t{1});  // the builder may quantize the tensor's other readers too
      }
      const std::string fq_name = unique_name(used, act + tag + "_fake_quantize");
      fake_quantized[t] = net.add_layer("fake_quantize", in, attrs, fq_name).outputs[0];
    }
    const auto found = fake_quantized.find(t);
    return found == fake_quantized.end() ? TensorId{-1} : found->second;
  };
  size_t next = 0, next_residual = 0;
  for (size_t i = 0; i < old.size(); ++i) {
    Layer layer = std::move(old[i]);
    for (; next_residual < residuals.size() && residuals[next_residual].first == i; ++next_residual) {
      const TensorId t = residuals[next_residual].second, fq = fake_quantize_of(t);
      if (fq < 0) continue;
      for (TensorId& in : layer.inputs)
        if (in == t) in = fq;
    }
    if (next < quantized.size() && quantized[next].layer == i) {
      const QuantizedLayer& q = quantized[next++];
      const TensorId fq = fake_quantize_of(q.activation);
      if (fq >= 0) layer.inputs[0] = fq;
      const Tensor w = net.tensor(q.weight);  // a copy: add_constant may move the tensor list
      LineagePtr lineage = blocked_lineage(
          net, {q.weight}, "refit of calibrated INT8/FP8 weights is not supported yet", w.dtype, w.dims);
      layer.inputs[1] = fp8 ? net.add_constant(unique_name(used, w.name + "/fp8_per_tensor"), w.dtype, w.dims,
                                               fake_quantize_e4m3(w))
                            : net.add_constant(unique_name(used, w.name + "/int8_per_channel"), w.dtype,
                                               w.dims, fake_quantize_per_channel(w));
      net.tensor(layer.inputs[1]).lineage = std::move(lineage);
    }
    net.mutable_layers().push_back(std::move(layer));
  }
  net.compact();
  KILN_LOG(kInfo, (fp8 ? "FP8" : "INT8")
                      << " calibration: " << fake_quantized.size() << " activations (" << residuals.size()
                      << " residual add operands) and " << quantized.size() << " weights quantized");
  return net;
}

}  // namespace kiln
