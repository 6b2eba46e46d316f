#include "core/tactics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <sstream>

#include "ir/error.h"
#include "ir/logging.h"
#include "ir/op_schema.h"
#include "ir/progress.h"
#include "kernels/device.h"
#include "kernels/reference/host_access.h"

namespace kiln {

double less_precise_margin() {
  const char* v = std::getenv("KILN_LESS_PRECISE_MARGIN");
  if (!v || !*v) return kLessPreciseMargin;
  char* end = nullptr;
  const double m = std::strtod(v, &end);
  KILN_CHECK(end && *end == '\0' && m >= 1.0,
             "KILN_LESS_PRECISE_MARGIN=" << v
                                         << ": expected a number >= 1 (or inf); unset it for the default "
                                         << kLessPreciseMargin);
  return m;
}

size_t tactic_sample_stride(size_t elements) {
  if (elements <= kTacticSamples) return 1;
  size_t stride = (elements + kTacticSamples - 1) / kTacticSamples;
  while (stride % 2 == 0 || stride % 3 == 0 || stride % 5 == 0 || stride % 7 == 0) ++stride;
  return stride;
}

std::string tactic_outputs_disagree(DataType dtype, const std::vector<uint8_t>& baseline,
                                    const std::vector<uint8_t>& candidate) {
  const size_t size = dtype_size(dtype);
  KILN_CHECK(baseline.size() == candidate.size() && baseline.size() % size == 0,
             "tactic_outputs_disagree: " << baseline.size() << " and " << candidate.size() << " bytes of "
                                         << dtype_name(dtype));
  const int64_t n = static_cast<int64_t>(baseline.size() / size);
  const TensorView a{const_cast<uint8_t*>(baseline.data()), dtype, {n}};
  const TensorView b{const_cast<uint8_t*>(candidate.data()), dtype, {n}};
  int64_t odd = 0;  // finite in one, not in the other (or NaN against infinity)
  double diff = 0.0, norm_a = 0.0, norm_b = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = load_element(a, i), y = load_element(b, i);
    if (!std::isfinite(x) || !std::isfinite(y)) {
      odd += !(x == y || (std::isnan(x) && std::isnan(y)));
      continue;
    }
    diff += (x - y) * (x - y);
    norm_a += x * x;
    norm_b += y * y;
  }
  std::ostringstream why;
  if (odd > std::max<int64_t>(1, n / 1000)) {
    why << odd << " of " << n << " compared values are NaN or infinite in one output and not in the other";
    return why.str();
  }
  const double scale = std::sqrt(std::max(norm_a, norm_b));
  const double distance = scale > 0.0 ? std::sqrt(diff) / scale : 0.0;
  if (distance > kTacticAgreement) {
    why << "relative L2 distance " << distance << " over " << n << " compared values (at most "
        << kTacticAgreement << ")";
    return why.str();
  }
  return "";
}

