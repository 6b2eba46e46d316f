#include "driver/compile.h"

#include <map>
#include <set>
#include <sstream>

#include "converters/converter.h"
#include "driver/convert_segment.h"
#include "ir/error.h"
#include "ir/logging.h"
#include "ir/progress.h"

namespace kiln {

Precision parse_precision(const std::string& name) {
  PrecisionConfig c;
  enable_precision(c, name);  // the one table of names; throws listing them
  KILN_CHECK(!c.int8,
             "int8 is not one of kiln.compile's float precisions: pass torch.int8 in enabled_precisions "
             "(with a kiln.Calibrator, or a model with quantize/dequantize ops)");
  if (c.fp8) return Precision::kFP8;
  return c.fp16 ? Precision::kFP16 : c.bf16 ? Precision::kBF16 : c.tf32 ? Precision::kTF32 : Precision::kFP32;
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::kFP16:
      return "fp16";
    case Precision::kBF16:
      return "bf16";
    case Precision::kTF32:
      return "tf32";
    case Precision::kFP8:
      return "fp8";
    case Precision::kFP32:
      break;
  }
  return "fp32";
}

BuilderConfig builder_config(const CompileOptions& options) {
  BuilderConfig config;
  for (Precision p : options.enabled_precisions) enable_precision(config.precision, precision_name(p));
  config.workspace_bytes = options.workspace_size;
  config.optimization_level = options.optimization_level;
  config.target = parse_device(options.device);
  if (options.tactic_timing.has_value()) config.tactic_timing = *options.tactic_timing;
  config.timing_cache_path = options.timing_cache_path;
  config.engine_cache_dir = options.engine_cache_dir;
  config.engine_cache_max_bytes = options.engine_cache_max_bytes;
  return config;
}

PartitionOptions partition_options(const CompileOptions& options, std::map<int, std::string> torch_nodes) {
  KILN_CHECK(options.min_block_size >= 1,
             "min_block_size must be at least 1, got " << options.min_block_size);
  PartitionOptions p;
  p.min_block_size = options.min_block_size;
  p.torch_executed_ops = options.torch_executed_ops;
  p.require_full_compilation = options.require_full_compilation;
  p.torch_nodes = std::move(torch_nodes);
  return p;
}

CompileReport make_report(const KGraph& graph, const Partition& partition) {
  CompileReport r;
  for (const Segment& s : partition.segments) {
    CompileReport::SegmentInfo info;
    info.engine = s.engine;
    for (int n : s.nodes) {
      info.nodes.push_back(graph.nodes()[n].name);
      info.ops.push_back(graph.nodes()[n].target);
    }
    r.num_engines += s.engine ? 1 : 0;
    r.segments.push_back(std::move(info));
  }
  for (const Fallback& f : partition.fallbacks)
    r.fallbacks.push_back({graph.nodes()[f.node].name, graph.nodes()[f.node].target, f.reason});
  r.text = describe_partition(graph, partition);
  return r;
}

namespace {

BuilderConfig segment_config(const KGraph& graph, const Segment& segment, const CompileOptions& options,
                             const InputRange& range) {
  BuilderConfig config = builder_config(options);
  if (options.int8) {  // only where the segment quantizes (a segment without Q/DQ has nothing for INT8)
    for (int n : segment.nodes) {
      if (graph.nodes()[static_cast<size_t>(n)].target.find("quantize") != std::string::npos) {
        enable_precision(config.precision, "int8");
        break;
      }
    }
  }
  OptimizationProfile profile;
  for (ValueId v : segment.inputs) {
    const KValue& kv = graph.value(v);
    if (is_static(kv.dims)) continue;
    KILN_CHECK(range, "input '" << kv.name << "' of an engine has dynamic dims but no shape range was given");
    profile.inputs[kv.name] = range(v);
  }
  if (!profile.inputs.empty()) config.profiles.push_back(std::move(profile));
  return config;
}

}  // namespace

