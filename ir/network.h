// Network: the engine's IR. Tensors (inputs, constants, activations) and layers (an op name,
// input/output tensor ids, typed attributes), kept in topological order: a layer is only ever
// added after the layers that produce its inputs, and passes keep that order.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "ir/attributes.h"
#include "ir/dims.h"
#include "ir/dtype.h"
#include "ir/lineage.h"

namespace kiln {

using TensorId = int32_t;

// Host-known values of a small integer tensor: shape arithmetic (shape-of -> gather -> mul ->
// concat -> reshape) is evaluated on the host during shape inference, so a reshape can depend on
// dynamic dims. An entry kUnknownValue is not known until run time (a dynamic dim at build time);
// nullptr means the tensor's values are not tracked at all (data computed on the device).
using ShapeValues = std::shared_ptr<const std::vector<int64_t>>;
constexpr int64_t kUnknownValue = std::numeric_limits<int64_t>::min();
constexpr int64_t kMaxShapeValues = 64;  // larger tensors are never tracked

enum class TensorKind : uint8_t { kInput = 0, kConstant = 1, kActivation = 2 };

struct Tensor {
  TensorId id = -1;
  std::string name;
  DataType dtype = DataType::kFloat32;
  Dims dims;
  TensorKind kind = TensorKind::kActivation;
  // Constants only: host bytes, row-major. Null only for a weight-derived constant (lineage set) of
  // a plan saved without its weights (Plan::serialize(strip_weights)), until a refit fills it.
  std::shared_ptr<const std::vector<uint8_t>> data;
  ShapeValues values;  // derived, never serialized: see ShapeValues (recomputed by revalidate)
  LineagePtr lineage;  // constants derived from refittable weights: see ir/lineage.h
};

struct Layer {
  std::string name;
  std::string op;
  std::vector<TensorId> inputs;
  std::vector<TensorId> outputs;
  Attributes attrs;
};

struct TensorDesc {
  DataType dtype;
  Dims dims;
  ShapeValues values = nullptr;  // see ShapeValues; schemas of shape-arithmetic ops propagate it
};

// The tracked values of an integer or bool constant with at most kMaxShapeValues elements.
ShapeValues constant_values(DataType dtype, const Dims& dims, const std::vector<uint8_t>& data);
// True when `v` is tracked and every entry is known.
bool fully_known(const ShapeValues& v);
ShapeValues make_values(std::vector<int64_t> v);

class Network {
 public:
  TensorId add_input(const std::string& name, DataType dtype, const Dims& dims);
  // Copies `bytes` bytes; their count must match dtype and dims.
  TensorId add_constant(const std::string& name, DataType dtype, const Dims& dims, const void* data,
                        size_t bytes);
  TensorId add_constant(const std::string& name, DataType dtype, const Dims& dims,
                        std::shared_ptr<const std::vector<uint8_t>> data);

  // Adds a layer of any registered op. Inputs and attributes are validated and the outputs'
  // dtypes and shapes inferred now, so a bad layer is refused here with its name in the message.
  Layer& add_layer(const std::string& op, const std::vector<TensorId>& inputs, Attributes attrs,
                   const std::string& name = "");

  // Typed helpers for the ops of the core set.
  Layer& add_matmul(TensorId a, TensorId b, bool transpose_a = false, bool transpose_b = false,
                    const std::string& name = "");
  Layer& add_elementwise(TensorId a, TensorId b, const std::string& op, const std::string& name = "");
  // alpha (leaky_relu slope, elu alpha, clip min): unset keeps the op's default for the type.
  Layer& add_activation(TensorId x, const std::string& type, std::optional<double> alpha = std::nullopt,
                        const std::string& name = "");
  Layer& add_identity(TensorId x, const std::string& name = "");

  // Marks constant `t` as a refittable weight named `source` (a parameter's qualified name):
  // refit (Engine::refit) sets it, and every constant the builder derives from it, by that name.
  void mark_weight(TensorId t, const std::string& source);

  // Marks a tensor as a network output; a non-empty name renames it (it becomes its binding name).
  void mark_output(TensorId t, const std::string& name = "");

  TensorDesc desc(TensorId id) const;  // dtype, dims and tracked values of a tensor
  const Tensor& tensor(TensorId id) const;
  Tensor& tensor(TensorId id);
  TensorId find_tensor(const std::string& name) const;  // -1 when absent
  const std::vector<Tensor>& tensors() const { return tensors_; }
  const std::vector<Layer>& layers() const { return layers_; }
  std::vector<Layer>& mutable_layers() { return layers_; }
  const std::vector<TensorId>& inputs() const { return inputs_; }
  const std::vector<TensorId>& outputs() const { return outputs_; }
  std::vector<TensorId>& mutable_outputs() { return outputs_; }
  bool is_output(TensorId t) const;

  // Index of the layer producing each tensor (-1 for inputs and constants).
  std::vector<int> producers() const;
  // Drops tensors no layer or binding refers to and renumbers ids densely. Passes call it after
  // removing layers.
  void compact();
  // Re-runs validation and shape inference of every layer, in order. Used by the builder and by
  // plan deserialization, which must not trust what it reads.
  void revalidate();
  // Rebuilds the name index after tensors were renamed or renumbered.
  void reindex();

  // Used by deserialization to restore a network verbatim (then revalidate()).
  TensorId restore_tensor(Tensor t);
  void restore_layer(Layer l);
  void restore_io(std::vector<TensorId> inputs, std::vector<TensorId> outputs);

  // "<base>_<n>", a layer name no layer or tensor has yet (what add_layer gives a layer added
  // without a name, from its op).
  std::string unique_layer_name(const std::string& base);

 private:
  TensorId new_tensor(Tensor t);

  std::vector<Tensor> tensors_;
  std::vector<Layer> layers_;
  std::vector<TensorId> inputs_;
  std::vector<TensorId> outputs_;
  std::unordered_map<std::string, TensorId> by_name_;
  int name_counter_ = 0;
};

}  // namespace kiln