bool choose_tactics(Network& net, const std::vector<OptimizationProfile>& profiles, Backend backend,
                    const TacticTimer& timer, TimingCache* cache, const TimingEnvironment& env,
                    TacticStats* stats) {
  TacticStats local;
  TacticStats& st = stats ? *stats : local;
  // Which layers have a choice at all; most have one implementation and cost nothing here.
  std::vector<std::pair<size_t, int>> candidates;  // (layer, num_tactics)
  std::vector<std::string> kernel_names(net.layers().size());
  std::vector<std::vector<bool>> less_precise(net.layers().size());
  for (size_t i = 0; i < net.layers().size(); ++i) {
    Layer l = net.layers()[i];
    l.attrs.set("tactic", int64_t{-1});  // the heuristic kernel reports the tactic count
    auto k = create_kernel(l, backend);
    if (k->num_tactics() > 1) {
      candidates.push_back({i, k->num_tactics()});
      kernel_names[i] = k->name();
      for (int t = 0; t < k->num_tactics(); ++t) less_precise[i].push_back(k->less_precise_tactic(t));
    }
  }
  if (candidates.empty()) return false;
  const double margin = less_precise_margin();
  const OptimizationProfile none;
  const std::vector<TensorDesc> desc =
      infer_descs(net, profile_shapes(net, profiles.empty() ? none : profiles[0], "opt"));
  bool changed = false;
  const auto total = static_cast<int64_t>(candidates.size());
  int64_t done = 0;
  report_progress("tactic timing", 0, total);
  for (const auto& [index, count] : candidates) {
    Layer& layer = net.mutable_layers()[index];
    ++st.layers;
    report_progress("tactic timing", done++, total);
    std::vector<TensorDesc> in, out;
    for (TensorId t : layer.inputs) in.push_back(desc[t]);
    for (TensorId t : layer.outputs) out.push_back(desc[t]);
    // The tactic count is part of the key: a timing over another set of tactics (cuDNN's graph
    // tactics, timed with KILN_CUDNN_GRAPH=1 only) is another entry.
    // A margin other than the default picks among less precise tactics differently: its own entry.
    std::string kernel_key = kernel_names[index] + "/" + std::to_string(count);
    if (margin != kLessPreciseMargin &&
        std::find(less_precise[index].begin(), less_precise[index].end(), true) != less_precise[index].end())
      kernel_key += "/margin " + std::to_string(margin);
    const std::string key = timing_cache_key(layer, kernel_key, in, env);
    int best = -1;
    double best_ms = 0.0;
    const TimingCache::Entry* hit = cache ? cache->find(key) : nullptr;
    if (hit && hit->tactic < count) {
      best = hit->tactic;
      best_ms = hit->ms;
      ++st.cache_hits;
      KILN_LOG(kVerbose, "builder: " << describe(layer) << ": tactic " << best << " of " << count
                                     << " from the timing cache (" << best_ms << " ms)");
    } else {
      ++st.timed;
      std::vector<std::optional<double>> times = timer(layer, count, in, out);
      std::ostringstream all;
      double best_rank = 0.0;  // the time, a less precise tactic's times the margin
      for (int t = 0; t < count && t < static_cast<int>(times.size()); ++t) {
        all << (t ? ", " : "") << t << ": ";
        if (!times[t]) {
          all << "failed";
          continue;
        }
        const bool coarse = less_precise[index][static_cast<size_t>(t)];
        all << *times[t] << " ms" << (coarse ? " (less precise)" : "");
        const double rank = *times[t] * (coarse ? margin : 1.0);
        if (best < 0 || rank < best_rank) {
          best = t;
          best_ms = *times[t];
          best_rank = rank;
        }
      }
      if (best < 0) {
        KILN_LOG(kWarning, "builder: " << describe(layer) << ": none of its " << count
                                       << " tactics ran; keeping the kernel's heuristic choice");
        continue;
      }
      KILN_LOG(kInfo, "builder: " << describe(layer) << " [" << kernel_names[index] << "]: tactic " << best
                                  << " (" << all.str() << ")");
      if (cache) cache->insert(key, {best, best_ms});
    }
    if (layer.attrs.get_int("tactic", int64_t{-1}) != best) {
      layer.attrs.set("tactic", int64_t{best});
      changed = true;
    }
  }
  report_progress("tactic timing", total, total);
  return changed;
}

