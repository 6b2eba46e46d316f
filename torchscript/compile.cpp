// The TorchScript pipeline, top to bottom:
//   1. lower: clone, move to the device, eval, freeze, inline, remove dropout, functionalize,
//      simplify, shape-free rewrites (lower.h);
//   2. record: run the lowered graph on random inputs at the min / opt / max shapes and record
//      every value's dtype and shape (record_values.h);
//   3. fold: sizes that were the same in every run become constants, then simplify again (the
//      record of the surviving values stays valid: passes only add constants and remove nodes);
//   4. translate: TorchScript nodes -> KGraph (to_kgraph.h);
//   5. partition (partitioning/, the same rules and report as the export path);
//   6. build: each engine segment -> converters (convert_segment) -> Builder -> plan -> Engine;
//   7. rewrite: the forward graph is rebuilt in segment order, each engine segment one
//      kiln::execute_engine call on an Engine attribute, the other nodes cloned as they were.
#include "torchscript/compile.h"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include <algorithm>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "converters/convert_segment.h"
#include "core/builder.h"
#include "core/error.h"
#include "partitioning/partition.h"
#include "runtime/runtime.h"
#include "torchscript/lower.h"
#include "torchscript/record_values.h"
#include "torchscript/to_kgraph.h"

namespace kiln::torchscript {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

InputSpec InputSpec::fixed(std::vector<int64_t> shape, c10::ScalarType dtype) {
  return {shape, shape, shape, dtype};
}

InputSpec InputSpec::range(std::vector<int64_t> min_shape, std::vector<int64_t> opt_shape,
                           std::vector<int64_t> max_shape, c10::ScalarType dtype) {
  return {std::move(min_shape), std::move(opt_shape), std::move(max_shape), dtype};
}

Precision parse_precision(const std::string& name) {
  if (name == "fp32" || name == "float32") return Precision::kFP32;
  if (name == "fp16" || name == "float16" || name == "half") return Precision::kFP16;
  if (name == "bf16" || name == "bfloat16") return Precision::kBF16;
  if (name == "tf32") return Precision::kTF32;
  KILN_FAIL("unknown precision '" << name << "': use fp32, fp16, bf16 or tf32");
}

c10::ScalarType parse_dtype(const std::string& name) {
  static const std::map<std::string, c10::ScalarType> dtypes = {
      {"float32", c10::kFloat},     {"float", c10::kFloat}, {"float16", c10::kHalf}, {"half", c10::kHalf},
      {"bfloat16", c10::kBFloat16}, {"int32", c10::kInt},   {"int64", c10::kLong},   {"long", c10::kLong},
      {"bool", c10::kBool},         {"int8", c10::kChar}};
  auto it = dtypes.find(name);
  KILN_CHECK(it != dtypes.end(), "unknown input dtype '"
                                     << name
                                     << "': use float32, float16, bfloat16, int32, int64, bool or int8");
  return it->second;
}

namespace {

std::string json_string(const std::string& s) {
  std::ostringstream os;
  os << '"';
  for (char c : s) {
    switch (c) {
      case '"':
        os << "\\\"";
        break;
      case '\\':
        os << "\\\\";
        break;
      case '\n':
        os << "\\n";
        break;
      case '\t':
        os << "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          os << "\\u00"
             << "0123456789abcdef"[(c >> 4) & 15] << "0123456789abcdef"[c & 15];
        } else {
          os << c;
        }
    }
  }
  os << '"';
  return os.str();
}

std::string json_strings(const std::vector<std::string>& list) {
  std::string out = "[";
  for (size_t i = 0; i < list.size(); ++i) out += (i ? ", " : "") + json_string(list[i]);
  return out + "]";
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
  return out.empty() ? "scalar" : out;
}

at::Device parse_device(const std::string& name) {
  try {
    at::Device d(name);
    KILN_CHECK(d.is_cpu() || d.is_cuda(), "");
    return d;
  } catch (const std::exception&) {
    KILN_FAIL("device '" << name << "' is not 'cuda', 'cuda:N' or 'cpu'");
  }
}

void check_spec(const CompileSpec& spec) {
  for (size_t k = 0; k < spec.inputs.size(); ++k) {
    const InputSpec& in = spec.inputs[k];
    KILN_CHECK(in.min_shape.size() == in.opt_shape.size() && in.opt_shape.size() == in.max_shape.size(),
               "input " << k << ": min/opt/max shapes differ in rank (" << shape_text(in.min_shape) << ", "
                        << shape_text(in.opt_shape) << ", " << shape_text(in.max_shape) << ")");
    for (size_t d = 0; d < in.min_shape.size(); ++d) {
      KILN_CHECK(
          0 <= in.min_shape[d] && in.min_shape[d] <= in.opt_shape[d] && in.opt_shape[d] <= in.max_shape[d],
          "input " << k << ": dim " << d << " needs 0 <= min <= opt <= max, got " << in.min_shape[d] << ", "
                   << in.opt_shape[d] << ", " << in.max_shape[d]);
    }
  }
  KILN_CHECK(spec.min_block_size >= 1, "min_block_size must be at least 1, got " << spec.min_block_size);
}

at::Tensor random_input(const std::vector<int64_t>& shape, c10::ScalarType dtype, at::Generator& gen,
                        const at::Device& device) {
  at::Tensor t;
  if (c10::isFloatingType(dtype)) {
    t = at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat)).to(dtype);
  } else if (dtype == c10::kBool) {
    t = at::rand(shape, gen, at::TensorOptions().dtype(at::kFloat)) > 0.5;
  } else {
    t = at::randint(0, 8, shape, gen, at::TensorOptions().dtype(dtype));
  }
  return t.to(device);
}

