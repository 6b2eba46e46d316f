// KGraph: the aten-level graph both frontends lower to (torch.export FX graphs today, TorchScript
// later). Torch-free: weights travel as raw bytes + dtype + dims, like Network constants.
//
// A value is a tensor (dims with -1 for a dynamic dim) or a host scalar (a symbolic size such as
// the result of aten.sym_size.int: int64, rank 0, `host_scalar` set). A node is one aten op
// overload ("aten.convolution.default") with its arguments by schema name; an argument refers to
// a value or is an immediate (none / bool / int / float / string / list of arguments).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ir/dims.h"
#include "ir/dtype.h"

namespace kiln {

using ValueId = int32_t;
constexpr ValueId kNoValue = -1;

struct KValue {
  ValueId id = kNoValue;
  std::string name;
  DataType dtype = DataType::kFloat32;
  Dims dims;
  bool host_scalar = false;                          // a symbolic size, never a device tensor
  std::shared_ptr<const std::vector<uint8_t>> data;  // constants only: row-major bytes
  // Constants only: the refittable weight this is (a parameter's or buffer's qualified name, e.g.
  // "layer1.0.conv1.weight"); empty for a plain constant. Engines mark it (Network::mark_weight).
  std::string weight;
  bool is_constant() const { return data != nullptr; }
};

struct Arg {
  enum class Kind : uint8_t { kNone, kBool, kInt, kFloat, kString, kValue, kList };
  Kind kind = Kind::kNone;
  bool b = false;
  int64_t i = 0;
  double f = 0.0;
  std::string s;
  ValueId value = kNoValue;
  std::vector<Arg> list;

  static Arg none() { return {}; }
  static Arg of_bool(bool v);
  static Arg of_int(int64_t v);
  static Arg of_float(double v);
  static Arg of_string(std::string v);
  static Arg of_value(ValueId v);
  static Arg of_list(std::vector<Arg> v);

  bool is_none() const { return kind == Kind::kNone; }
  bool is_value() const { return kind == Kind::kValue; }
  bool is_number() const { return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool; }
  // A list of plain ints (no value refers to a symbolic size).
  bool is_int_list() const;
  std::vector<int64_t> ints() const;  // requires is_int_list()
  double as_double() const;           // bool, int or float
  std::string describe() const;       // for messages: "3", "[1, %x]", "None"
};

struct KNode {
  std::string name;                               // the source node's name; layers converted from it carry it
  std::string target;                             // op overload: "aten.convolution.default", "_operator.mul"
  std::vector<std::pair<std::string, Arg>> args;  // in schema order, by name
  std::vector<ValueId> outputs;                   // kNoValue for an output nobody uses
  std::string location;                           // model source ("model.py:12 in forward")

  const Arg* find(const std::string& arg_name) const;  // nullptr when absent
  const Arg& arg(const std::string& arg_name) const;   // throws naming the node when absent
  std::string describe() const;                        // "conv (aten.convolution.default)"
};

class KGraph {
 public:
  ValueId add_input(const std::string& name, DataType dtype, const Dims& dims);
  ValueId add_constant(const std::string& name, DataType dtype, const Dims& dims, const void* data,
                       size_t bytes, const std::string& weight = "");
  // An intermediate value (a node output).
  ValueId add_value(const std::string& name, DataType dtype, const Dims& dims, bool host_scalar);
  // Arguments refer to values already added; outputs are values not produced by another node.
  size_t add_node(KNode node);
  void mark_output(ValueId v);

  const KValue& value(ValueId v) const;
  const std::vector<KValue>& values() const { return values_; }
  const std::vector<KNode>& nodes() const { return nodes_; }
  const std::vector<ValueId>& inputs() const { return inputs_; }
  const std::vector<ValueId>& outputs() const { return outputs_; }

  // Values a node reads (in argument order, lists flattened, duplicates kept once).
  static std::vector<ValueId> node_inputs(const KNode& node);
  // Index of the node producing each value (-1 for inputs and constants).
  std::vector<int> producers() const;
  // Whether `v` is a constant or computed from constants alone (no graph input upstream): an
  // engine computes such a value on its own device wherever torch put it.
  bool from_constants_only(ValueId v) const;
  std::string summary() const;  // one line per node, for debug logs

 private:
  void check_value(ValueId v, const std::string& who) const;

  std::vector<KValue> values_;
  std::vector<KNode> nodes_;
  std::vector<ValueId> inputs_;
  std::vector<ValueId> outputs_;
  std::vector<int> producer_;
};

}  // namespace kiln
