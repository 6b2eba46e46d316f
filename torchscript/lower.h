// TorchScript lowering: module -> one frozen, inlined, functional forward graph whose ops the
// KGraph translation (to_kgraph.h) reads one to one. Each pass says what it rewrites and reports
// whether it changed anything; lower_module runs them in order.
#pragma once

#include <torch/script.h>

#include "torchscript/record_values.h"

namespace kiln::torchscript {

// Clone, eval, inline, freeze (weights become constants), then the graph passes
// below. The result's forward graph is lowered; `module` is not modified.
torch::jit::Module lower_module(const torch::jit::Module& module);

// ListUnpack(aten::size(x)) -> aten::size.int(x, k) per element: `b, s, d = x.shape` then names
// each size on its own, so static ones fold and dynamic ones become host scalars.
bool unpack_size_lists(torch::jit::Graph& graph);

// aten::len(aten::size(x)) -> aten::dim(x): the rank is static even when the sizes are not.
bool replace_len_of_size(torch::jit::Graph& graph);

// aten::linear(x, w, b) -> aten::add(aten::matmul(x, aten::t(w)), b) (the weight transpose folds
// into a constant): the same decomposition torch.export makes, so one converter set serves both.
bool decompose_linear(torch::jit::Graph& graph);

// Replaces values computed from sizes alone (aten::size / dim / numel and pure ops on their
// results, incl. small tensors from prim::NumToTensor in traced graphs) by constants when every
// recorded run saw the same value. Safe because such a value depends only on input shapes and
// the record covers the min, opt and max shapes; data-dependent sizes (nonzero) differ between
// the two opt runs and are kept.
bool fold_static_values(torch::jit::Graph& graph, const ValueRecord& record);

// Constant propagation (folds arithmetic on folded sizes and prim::If on constant conditions),
// constant pooling and dead code elimination.
void simplify(std::shared_ptr<torch::jit::Graph>& graph);

}  // namespace kiln::torchscript
