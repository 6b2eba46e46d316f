#include "torchscript/lower.h"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/constant_pooling.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/remove_dropout.h>
#include <torch/csrc/jit/passes/remove_mutation.h>

#include <unordered_set>

#include "ir/error.h"

namespace kiln::torchscript {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;
using torch::jit::WithInsertPoint;

namespace {

bool is_size_list(const Value* v) {
  return v->node()->kind() == c10::aten::size && v->node()->inputs().size() == 1;
}

// Values computed from sizes alone (see fold_static_values).
std::unordered_set<const Value*> size_derived(Graph& graph) {
  std::unordered_set<const Value*> derived;
  for (Node* n : graph.nodes()) {
    bool from_sizes = false;
    if (n->kind() == c10::aten::size || n->kind() == c10::aten::dim ||
        n->kind() == c10::Symbol::fromQualString("aten::numel")) {
      from_sizes = true;
    } else if (n->kind() != c10::prim::Constant && n->blocks().empty() && !n->inputs().empty() &&
               !n->hasSideEffects() && !n->isNondeterministic()) {
      from_sizes = true;
      for (const Value* in : n->inputs()) {
        from_sizes &= in->node()->kind() == c10::prim::Constant || derived.count(in) != 0;
      }
    }
    if (from_sizes) {
      for (const Value* out : n->outputs()) derived.insert(out);
    }
  }
  return derived;
}

bool same_everywhere(const std::vector<Observed>& runs) {
  if (runs.size() != kNumRuns || runs[0].value.isNone()) return false;
  const c10::IValue& first = runs[0].value;
  for (const Observed& o : runs) {
    if (o.value.isNone() || o.is_tensor != runs[0].is_tensor) return false;
    const c10::IValue& v = o.value;
    if (first.isTensor()) {
      const at::Tensor& a = first.toTensor();
      const at::Tensor& b = v.toTensor();
      if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes() || !a.equal(b)) return false;
    } else if (first.isInt()) {
      if (!v.isInt() || v.toInt() != first.toInt()) return false;
    } else if (first.isDouble()) {
      if (!v.isDouble() || v.toDouble() != first.toDouble()) return false;
    } else if (first.isBool()) {
      if (!v.isBool() || v.toBool() != first.toBool()) return false;
    } else if (first.isIntList()) {
      if (!v.isIntList() || v.toIntVector() != first.toIntVector()) return false;
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

torch::jit::Module lower_module(const torch::jit::Module& module) {
  torch::jit::Module m = module.clone();
  m.eval();
  // Calls are inlined before freezing, into this clone's forward. An inlined node keeps a raw
  // pointer to each function it came from (its call stack, which error messages print), and
  // freezing deletes the frozen module's methods other than forward once it has inlined them
  // (helpers such as ResNet's _forward_impl): the interpreter's stack trace then read freed
  // memory when the graph raised, a SIGSEGV in InterpreterStateImpl::callstack() for a model run
  // at a shape it cannot take. Inlined here, the call stacks point at this clone's methods, which
  // freezing leaves in the compilation unit.
  torch::jit::Inline(*m.get_method("forward").graph());
  // Weights become constants. optimize_numerics=false keeps the model's ops as written (no
  // conv-bn folding here: the Kiln builder folds batch norms itself).
  m = torch::jit::freeze(m, std::nullopt, /*optimize_numerics=*/false);
  std::shared_ptr<Graph> graph = m.get_method("forward").graph();
  torch::jit::Inline(*graph);
  torch::jit::removeDropout(graph);
  // In-place ops (relu_, add_) become functional where no alias observes the difference.
  torch::jit::RemoveListMutation(graph);
  torch::jit::RemoveTensorMutation(graph);
  simplify(graph);
  // Rewrites that need no shapes; those that do happen in the KGraph translation.
  unpack_size_lists(*graph);
  replace_len_of_size(*graph);
  decompose_linear(*graph);
  simplify(graph);
  return m;
}

bool unpack_size_lists(Graph& graph) {
  bool changed = false;
  for (auto it = graph.nodes().begin(); it != graph.nodes().end();) {
    Node* n = *it++;
    if (n->kind() != c10::prim::ListUnpack || !is_size_list(n->input())) continue;
    Value* x = n->input()->node()->input();
    WithInsertPoint guard(n);
    for (size_t k = 0; k < n->outputs().size(); ++k) {
      Value* size = graph.insert(c10::aten::size, {x, static_cast<int64_t>(k)});
      n->output(k)->replaceAllUsesWith(size);
    }
    n->destroy();
    changed = true;
  }
  return changed;
}

bool replace_len_of_size(Graph& graph) {
  bool changed = false;
  for (Node* n : graph.nodes()) {
    if (n->kind() != c10::aten::len || !is_size_list(n->input(0))) continue;
    WithInsertPoint guard(n);
    n->output()->replaceAllUsesWith(graph.insert(c10::aten::dim, {n->input(0)->node()->input()}));
    changed = true;  // the len node is dead now; simplify removes it
  }
  return changed;
}

bool decompose_linear(Graph& graph) {
  bool changed = false;
  for (Node* n : graph.nodes()) {
    if (n->kind() != c10::aten::linear) continue;
    WithInsertPoint guard(n);
    Value* weight_t = graph.insert(c10::aten::t, {n->input(1)});
    Value* y = graph.insert(c10::aten::matmul, {n->input(0), weight_t});
    if (!n->input(2)->type()->cast<c10::NoneType>()) {
      y = graph.insert(c10::aten::add, {y, n->input(2)});
    }
    const std::string& name = n->output()->debugName();
    // TorchScript refuses numeric names ("78"): those stay generated.
    if (name.find_first_not_of("0123456789") != std::string::npos) y->setDebugName(name);
    y->node()->setSourceRange(n->sourceRange());
    n->output()->replaceAllUsesWith(y);
    changed = true;
  }
  return changed;
}

bool fold_static_values(Graph& graph, const ValueRecord& record) {
  const std::unordered_set<const Value*> derived = size_derived(graph);
  bool changed = false;
  for (Node* n : graph.nodes()) {
    if (n->kind() == c10::prim::Constant) continue;
    for (Value* v : n->outputs()) {
      auto it = record.find(v);
      if (!derived.count(v) || it == record.end() || !same_everywhere(it->second) || !v->hasUses()) continue;
      WithInsertPoint guard(n);
      std::optional<Value*> c =
          torch::jit::tryInsertConstant(graph, it->second[0].value, std::nullopt, n->scope());
      if (!c) continue;
      v->replaceAllUsesWith(*c);
      changed = true;
    }
  }
  return changed;
}

void simplify(std::shared_ptr<Graph>& graph) {
  torch::jit::ConstantPropagation(graph);
  torch::jit::ConstantPooling(graph);
  torch::jit::EliminateDeadCode(graph);
}

}  // namespace kiln::torchscript
