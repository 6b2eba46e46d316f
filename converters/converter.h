// Converters: one per aten op overload, turning a KGraph node into core::Network layers.
//
// Each is registered on the exact overload name with
//   - capability(graph, node): "" when the node converts, otherwise the reason it does not
//     (attributes, dtypes, unused-output requirements); the partitioner shows the reason;
//   - dynamic_shapes: whether it handles values with dynamic (-1) dims;
//   - convert(ctx, node): reads arguments by name and adds layers named after the node;
//   - limits: one line for docs/ops.md ("Converted aten ops"), checked by a test.
// The partitioner and the frontends ask the registry; nothing else names ops.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "ir/network.h"
#include "lowering/kgraph.h"

namespace kiln {

// Maps KGraph values to the Network tensors that hold them while one segment is converted.
class ConversionContext {
 public:
  ConversionContext(const KGraph& graph, Network& net) : graph_(graph), net_(net) {}

  const KGraph& graph() const { return graph_; }
  Network& net() { return net_; }

  // The tensor of a value argument (constants become Network constants on first use).
  TensorId tensor(const KNode& node, const std::string& arg_name);
  TensorId tensor(ValueId v);
  // A number argument as a rank-0 constant of `dtype` (a value argument is returned as is).
  TensorId scalar_or_tensor(const KNode& node, const std::string& arg_name, DataType dtype);
  // A size list (ints and host scalars) as a 1-D int64 tensor with tracked values; -1 when the
  // list is plain ints (pass them as an attribute instead).
  TensorId size_tensor(const KNode& node, const std::string& arg_name);

  void bind(ValueId v, TensorId t);  // a segment input, or a value defined by a converter
  bool has(ValueId v) const { return tensors_.count(v) != 0; }
  // Binds the node's output `index` (skipped when nobody uses it).
  void set_output(const KNode& node, size_t index, TensorId t);

  // Adds a layer named after the node ("conv1", "conv1/bias" with a suffix).
  Layer& add(const KNode& node, const std::string& op, const std::vector<TensorId>& inputs,
             Attributes attrs = {}, const std::string& suffix = "");
  TensorId constant_i64(const KNode& node, const std::vector<int64_t>& values, const Dims& dims,
                        const std::string& suffix);

 private:
  const KGraph& graph_;
  Network& net_;
  std::map<ValueId, TensorId> tensors_;
  std::set<std::string> used_names_;
};

struct Converter {
  std::string target;
  bool dynamic_shapes = true;
  std::function<std::string(const KGraph&, const KNode&)> capability;
  std::function<void(ConversionContext&, const KNode&)> convert;
  std::string limits;
};

void register_converter(Converter c);

// A converter file's registration entry: runs `register_all` (its register_converter calls) when
// the library loads, so no central list names converter files.
struct ConverterRegistration {
  explicit ConverterRegistration(void (*register_all)()) { register_all(); }
};
// Converters added while the program runs (Python's @kiln.converter, plugin libraries): `c`
// replaces the converter of c.target, a built-in one too, until remove_override_converter(target)
// brings back the one it replaced (or none). Not while a compile runs.
void override_converter(Converter c);
void remove_override_converter(const std::string& target);
const Converter* find_converter(const std::string& target);

// The converter that runs op `target` through PyTorch inside the engine (a `torch_op` layer,
// defined by libkiln_runtime): CompileOptions::torch_ops_in_engine installs it for its ops.
Converter torch_op_converter(const std::string& target);
std::vector<const Converter*> registered_converters();  // sorted by target

// "" when a converter exists for the node and accepts it (including its dynamic-shape flag),
// otherwise the reason it cannot run in an engine.
std::string check_convertible(const KGraph& graph, const KNode& node);

}  // namespace kiln