// Inputs for each recorded run (see record_values.h).
std::vector<std::vector<at::Tensor>> sample_runs(const CompileSpec& spec, const at::Device& device) {
  std::vector<std::vector<at::Tensor>> runs(kNumRuns);
  for (int r = 0; r < kNumRuns; ++r) {
    at::Generator gen = at::detail::createCPUGenerator(1234 + r);
    for (const InputSpec& in : spec.inputs) {
      const auto& shape = r == kMinRun ? in.min_shape : r == kMaxRun ? in.max_shape : in.opt_shape;
      runs[r].push_back(random_input(shape, in.dtype, gen, device));
    }
  }
  return runs;
}

struct Lowered {
  torch::jit::Module module;
  std::shared_ptr<Graph> graph;
  ValueRecord record;
  Translation t;
  Partition partition;
  CompileReport report;
  at::Device device{at::kCPU};
};

CompileReport make_report(const KGraph& g, const Partition& p) {
  CompileReport r;
  for (const Segment& s : p.segments) {
    CompileReport::SegmentInfo info;
    info.engine = s.engine;
    for (int n : s.nodes) {
      info.nodes.push_back(g.nodes()[n].name);
      info.ops.push_back(g.nodes()[n].target);
    }
    r.num_engines += s.engine ? 1 : 0;
    r.segments.push_back(std::move(info));
  }
  for (const Fallback& f : p.fallbacks)
    r.fallbacks.push_back({g.nodes()[f.node].name, g.nodes()[f.node].target, f.reason});
  r.text = describe_partition(g, p);
  return r;
}

Lowered lower_and_partition(const torch::jit::Module& module, const CompileSpec& spec) {
  check_spec(spec);
  Lowered l;
  l.device = parse_device(spec.device);
  torch::jit::Module moved = module.clone();
  moved.to(l.device);
  // 1. lower
  l.module = lower_module(moved);
  l.graph = l.module.get_method("forward").graph();
  KILN_CHECK(l.graph->inputs().size() == spec.inputs.size() + 1,
             "the module's forward takes " << l.graph->inputs().size() - 1
                                           << " inputs, the compile spec gives " << spec.inputs.size()
                                           << "; give one input spec per forward argument");
  // 2. record
  try {
    l.record = record_values(l.graph, l.module._ivalue(), sample_runs(spec, l.device));
  } catch (const std::exception& e) {
    // c10::Error, or the interpreter's own exceptions for errors raised by TorchScript code.
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    std::ostringstream shapes;
    for (const InputSpec& in : spec.inputs)
      shapes << " [" << shape_text(in.min_shape) << " .. " << shape_text(in.max_shape) << " "
             << c10::toString(in.dtype) << "]";
    KILN_FAIL("running the module on random inputs of the specs'"
              << shapes.str() << " failed; check the input shapes and dtypes. PyTorch said: "
              << (c10_error != nullptr ? c10_error->what_without_backtrace() : e.what()));
  }
  // 3. fold
  if (fold_static_values(*l.graph, l.record)) simplify(l.graph);
  // 4. translate
  l.t = to_kgraph(l.graph, l.record, spec.inputs);
  // 5. partition
  PartitionOptions options;
  options.min_block_size = spec.min_block_size;
  options.torch_executed_ops = spec.torch_executed_ops;
  options.require_full_compilation = spec.require_full_compilation;
  options.torch_nodes = l.t.torch_nodes;
  l.partition = partition_graph(l.t.graph, options);
  l.report = make_report(l.t.graph, l.partition);
  return l;
}

// 6. build one engine segment.
c10::IValue build_engine(const Lowered& l, const Segment& segment, const CompileSpec& spec) {
  Network net = convert_segment(l.t.graph, segment);
  BuilderConfig config;
  config.precision.fp16 = spec.enabled_precisions.count(Precision::kFP16) != 0;
  config.precision.bf16 = spec.enabled_precisions.count(Precision::kBF16) != 0;
  config.precision.tf32 = spec.enabled_precisions.count(Precision::kTF32) != 0;
  config.workspace_bytes = spec.workspace_bytes;
  config.optimization_level = spec.optimization_level;
  const bool cuda = l.device.is_cuda();
  config.target = cuda ? BuildTarget::kCuda : BuildTarget::kReference;
  OptimizationProfile profile;
  for (ValueId v : segment.inputs) {
    const KValue& kv = l.t.graph.value(v);
    if (is_static(kv.dims)) continue;
    const std::vector<Observed>& runs = l.record.at(l.t.ts_value.at(v));
    ShapeRange range{runs[kOptRun].shape, runs[kOptRun].shape, runs[kOptRun].shape};
    for (const Observed& o : runs) {
      for (size_t d = 0; d < o.shape.size(); ++d) {
        range.min[d] = std::min(range.min[d], o.shape[d]);
        range.max[d] = std::max(range.max[d], o.shape[d]);
      }
    }
    profile.inputs[kv.name] = range;
  }
  if (!profile.inputs.empty()) config.profiles.push_back(profile);
  const std::vector<uint8_t> plan = Builder().build(net, config).serialize();
  return runtime::make_engine(plan, cuda ? "cuda" : "reference", cuda ? l.device.index() : -1);
}

