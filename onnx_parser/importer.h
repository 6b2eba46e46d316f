// What an operator importer sees of its ONNX node (onnx_parser/ops/*.cpp), without protobuf.
//
// Each ops file registers its importers itself, at load time, with one local entry:
//   const ImporterRegistration kRegistered{{"Relu", import_relu}, {"Sigmoid", import_sigmoid}};
// There is no central list. An importer reads the node's inputs and attributes through the
// NodeContext, adds layers to the network, and sets each output; a node it cannot express fails
// with ctx.fail("why"), which the parser reports with the node's name, op type and opset.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "ir/network.h"

namespace kiln::onnx {

class NodeContext {
 public:
  virtual ~NodeContext() = default;

  virtual const std::string& op_type() const = 0;
  virtual const std::string& name() const = 0;  // the layer-name prefix of this node
  virtual int opset() const = 0;                // the model's ai.onnx opset
  virtual Network& net() = 0;

  // Inputs: ONNX marks an absent optional input with an empty name (or leaves it off the end).
  virtual int num_inputs() const = 0;
  virtual bool has_input(int i) const = 0;
  TensorId input(int i) const;  // fails when absent
  TensorDesc desc(int i) const { return net_const().desc(input(i)); }
  // The values of input i when they are known while parsing (a constant, or tracked shape
  // arithmetic with every entry known); nullopt otherwise. Floating values are converted.
  std::optional<std::vector<int64_t>> int_values(int i) const;
  // The values of an integer or bool tensor known while parsing (a constant or tracked values).
  std::optional<std::vector<int64_t>> known_values(TensorId t) const;
  std::optional<std::vector<double>> float_values(int i) const;
  // Told of every constant whose values an importer reads while parsing (directly or through
  // constants folded from it): an initializer read so (a Resize's scales, a Pad's pads) decides
  // the network's structure and stays a plain constant, never a refittable weight.
  virtual void note_value_read(TensorId) const {}
  // Parse-time folding (fold_small) of layers over constants: whether `inputs` may fold, and the
  // constant a fold made of them (the importer tracks which initializers it derives from).
  virtual bool may_fold(const std::vector<TensorId>& /*inputs*/) const { return true; }
  virtual void note_fold(const std::vector<TensorId>& /*inputs*/, TensorId /*out*/) const {}

  // Attributes (ints and floats as declared by ONNX).
  virtual bool has_attr(const std::string& name) const = 0;
  virtual int64_t attr_int(const std::string& name, std::optional<int64_t> fallback = {}) const = 0;
  virtual double attr_float(const std::string& name, std::optional<double> fallback = {}) const = 0;
  virtual std::string attr_string(const std::string& name,
                                  std::optional<std::string> fallback = {}) const = 0;
  virtual std::vector<int64_t> attr_ints(const std::string& name,
                                         std::optional<std::vector<int64_t>> fallback = {}) const = 0;
  virtual std::vector<double> attr_floats(const std::string& name,
                                          std::optional<std::vector<double>> fallback = {}) const = 0;
  virtual std::vector<std::string> attr_strings(
      const std::string& name, std::optional<std::vector<std::string>> fallback = {}) const = 0;
  // The ONNX element type (TensorProto::DataType number) of a tensor Kiln holds in another dtype
  // (uint8 in int32, ...): 0 when the tensor's dtype is its ONNX type. Importers that produce
  // such a tensor mark it (QuantizeLinear's uint8 output).
  virtual int32_t held_type(TensorId t) const = 0;
  virtual void set_held_type(TensorId t, int32_t onnx_type) = 0;

  // A tensor attribute (Constant's value) as a new constant of the network.
  virtual TensorId attr_tensor(const std::string& name) = 0;
  // A graph attribute (If's branches, Loop's and Scan's bodies) imported in place: its inputs
  // bound to `inputs` (outer-scope names stay visible), its nodes added to the network; returns
  // its outputs. Each call imports the graph again (an unrolled loop calls it per iteration).
  virtual std::vector<TensorId> inline_graph(const std::string& name,
                                             const std::vector<TensorId>& inputs) = 0;
  virtual int graph_inputs(const std::string& name) = 0;  // how many inputs the graph takes
  // Fails when the node has an attribute the importer did not read (it may change the meaning).
  virtual void check_attrs_read() const = 0;

  // Outputs: ONNX may leave optional outputs unnamed.
  virtual int num_outputs() const = 0;
  virtual bool wants_output(int i) const = 0;
  virtual void set_output(int i, TensorId t) = 0;

  // Adds a layer named after the node (suffix distinguishes the layers of one node).
  Layer& add(const std::string& op, const std::vector<TensorId>& inputs, Attributes attrs = {},
             const std::string& suffix = "");
  TensorId add1(const std::string& op, const std::vector<TensorId>& inputs, Attributes attrs = {},
                const std::string& suffix = "");
  // Constants made by importers (names derived from the node).
  TensorId constant_i64(const std::vector<int64_t>& values, Dims dims);
  TensorId constant_i64(const std::vector<int64_t>& values) {
    return constant_i64(values, Dims{static_cast<int64_t>(values.size())});
  }
  TensorId scalar(DataType dtype, double value, int rank = 0);  // a [1]*rank constant
  TensorId cast(TensorId t, DataType to);                       // t itself when already of that dtype
  // An elementwise layer (add, mul, eq, ...). int8 operands (ONNX int8 arithmetic) compute in
  // int32 and wrap back to int8, as the engine's int8 holds quantized values only.
  TensorId elementwise(const std::string& op, TensorId a, TensorId b);
  TensorId unary(const std::string& op, TensorId x);

  [[noreturn]] void fail(const std::string& why) const;

 protected:
  virtual TensorId input_id(int i) const = 0;
  // `base`, or `base` with a suffix, unused by any layer or node of the network so far.
  virtual std::string unique_layer_name(const std::string& base) = 0;
  const Network& net_const() const { return const_cast<NodeContext*>(this)->net(); }
  std::optional<TensorId> fold_small(const std::string& op, const std::vector<TensorId>& inputs,
                                     const Attributes& attrs);
  int counter_ = 0;
};

using ImportFn = std::function<void(NodeContext&)>;

struct OpImporter {
  std::string op_type;  // default domain
  ImportFn fn;
  // The oldest opset whose meaning of the operator the importer follows: a model importing an
  // older opset is refused for this node (Softmax's meaning changed in 13, Resize's in 11).
  int since = 1;
};

const OpImporter* find_importer(const std::string& op_type);

struct ImporterRegistration {
  ImporterRegistration(std::initializer_list<OpImporter> importers);
};

// Helpers shared by the importers.
int64_t normalize_axis(int64_t axis, int64_t rank, const NodeContext& ctx);
// Importers that build index or mask constants on the host (Trilu, OneHot, a negative-step
// Slice, ...) refuse sizes past this many elements rather than allocate them.
constexpr int64_t kMaxHostElements = int64_t{1} << 24;
void check_host_elements(int64_t n, const char* what, const NodeContext& ctx);
// Conv's layer for x and w (floating, same dtype) with the node's attributes (kernel_shape,
// strides, dilations, group, pads / auto_pad; asymmetric padding padded explicitly with 0).
TensorId convolution(NodeContext& ctx, TensorId x, TensorId w);

}  // namespace kiln::onnx