namespace {

// Floats drawn per timing input: larger inputs repeat this many random values (a batch-256
// activation has 10^8 elements, drawn one by one they took seconds per layer on the host; the
// kernels' speed does not depend on the values' period).
constexpr int64_t kTimingRandomPeriod = int64_t{1} << 16;

// Host bytes for a timing input: the weights of a constant, the tracked values of a shape
// tensor, uniform int8 values in [-127, 127] for int8 tensors (quantized values), zeros for
// other integer tensors (safe as indices), uniform [-1, 1) floats otherwise (float8 too)
// (kTimingRandomPeriod of them, repeated).
std::vector<uint8_t> timing_input(const Network& net, TensorId id, const TensorDesc& d, std::mt19937& gen) {
  const Tensor& t = net.tensor(id);
  if (t.kind == TensorKind::kConstant) return *t.data;
  const int64_t n = volume(d.dims);
  std::vector<uint8_t> bytes(static_cast<size_t>(n) * dtype_size(d.dtype), 0);
  TensorView view{bytes.data(), d.dtype, d.dims};
  const bool floating = d.dtype == DataType::kFloat32 || d.dtype == DataType::kFloat16 ||
                        d.dtype == DataType::kBFloat16 || d.dtype == DataType::kFloat8E4M3;
  if (fully_known(d.values) && static_cast<int64_t>(d.values->size()) == n) {
    for (int64_t i = 0; i < n; ++i) store_element(view, i, static_cast<double>((*d.values)[i]));
  } else if (floating || d.dtype == DataType::kInt8) {
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    std::uniform_int_distribution<int> quantized(-127, 127);
    const int64_t period = std::min(n, kTimingRandomPeriod);
    for (int64_t i = 0; i < period; ++i) store_element(view, i, floating ? dist(gen) : quantized(gen));
    const size_t block = static_cast<size_t>(period) * dtype_size(d.dtype);
    for (size_t at = block; at < bytes.size(); at += block) {
      std::memcpy(bytes.data() + at, bytes.data(), std::min(block, bytes.size() - at));
    }
  }
  return bytes;
}

// Stream, handles, events and workspace shared by every timing of one build (created on first
// use: cuDNN handle creation alone can take milliseconds).
struct TimerResources {
  void* stream = nullptr;
  void* cublaslt = nullptr;
  void* cudnn = nullptr;
  void* start = nullptr;
  void* stop = nullptr;
  std::unique_ptr<DeviceBuffer> workspace;
  std::unique_ptr<DeviceBuffer> large_workspace;  // for tactics that want more (workspace_wanted)
  size_t large_workspace_bytes = 0;
  explicit TimerResources(size_t workspace_bytes) {
    try {
      workspace = std::make_unique<DeviceBuffer>(workspace_bytes);
      stream = create_stream();
      cublaslt = create_cublaslt_handle();
      start = create_event();
      stop = create_event();
    } catch (...) {
      release();
      throw;
    }
  }
  ~TimerResources() { release(); }
  void release() noexcept {
    destroy_event(start);
    destroy_event(stop);
    destroy_cudnn_handle(cudnn);
    destroy_cublaslt_handle(cublaslt);
    destroy_stream(stream);
    start = stop = cudnn = cublaslt = stream = nullptr;
  }
};

constexpr int kWarmupRuns = 3;
constexpr int kTimedRounds = 3;
constexpr int kRunsPerRound = 5;
constexpr double kAbandonFactor = 20.0;
constexpr double kAbandonMinMs = 0.05;
constexpr double kWarmupDelayUs = 500.0;

// Milliseconds per run of `run_once`, from replays of a CUDA graph holding kRunsPerRound runs
// (best of kTimedRounds replays); nullopt when the runs cannot be captured (then the caller times
// plain launches).
std::optional<double> time_as_graph(TimerResources& r, const std::function<void()>& run_once) {
  begin_capture(r.stream);
  try {
    for (int i = 0; i < kRunsPerRound; ++i) run_once();
  } catch (const std::exception&) {
    destroy_graph(end_capture(r.stream));
    return std::nullopt;
  }
  void* graph = end_capture(r.stream);
  if (!graph) return std::nullopt;
  void* exec = nullptr;
  try {
    exec = instantiate_graph(graph);
  } catch (const std::exception&) {
    destroy_graph(graph);
    return std::nullopt;
  }
  destroy_graph(graph);
  double best = 0.0;
  try {
    launch_graph(exec, r.stream);  // warm-up replay
    for (int round = 0; round < kTimedRounds; ++round) {
      record_event(r.start, r.stream);
      launch_graph(exec, r.stream);
      record_event(r.stop, r.stream);
      double ms = event_elapsed_ms(r.start, r.stop) / kRunsPerRound;
      if (round == 0 || ms < best) best = ms;
    }
  } catch (...) {
    destroy_graph_exec(exec);
    throw;
  }
  destroy_graph_exec(exec);
  return best;
}

// The compared samples of each output (tactic_sample_stride), copied to the host.
std::vector<std::vector<uint8_t>> sample_outputs(const std::vector<TensorView>& out, void* stream) {
  std::vector<std::vector<uint8_t>> samples;
  for (const TensorView& o : out) {
    const auto n = static_cast<size_t>(volume(o.dims));
    const size_t stride = tactic_sample_stride(n), size = dtype_size(o.dtype);
    const size_t count = n == 0 ? 0 : (n - 1) / stride + 1;
    samples.emplace_back(count * size);
    copy_strided_to_host(samples.back().data(), o.data, size, stride, count, stream);
  }
  return samples;
}

// "" when every output's samples agree with the baseline's, else which output and how not.
std::string disagreement(const std::vector<TensorView>& out,
                         const std::vector<std::vector<uint8_t>>& baseline,
                         const std::vector<std::vector<uint8_t>>& samples) {
  for (size_t i = 0; i < out.size(); ++i) {
    std::string why = tactic_outputs_disagree(out[i].dtype, baseline[i], samples[i]);
    if (!why.empty()) return "output " + std::to_string(i) + " differs: " + why + ",";
  }
  return "";
}

}  // namespace