// 7. rewrite the forward graph in segment order.
void rewrite(Lowered& l, const CompileSpec& spec) {
  Graph& g = *l.graph;
  std::vector<Node*> old_nodes(g.nodes().begin(), g.nodes().end());
  std::unordered_map<Value*, Value*> env;
  for (Value* in : g.inputs()) env[in] = in;
  torch::jit::WithInsertPoint guard(g.return_node());
  // Values of nodes outside the KGraph (constants, list constructs, folded sizes) are cloned
  // where first needed.
  std::function<Value*(Value*)> map = [&](Value* v) -> Value* {
    auto it = env.find(v);
    if (it != env.end()) return it->second;
    Node* p = v->node();
    KILN_CHECK(std::find(l.t.source.begin(), l.t.source.end(), p) == l.t.source.end(),
               "internal: '" << v->debugName() << "' is used before its segment ran");
    Node* c = g.insertNode(g.createClone(p, map));
    for (size_t k = 0; k < p->outputs().size(); ++k) env[p->output(k)] = c->output(k);
    return env.at(v);
  };
  auto clone = [&](Node* p) {
    Node* c = g.insertNode(g.createClone(p, map));
    for (size_t k = 0; k < p->outputs().size(); ++k) env[p->output(k)] = c->output(k);
  };

  Value* self = g.inputs()[0];
  int engines = 0;
  for (const Segment& segment : l.partition.segments) {
    if (!segment.engine) {
      for (int n : segment.nodes) {
        clone(l.t.source[n]);
        if (l.t.unpack[n] != nullptr) clone(l.t.unpack[n]);
      }
      continue;
    }
    const std::string name = "_kiln_engine_" + std::to_string(engines++);
    l.module.register_attribute(name, runtime::engine_type(), build_engine(l, segment, spec));
    std::vector<Value*> inputs;
    for (ValueId v : segment.inputs) inputs.push_back(map(l.t.ts_value.at(v)));
    Value* list = g.insertNode(g.createList(c10::TensorType::get(), inputs))->output();
    Value* engine = g.insertGetAttr(self, name);
    Value* outputs = g.insert(c10::Symbol::fromQualString(runtime::kExecuteEngineOp), {list, engine});
    Node* unpack = g.insertNode(g.createListUnpack(outputs, segment.outputs.size()));
    for (size_t k = 0; k < segment.outputs.size(); ++k) {
      Value* original = l.t.ts_value.at(segment.outputs[k]);
      unpack->output(k)->setType(original->type());
      env[original] = unpack->output(k);
    }
  }
  for (size_t k = 0; k < g.outputs().size(); ++k) g.return_node()->replaceInput(k, map(g.outputs()[k]));
  for (auto it = old_nodes.rbegin(); it != old_nodes.rend(); ++it) (*it)->destroy();
  torch::jit::EliminateDeadCode(l.graph);
}

}  // namespace

std::string CompileReport::to_json() const {
  std::ostringstream os;
  os << "{\"num_engines\": " << num_engines << ", \"segments\": [";
  for (size_t i = 0; i < segments.size(); ++i) {
    os << (i ? ", " : "") << "{\"kind\": " << json_string(segments[i].engine ? "engine" : "pytorch")
       << ", \"nodes\": " << json_strings(segments[i].nodes) << ", \"ops\": " << json_strings(segments[i].ops)
       << "}";
  }
  os << "], \"fallbacks\": [";
  for (size_t i = 0; i < fallbacks.size(); ++i) {
    os << (i ? ", " : "") << "{\"node\": " << json_string(fallbacks[i].node)
       << ", \"target\": " << json_string(fallbacks[i].target)
       << ", \"reason\": " << json_string(fallbacks[i].reason) << "}";
  }
  os << "], \"text\": " << json_string(text) << "}";
  return os.str();
}

torch::jit::Module compile(const torch::jit::Module& module, const CompileSpec& spec, CompileReport* report) {
  Lowered l = lower_and_partition(module, spec);
  rewrite(l, spec);
  if (report != nullptr) *report = l.report;
  return l.module;
}

CompileReport dry_run(const torch::jit::Module& module, const CompileSpec& spec) {
  return lower_and_partition(module, spec).report;
}

}  // namespace kiln::torchscript
