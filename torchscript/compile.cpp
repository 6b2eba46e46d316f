// The TorchScript pipeline, top to bottom:
//   1. lower: clone, move to the device, eval, inline, freeze, remove dropout, functionalize,
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

#include "core/builder.h"
#include "driver/compile.h"
#include "ir/error.h"
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

namespace {

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

// The error for a recorded run that failed in PyTorch: which input shapes the module cannot
// take, then PyTorch's message (its last line, the error itself, first; then the TorchScript
// traceback that says where).
std::string run_failure_message(const CompileSpec& spec, size_t run, const std::string& torch_message) {
  bool ranges = false;
  for (const InputSpec& in : spec.inputs) ranges |= in.min_shape != in.max_shape;
  std::ostringstream s;
  s << "the TorchScript module cannot run on ";
  for (size_t k = 0; k < spec.inputs.size(); ++k) {
    const InputSpec& in = spec.inputs[k];
    const auto& shape = run == kMinRun ? in.min_shape : run == kMaxRun ? in.max_shape : in.opt_shape;
    s << (k ? ", " : "") << "input " << k << " of shape " << shape_text(shape) << " ("
      << c10::toString(in.dtype) << ")";
  }
  if (ranges)
    s << " (the " << (run == kMinRun ? "min" : run == kMaxRun ? "max" : "opt") << " shapes of the specs)";
  s << ": " << (spec.inputs.size() == 1 ? "this input shape does" : "these input shapes do")
    << " not fit the model; give input specs (kiln.Input, --input) of shapes the model accepts.";
  std::string last;
  std::istringstream lines(torch_message);
  for (std::string line; std::getline(lines, line);) {
    if (line.find_first_not_of(" \t") != std::string::npos) last = line;
  }
  s << " PyTorch said: " << last;
  if (last.size() + 1 < torch_message.size()) s << "\n" << torch_message;
  return s.str();
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
  std::vector<Plan> plans;  // one per engine segment, in order
  CompileReport report;
  at::Device device{at::kCPU};
};

Lowered lower_and_compile(const torch::jit::Module& module, const CompileSpec& spec, bool dry_run) {
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
  } catch (const RunFailure& e) {
    KILN_FAIL(run_failure_message(spec, e.run, e.what()));
  } catch (const c10::Error& e) {  // preparing the runs (the graph's code, the random inputs)
    KILN_FAIL(
        "preparing to run the module on inputs of the specs' shapes failed: " << e.what_without_backtrace());
  }
  // 3. fold
  if (fold_static_values(*l.graph, l.record)) simplify(l.graph);
  // 4. translate
  l.t = to_kgraph(l.graph, l.record, spec.inputs);
  // 5. partition and 6. build, by the driver shared with the export path. A segment input's
  // range is what the recorded runs saw.
  auto range = [&l](ValueId v) {
    const std::vector<Observed>& runs = l.record.at(l.t.ts_value.at(v));
    ShapeRange r{runs[kOptRun].shape, runs[kOptRun].shape, runs[kOptRun].shape};
    for (const Observed& o : runs) {
      for (size_t d = 0; d < o.shape.size(); ++d) {
        r.min[d] = std::min(r.min[d], o.shape[d]);
        r.max[d] = std::max(r.max[d], o.shape[d]);
      }
    }
    return r;
  };
  CompileOptions options = spec;  // the options part of the spec
  options.dry_run = dry_run;
  CompileResult result = compile_graph(l.t.graph, options, range, l.t.torch_nodes);
  l.partition = std::move(result.partition);
  l.plans = std::move(result.plans);
  l.report = std::move(result.report);
  return l;
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
    const bool cuda = l.device.is_cuda();
    l.module.register_attribute(
        name, runtime::engine_type(),
        runtime::make_engine(std::move(l.plans.at(engines - 1)), cuda ? "cuda" : "reference",
                             cuda ? l.device.index() : -1, spec.cuda_graphs));
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

torch::jit::Module compile(const torch::jit::Module& module, const CompileSpec& spec, CompileReport* report) {
  Lowered l = lower_and_compile(module, spec, /*dry_run=*/false);
  rewrite(l, spec);
  if (report != nullptr) *report = l.report;
  return l.module;
}

CompileReport dry_run(const torch::jit::Module& module, const CompileSpec& spec) {
  return lower_and_compile(module, spec, /*dry_run=*/true).report;
}

}  // namespace kiln::torchscript
