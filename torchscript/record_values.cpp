#include "torchscript/record_values.h"

#include <torch/csrc/jit/runtime/interpreter.h>

namespace kiln::torchscript {
namespace {

bool recordable(const c10::TypePtr& t) {
  if (t->kind() == c10::TypeKind::TensorType) return true;
  if (t->kind() == c10::TypeKind::IntType || t->kind() == c10::TypeKind::FloatType ||
      t->kind() == c10::TypeKind::BoolType)
    return true;
  if (auto list = t->cast<c10::ListType>()) return list->getElementType()->kind() == c10::TypeKind::IntType;
  return false;
}

Observed observe(const c10::IValue& v) {
  Observed o;
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    o.is_tensor = true;
    o.dtype = t.scalar_type();
    o.shape = t.sizes().vec();
    if (t.numel() <= kSmallTensor) o.value = t.detach().clone();
  } else if (v.isInt() || v.isDouble() || v.isBool() || v.isIntList()) {
    o.value = v;
  }
  return o;
}

}  // namespace

ValueRecord record_values(const std::shared_ptr<torch::jit::Graph>& graph, const c10::IValue& self,
                          const std::vector<std::vector<at::Tensor>>& runs) {
  std::vector<const torch::jit::Value*> watched;
  for (size_t i = 1; i < graph->inputs().size(); ++i) watched.push_back(graph->inputs()[i]);
  for (torch::jit::Node* n : graph->nodes()) {
    if (n->kind() == c10::prim::Constant) continue;
    for (torch::jit::Value* v : n->outputs()) {
      if (recordable(v->type())) watched.push_back(v);
    }
  }
  // The graph returns its own outputs followed by every watched value while the code is built.
  const size_t own_outputs = graph->outputs().size();
  for (const torch::jit::Value* v : watched) graph->registerOutput(const_cast<torch::jit::Value*>(v));
  torch::jit::Code code(graph, "kiln_record_values");
  while (graph->outputs().size() > own_outputs) graph->eraseOutput(graph->outputs().size() - 1);

  ValueRecord record;
  torch::NoGradGuard no_grad;
  for (size_t run = 0; run < runs.size(); ++run) {
    torch::jit::Stack stack{self};
    for (const at::Tensor& t : runs[run]) stack.emplace_back(t);
    try {
      torch::jit::InterpreterState(code).run(stack);
    } catch (const c10::Error& e) {
      throw RunFailure(run, e.what_without_backtrace());
    } catch (const std::exception& e) {  // the interpreter's own, for errors raised by TorchScript code
      throw RunFailure(run, e.what());
    }
    const size_t first = stack.size() - watched.size();
    for (size_t k = 0; k < watched.size(); ++k) record[watched[k]].push_back(observe(stack[first + k]));
  }
  return record;
}

}  // namespace kiln::torchscript