namespace {

// The torch_op converter over the converters of the ops listed in torch_ops_in_engine, for one
// compile.
class TorchOpsInEngine {
 public:
  explicit TorchOpsInEngine(const CompileOptions& options) {
    for (const std::string& t : options.torch_ops_in_engine) {
      if (!installed_.insert(t).second) continue;
      override_converter(torch_op_converter(t));
    }
    // Automatic ones: only ops no converter (built-in, Python or listed) handles.
    for (const std::string& t : options.automatic_torch_ops) {
      if (installed_.count(t) || find_converter(t) != nullptr) continue;
      installed_.insert(t);
      joining_.insert(t);
      override_converter(torch_op_converter(t));
    }
  }
  ~TorchOpsInEngine() {
    for (const std::string& t : installed_) remove_override_converter(t);
  }
  TorchOpsInEngine(const TorchOpsInEngine&) = delete;
  TorchOpsInEngine& operator=(const TorchOpsInEngine&) = delete;
  const std::set<std::string>& installed() const { return installed_; }
  const std::set<std::string>& joining() const { return joining_; }

 private:
  std::set<std::string> installed_;
  std::set<std::string> joining_;  // automatic: kept only where they join engine nodes
};

// The report says which nodes run through PyTorch inside engines (torch_ops_in_engine).
void note_torch_ops_in_engines(const KGraph& graph, const Partition& partition, const TorchOpsInEngine& ops,
                               CompileReport* report) {
  std::map<std::string, int> count;
  for (const Segment& s : partition.segments) {
    if (!s.engine) continue;
    for (int n : s.nodes) {
      if (ops.installed().count(graph.nodes()[n].target)) ++count[graph.nodes()[n].target];
    }
  }
  if (count.empty()) return;
  std::ostringstream line;
  line << "\ntorch ops inside engines (torch_ops_in_engine, run by PyTorch when the engine runs):";
  for (const auto& [target, n] : count)
    line << " " << target << " x" << n << (ops.joining().count(target) ? " (automatic)" : "");
  report->text += line.str();
}

}  // namespace

CompileResult compile_graph(const KGraph& graph, const CompileOptions& options, const InputRange& range,
                            std::map<int, std::string> torch_nodes) {
  const BuildTarget target = parse_device(options.device);  // refuses an unknown device before any work
  KILN_CHECK(target != BuildTarget::kAuto, "compile: device must be 'cuda', 'cuda:N' or 'cpu', not 'auto'");
  const TorchOpsInEngine torch_ops(options);
  CompileResult result;
  // A node whose converter fails runs in PyTorch instead (its reason in the report), and the
  // graph is partitioned again; each round moves one more node, so this ends.
  std::vector<Network> nets;
  for (;;) {
    PartitionOptions popts = partition_options(options, torch_nodes);
    popts.joining_ops = torch_ops.joining();
    result.partition = partition_graph(graph, popts);
    nets.clear();
    try {
      for (const Segment& segment : result.partition.segments) {
        if (segment.engine) nets.push_back(convert_segment(graph, segment));
      }
      break;
    } catch (const NodeConversionError& e) {
      KILN_CHECK(!options.require_full_compilation,
                 "require_full_compilation: "
                     << e.what() << "\nCompile with require_full_compilation=False to run it in PyTorch.");
      KILN_CHECK(torch_nodes.count(e.node) == 0, e.what());  // already in PyTorch: no progress possible
      KILN_LOG(kWarning, "compile: " << e.what() << "; the node runs in PyTorch");
      torch_nodes[e.node] = e.reason;
    }
  }
  result.report = make_report(graph, result.partition);
  note_torch_ops_in_engines(graph, result.partition, torch_ops, &result.report);
  KILN_LOG(kVerbose, "compile: " << result.report.text);
  if (options.dry_run) return result;
  size_t k = 0;
  const auto engines = static_cast<int64_t>(nets.size());
  report_progress("building engines", 0, engines);
  for (const Segment& segment : result.partition.segments) {
    if (!segment.engine) continue;
    result.plans.push_back(Builder().build(nets.at(k++), segment_config(graph, segment, options, range)));
    report_progress("building engines", static_cast<int64_t>(k), engines);
  }
  return result;
}

}  // namespace kiln
