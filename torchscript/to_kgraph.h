// Lowered TorchScript graph -> KGraph, one KGraph node per TorchScript node (constants, list and
// tuple constructs and the ListUnpack of a list-returning node are folded into their readers and
// producers). The node keeps the op overload ("aten.transpose.int"; "default" for an empty
// overload name) with its arguments by schema name, defaults filled, except where TorchScript
// holds the un-decomposed op that torch.export would not: those are renamed to the overloads
// export produces (conv2d -> convolution, batch_norm -> _native_batch_norm_legit_no_training,
// size.int -> sym_size.int, chunk -> split_with_sizes, ...), with the arguments that overload
// takes, so the converters see one op set from both frontends. Dims come from the record.
#pragma once

#include <torch/script.h>

#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "lowering/kgraph.h"
#include "torchscript/compile.h"
#include "torchscript/record_values.h"

namespace kiln::torchscript {

struct Translation {
  KGraph graph;
  std::vector<torch::jit::Node*> source;  // KGraph node index -> its TorchScript node
  std::vector<torch::jit::Node*> unpack;  // the folded ListUnpack of that node, or nullptr
  std::unordered_map<const torch::jit::Value*, ValueId> value_of;
  std::map<ValueId, torch::jit::Value*> ts_value;  // KGraph value -> TorchScript value
  std::map<int, std::string> torch_nodes;          // nodes that must run in PyTorch, and why
};

Translation to_kgraph(const std::shared_ptr<torch::jit::Graph>& graph, const ValueRecord& record,
                      const std::vector<InputSpec>& inputs);

}  // namespace kiln::torchscript