TacticTimer cuda_tactic_timer(const Network& net, size_t workspace_bytes) {
  auto shared = std::make_shared<std::unique_ptr<TimerResources>>();
  return [&net, workspace_bytes, shared](const Layer& layer, int num_tactics,
                                         const std::vector<TensorDesc>& in_desc,
                                         const std::vector<TensorDesc>& out_desc) {
    if (!*shared) *shared = std::make_unique<TimerResources>(workspace_bytes);
    TimerResources& r = **shared;
    std::mt19937 gen(1234);
    std::vector<std::unique_ptr<DeviceBuffer>> buffers;
    std::vector<TensorView> in, out;
    for (size_t i = 0; i < in_desc.size(); ++i) {
      std::vector<uint8_t> host = timing_input(net, layer.inputs[i], in_desc[i], gen);
      buffers.push_back(std::make_unique<DeviceBuffer>(host.size()));
      copy_to_device(buffers.back()->p, host.data(), host.size());
      in.push_back({buffers.back()->p, in_desc[i].dtype, in_desc[i].dims});
    }
    for (const auto& d : out_desc) {
      buffers.push_back(
          std::make_unique<DeviceBuffer>(static_cast<size_t>(tensor_bytes(d.dims, dtype_size(d.dtype)))));
      out.push_back({buffers.back()->p, d.dtype, d.dims});
    }
    LaunchContext launch;
    launch.stream = r.stream;
    launch.cublaslt = r.cublaslt;
    launch.workspace = r.workspace->p;
    launch.workspace_bytes = workspace_bytes;
    std::vector<std::optional<double>> times(static_cast<size_t>(num_tactics));
    std::optional<double> best_so_far;
    int baseline = -1;  // the first tactic that ran: the others' outputs are checked against its
    std::vector<std::vector<uint8_t>> baseline_samples;
    for (int t = 0; t < num_tactics; ++t) {
      Layer variant = layer;
      variant.attrs.set("tactic", int64_t{t});
      try {
        auto kernel = create_kernel(variant, Backend::kCuda);
        if (kernel->uses_cudnn() && !r.cudnn) r.cudnn = create_cudnn_handle();
        launch.cudnn = r.cudnn;
        // A tactic that wants more workspace is timed with it (the engine will have it): one
        // larger buffer kept for the build, grown as tactics ask.
        const size_t wanted = kernel->workspace_wanted(in_desc);
        if (wanted > workspace_bytes) {
          if (!r.large_workspace || r.large_workspace_bytes < wanted) {
            synchronize_stream(r.stream);
            r.large_workspace.reset();
            r.large_workspace = std::make_unique<DeviceBuffer>(wanted);
            r.large_workspace_bytes = wanted;
          }
          launch.workspace = r.large_workspace->p;
          launch.workspace_bytes = wanted;
        } else {
          launch.workspace = r.workspace->p;
          launch.workspace_bytes = workspace_bytes;
        }
        for (const TensorView& o : out) {  // NaN bytes: an output the tactic leaves unwritten shows
          const auto bytes = static_cast<size_t>(tensor_bytes(o.dims, dtype_size(o.dtype)));
          fill_device_async(o.data, 0xff, bytes, r.stream);
        }
        kernel->run(in, out, launch);  // first run: lazy module loading, descriptor set-up
        synchronize_stream(r.stream);
        std::vector<std::vector<uint8_t>> samples = sample_outputs(out, r.stream);
        if (baseline < 0) {
          baseline = t;
          baseline_samples = std::move(samples);
        } else if (std::string why = disagreement(out, baseline_samples, samples); !why.empty()) {
          KILN_LOG(kWarning, "builder: " << describe(layer) << ": tactic " << t
                                         << " not taken: on the same inputs " << why << " against tactic "
                                         << baseline << "'s (a kernel bug; please report it)");
          continue;
        }
        // The other warm-up runs are timed behind a GPU delay, so that the host's launch time is
        // hidden. A tactic whose warm-up runs are many times slower than the best one so far
        // cannot win: its warm-up time is its time, and pathological tactics do not get captured
        // and replayed.
        gpu_delay(kWarmupDelayUs, r.stream);
        record_event(r.start, r.stream);
        for (int i = 1; i < kWarmupRuns; ++i) kernel->run(in, out, launch);
        record_event(r.stop, r.stream);
        const double warm_ms = event_elapsed_ms(r.start, r.stop) / (kWarmupRuns - 1);
        if (best_so_far && warm_ms > kAbandonFactor * *best_so_far && warm_ms > kAbandonMinMs) {
          times[t] = warm_ms;
          continue;
        }
        // GPU time, not launch overhead: a tactic whose host call is slow (cuDNN's legacy API
        // costs tens of microseconds per call) would otherwise look slow however fast its
        // kernels are, and engines replay CUDA graphs where host time does not count.
        std::optional<double> graphed = time_as_graph(r, [&] { kernel->run(in, out, launch); });
        double best = 0.0;
        if (graphed) {
          best = *graphed;
        } else {
          for (int round = 0; round < kTimedRounds; ++round) {
            record_event(r.start, r.stream);
            for (int i = 0; i < kRunsPerRound; ++i) kernel->run(in, out, launch);
            record_event(r.stop, r.stream);
            double ms = event_elapsed_ms(r.start, r.stop) / kRunsPerRound;
            if (round == 0 || ms < best) best = ms;
          }
        }
        times[t] = best;
        if (!best_so_far || best < *best_so_far) best_so_far = best;
      } catch (const std::exception& e) {
        KILN_LOG(kVerbose, "builder: " << describe(layer) << ": tactic " << t << " skipped: " << e.what());
        synchronize_stream(r.stream);
      }
    }
    synchronize_stream(r.stream);  // the buffers go now
    return times;
  };
}

}  // namespace kiln
