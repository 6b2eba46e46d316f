// The ONNX parser: model bytes -> ModelProto (protobuf-lite) -> Network. See parser.h.
#include "onnx_parser/parser.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <unordered_map>

#include "ir/error.h"
#include "ir/logging.h"
#include "ir/minifloat.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"
#include "onnx_kiln_onnx-ml.pb.h"
#include "onnx_parser/importer.h"

namespace kiln::onnx {

namespace {

namespace pb = ::kiln_onnx;

std::map<std::string, OpImporter>& importer_registry() {
  static std::map<std::string, OpImporter> r;
  return r;
}

// ---- element types ----------------------------------------------------------------------------

struct ElemType {
  const char* onnx_name;         // numpy's (ml_dtypes') name of the type
  DataType dtype;                // how Kiln holds it
  size_t raw_size;               // bytes per element in raw_data (0: packed, `bits` each)
  bool exact;                    // the engine dtype is the ONNX type itself
  int bits = 0;                  // narrow types (importer.h): bits per element
  const char* format = nullptr;  // narrow floats: fake_quantize's format (ir/minifloat.h)
};

// Bytes of `n` elements in raw_data: sub-byte types pack 8 / bits elements per byte, the first
// in the lowest bits.
int64_t raw_bytes(const ElemType& et, int64_t n) {
  if (et.raw_size) return tensor_bytes(Dims{n}, et.raw_size);
  const int64_t per_byte = 8 / et.bits;
  return n / per_byte + (n % per_byte != 0);
}

// Returns false for element types the parser cannot hold at all (strings, complex, 4-bit, ...).
bool elem_type(int32_t t, ElemType* out) {
  using T = pb::TensorProto;
  switch (t) {
    case T::FLOAT:
      *out = {"float32", DataType::kFloat32, 4, true};
      return true;
    case T::FLOAT16:
      *out = {"float16", DataType::kFloat16, 2, true};
      return true;
    case T::BFLOAT16:
      *out = {"bfloat16", DataType::kBFloat16, 2, true};
      return true;
    case T::INT32:
      *out = {"int32", DataType::kInt32, 4, true};
      return true;
    case T::INT64:
      *out = {"int64", DataType::kInt64, 8, true};
      return true;
    case T::INT8:
      *out = {"int8", DataType::kInt8, 1, true};
      return true;
    case T::BOOL:
      *out = {"bool", DataType::kBool, 1, true};
      return true;
    case T::FLOAT8E4M3FN:
      *out = {"float8_e4m3fn", DataType::kFloat8E4M3, 1, true};
      return true;
    case T::DOUBLE:
      *out = {"float64", DataType::kFloat32, 8, false};
      return true;
    case T::UINT8:
      *out = {"uint8", DataType::kInt32, 1, false};
      return true;
    case T::INT16:
      *out = {"int16", DataType::kInt32, 2, false};
      return true;
    case T::UINT16:
      *out = {"uint16", DataType::kInt32, 2, false};
      return true;
    case T::UINT32:
      *out = {"uint32", DataType::kInt64, 4, false};
      return true;
    case T::UINT64:
      *out = {"uint64", DataType::kInt64, 8, false};
      return true;
    // Narrow types: floats held as float32 (their values exactly), integers as int32.
    case T::FLOAT8E4M3FNUZ:
      *out = {"float8_e4m3fnuz", DataType::kFloat32, 1, false, 8, "e4m3fnuz"};
      return true;
    case T::FLOAT8E5M2:
      *out = {"float8_e5m2", DataType::kFloat32, 1, false, 8, "e5m2"};
      return true;
    case T::FLOAT8E5M2FNUZ:
      *out = {"float8_e5m2fnuz", DataType::kFloat32, 1, false, 8, "e5m2fnuz"};
      return true;
    case T::FLOAT4E2M1:
      *out = {"float4_e2m1fn", DataType::kFloat32, 0, false, 4, "e2m1"};
      return true;
    case T::INT4:
      *out = {"int4", DataType::kInt32, 0, false, 4};
      return true;
    case T::UINT4:
      *out = {"uint4", DataType::kInt32, 0, false, 4};
      return true;
    case T::INT2:
      *out = {"int2", DataType::kInt32, 0, false, 2};
      return true;
    case T::UINT2:
      *out = {"uint2", DataType::kInt32, 0, false, 2};
      return true;
    default:
      return false;
  }
}

std::string elem_type_name(int32_t t) {
  if (pb::TensorProto_DataType_IsValid(t)) return pb::TensorProto_DataType_Name(t);
  return "type " + std::to_string(t);
}

// Narrow types: raw bytes, or int32_data with one (packed) byte per entry, decoded into the
// float32 values or int32 integers that hold them.
std::vector<uint8_t> convert_narrow(const pb::TensorProto& tp, const ElemType& et, int64_t n,
                                    const uint8_t* src) {
  const int64_t nbytes = raw_bytes(et, n);
  std::vector<uint8_t> packed;
  if (src == nullptr) {
    KILN_CHECK(tp.int32_data_size() == nbytes, "tensor '" << tp.name() << "' has " << tp.int32_data_size()
                                                          << " values in int32_data but its dims hold "
                                                          << nbytes << " (packed) bytes");
    packed.resize(static_cast<size_t>(nbytes));
    for (int64_t i = 0; i < nbytes; ++i) packed[i] = static_cast<uint8_t>(tp.int32_data(static_cast<int>(i)));
    src = packed.data();
  }
  Minifloat format;
  if (et.format) minifloat_format(et.format, &format);
  const int per_byte = 8 / et.bits;
  const unsigned mask = (1u << et.bits) - 1;
  const bool is_signed = tp.data_type() == pb::TensorProto::INT4 || tp.data_type() == pb::TensorProto::INT2;
  std::vector<uint8_t> out(static_cast<size_t>(n) * 4);
  for (int64_t i = 0; i < n; ++i) {
    const unsigned code = src[i / per_byte] >> (i % per_byte * et.bits) & mask;
    if (et.format) {
      const float v = minifloat_value(code, format);
      std::memcpy(out.data() + 4 * i, &v, 4);
    } else {
      int32_t v = static_cast<int32_t>(code);
      if (is_signed && code >> (et.bits - 1)) v -= int32_t{1} << et.bits;
      std::memcpy(out.data() + 4 * i, &v, 4);
    }
  }
  return out;
}

// Converts `n` elements stored as ONNX type `t` (raw little-endian bytes at `src`, or, when
// `src` is null, the typed repeated fields of `tp`) into Kiln's storage of that type.
std::vector<uint8_t> convert_elements(const pb::TensorProto& tp, const ElemType& et, int64_t n,
                                      const uint8_t* src) {
  using T = pb::TensorProto;
  const int32_t t = tp.data_type();
  if (et.bits) return convert_narrow(tp, et, n, src);
  auto count_check = [&](int64_t have, const char* field) {
    KILN_CHECK(have == n, "tensor '" << tp.name() << "' has " << have << " values in " << field
                                     << " but its dims hold " << n);
  };
  if (src == nullptr) {  // the typed field must hold n values: checked before allocating n
    switch (t) {
      case T::FLOAT:
        count_check(tp.float_data_size(), "float_data");
        break;
      case T::DOUBLE:
        count_check(tp.double_data_size(), "double_data");
        break;
      case T::INT64:
        count_check(tp.int64_data_size(), "int64_data");
        break;
      case T::UINT32:
      case T::UINT64:
        count_check(tp.uint64_data_size(), "uint64_data");
        break;
      default:
        count_check(tp.int32_data_size(), "int32_data");
        break;
    }
  }
  std::vector<uint8_t> out(static_cast<size_t>(tensor_bytes(Dims{n}, dtype_size(et.dtype))));
  if (src != nullptr && et.exact) {
    std::memcpy(out.data(), src, out.size());
    return out;
  }
  auto store = [&](int64_t i, auto v) {
    using V = decltype(v);
    switch (et.dtype) {
      case DataType::kFloat32: {
        float f = static_cast<float>(v);
        std::memcpy(out.data() + 4 * i, &f, 4);
        break;
      }
      case DataType::kInt32: {
        int32_t x = static_cast<int32_t>(v);
        std::memcpy(out.data() + 4 * i, &x, 4);
        break;
      }
      case DataType::kInt64: {
        int64_t x = static_cast<int64_t>(v);
        std::memcpy(out.data() + 8 * i, &x, 8);
        break;
      }
      case DataType::kFloat16:
      case DataType::kBFloat16: {
        uint16_t x = static_cast<uint16_t>(v);
        std::memcpy(out.data() + 2 * i, &x, 2);
        break;
      }
      default: {  // int8, bool, float8: one byte
        out[i] =
            static_cast<uint8_t>(static_cast<std::conditional_t<std::is_floating_point_v<V>, int, V>>(v));
        break;
      }
    }
  };
  if (src != nullptr) {  // raw bytes of a type Kiln holds wider (or narrower: float64)
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* p = src + i * et.raw_size;
      switch (t) {
        case T::DOUBLE: {
          double d;
          std::memcpy(&d, p, 8);
          store(i, d);
          break;
        }
        case T::UINT8:
          store(i, static_cast<int64_t>(*p));
          break;
        case T::INT16: {
          int16_t x;
          std::memcpy(&x, p, 2);
          store(i, static_cast<int64_t>(x));
          break;
        }
        case T::UINT16: {
          uint16_t x;
          std::memcpy(&x, p, 2);
          store(i, static_cast<int64_t>(x));
          break;
        }
        case T::UINT32: {
          uint32_t x;
          std::memcpy(&x, p, 4);
          store(i, static_cast<int64_t>(x));
          break;
        }
        default: {
          uint64_t x;
          std::memcpy(&x, p, 8);
          store(i, static_cast<int64_t>(x));
          break;
        }
      }
    }
    return out;
  }
  switch (t) {
    case T::FLOAT:
      count_check(tp.float_data_size(), "float_data");
      for (int64_t i = 0; i < n; ++i) store(i, tp.float_data(static_cast<int>(i)));
      break;
    case T::DOUBLE:
      count_check(tp.double_data_size(), "double_data");
      for (int64_t i = 0; i < n; ++i) store(i, tp.double_data(static_cast<int>(i)));
      break;
    case T::INT64:
      count_check(tp.int64_data_size(), "int64_data");
      for (int64_t i = 0; i < n; ++i) store(i, tp.int64_data(static_cast<int>(i)));
      break;
    case T::UINT32:
    case T::UINT64:
      count_check(tp.uint64_data_size(), "uint64_data");
      for (int64_t i = 0; i < n; ++i) store(i, static_cast<int64_t>(tp.uint64_data(static_cast<int>(i))));
      break;
    default:  // int32_data holds int32, int16, int8, uint8, uint16, bool, float16/bfloat16 bits, float8
      count_check(tp.int32_data_size(), "int32_data");
      for (int64_t i = 0; i < n; ++i) store(i, static_cast<int64_t>(tp.int32_data(static_cast<int>(i))));
      break;
  }
  return out;
}

// A non-negative decimal count from an external-data entry.
int64_t parse_count(const std::string& text, const std::string& tensor) {
  KILN_CHECK(!text.empty() && text.size() <= 18 && text.find_first_not_of("0123456789") == std::string::npos,
             "tensor '" << tensor << "': external data offset/length '" << text << "' is not a byte count");
  return std::stoll(text);
}

std::string read_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  KILN_CHECK(f.good(), "cannot open " << what << " '" << path << "'");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// ---- the node context ----------------------------------------------------------------------

class Importer;

class ProtoNodeContext : public NodeContext {
 public:
  ProtoNodeContext(Importer& imp, const pb::NodeProto& node, std::string name)
      : imp_(imp), node_(node), name_(std::move(name)) {}

  const std::string& op_type() const override { return node_.op_type(); }
  const std::string& name() const override { return name_; }
  int opset() const override;
  Network& net() override;

  int num_inputs() const override { return node_.input_size(); }
  bool has_input(int i) const override { return i < node_.input_size() && !node_.input(i).empty(); }
  void note_value_read(TensorId t) const override;
  bool may_fold(const std::vector<TensorId>& inputs) const override;
  void note_fold(const std::vector<TensorId>& inputs, TensorId out) const override;

  bool has_attr(const std::string& name) const override { return find(name) != nullptr; }
  int64_t attr_int(const std::string& name, std::optional<int64_t> fallback) const override {
    const pb::AttributeProto* a = get(name, pb::AttributeProto::INT, fallback.has_value());
    return a ? a->i() : *fallback;
  }
  double attr_float(const std::string& name, std::optional<double> fallback) const override {
    const pb::AttributeProto* a = get(name, pb::AttributeProto::FLOAT, fallback.has_value());
    return a ? a->f() : *fallback;
  }
  std::string attr_string(const std::string& name, std::optional<std::string> fallback) const override {
    const pb::AttributeProto* a = get(name, pb::AttributeProto::STRING, fallback.has_value());
    return a ? a->s() : *fallback;
  }
  std::vector<int64_t> attr_ints(const std::string& name,
                                 std::optional<std::vector<int64_t>> fallback) const override {
    const pb::AttributeProto* a = get(name, pb::AttributeProto::INTS, fallback.has_value());
    return a ? std::vector<int64_t>(a->ints().begin(), a->ints().end()) : *fallback;
  }
  std::vector<double> attr_floats(const std::string& name,
                                  std::optional<std::vector<double>> fallback) const override {
    const pb::AttributeProto* a = get(name, pb::AttributeProto::FLOATS, fallback.has_value());
    return a ? std::vector<double>(a->floats().begin(), a->floats().end()) : *fallback;
  }
  std::vector<std::string> attr_strings(const std::string& name,
                                        std::optional<std::vector<std::string>> fallback) const override {
    const pb::AttributeProto* a = get(name, pb::AttributeProto::STRINGS, fallback.has_value());
    return a ? std::vector<std::string>(a->strings().begin(), a->strings().end()) : *fallback;
  }
  TensorId attr_tensor(const std::string& name) override;
  std::vector<TensorId> inline_graph(const std::string& name, const std::vector<TensorId>& inputs) override;
  int graph_inputs(const std::string& name) override {
    return get(name, pb::AttributeProto::GRAPH, false)->g().input_size();
  }
  int32_t held_type(TensorId t) const override;
  void set_held_type(TensorId t, int32_t onnx_type) override;
  void check_attrs_read() const override {
    for (const auto& a : node_.attribute()) {
      KILN_CHECK(read_.count(a.name()),
                 "attribute '" << a.name() << "' is not supported by Kiln's " << op_type() << " importer");
    }
  }

  int num_outputs() const override { return node_.output_size(); }
  bool wants_output(int i) const override { return i < node_.output_size() && !node_.output(i).empty(); }
  void set_output(int i, TensorId t) override;

 protected:
  TensorId input_id(int i) const override;
  std::string unique_layer_name(const std::string& base) override;

 private:
  const pb::AttributeProto* find(const std::string& name) const {
    for (const auto& a : node_.attribute()) {
      if (a.name() == name) return &a;
    }
    return nullptr;
  }
  const pb::AttributeProto* get(const std::string& name, pb::AttributeProto::AttributeType type,
                                bool optional) const {
    const pb::AttributeProto* a = find(name);
    read_.insert(name);
    if (a == nullptr) {
      if (!optional) fail("needs attribute '" + name + "'");
      return nullptr;
    }
    if (a->type() != type && a->type() != pb::AttributeProto::UNDEFINED) {
      fail("attribute '" + name + "' is a " + pb::AttributeProto_AttributeType_Name(a->type()) +
           ", expected " + pb::AttributeProto_AttributeType_Name(type));
    }
    if (!a->ref_attr_name().empty()) fail("attribute '" + name + "' refers to a function attribute");
    return a;
  }

  Importer& imp_;
  const pb::NodeProto& node_;
  std::string name_;
  mutable std::set<std::string> read_;
};

// ---- the importer ---------------------------------------------------------------------------

class Importer {
 public:
  Importer(const ParseOptions& options, ParseInfo* info) : options_(options), info_(info) {}

  Network run(const pb::ModelProto& model) {
    check_model(model);
    const pb::GraphProto& g = model.graph();
    for (const auto& init : g.initializer()) {
      KILN_CHECK(!init.name().empty(), "an initializer has no name");
      symbols_[init.name()] = constant(init, init.name());
    }
    KILN_CHECK(g.sparse_initializer_size() == 0, "sparse initializers are not supported (graph '"
                                                     << g.name()
                                                     << "'); densify them "
                                                        "(onnx.numpy_helper / onnx.helper) before parsing");
    for (const auto& in : g.input()) {
      if (symbols_.count(in.name())) continue;  // an initializer listed as input: a constant
      add_graph_input(in);
    }
    find_weights(g);
    for (int i = 0; i < g.node_size(); ++i) import_node(g.node(i), i);
    for (const auto& [t, name] : weights_) {
      if (!structural_.count(t)) net_.mark_weight(t, name);
    }
    std::set<TensorId> marked;
    for (const auto& out : g.output()) {
      auto it = symbols_.find(out.name());
      KILN_CHECK(it != symbols_.end(), "graph output '" << out.name() << "' is not produced by any node");
      TensorId t = it->second;
      note_binding(out.name(), out.type());
      if (net_.tensor(t).dtype == DataType::kFloat8E4M3) t = e4m3_binding(t, "output_" + out.name(), false);
      if (net_.tensor(t).kind != TensorKind::kActivation || marked.count(t) || net_.is_output(t)) {
        t = net_.add_identity(t, "output_" + out.name()).outputs[0];
      }
      marked.insert(t);
      net_.mark_output(t, out.name());
    }
    return std::move(net_);
  }

  Network& net() { return net_; }
  int opset() const { return opset_; }
  // Refittable weights. The main graph's float32/float16/bfloat16 initializers of more than one
  // element become weights named after the initializer (kiln.onnx.refit gives them new values),
  // except those of quantization nodes and of other domains' operators (whose importers read
  // scales and zero points) and those whose values an importer reads while parsing, directly or
  // through constants folded from them (structural_). A one-element initializer stays a plain
  // constant: the builder's patterns read such scalars (an attention scale, an epsilon).
  // A weight folded at parse time would lose its link to the constant made of it, so parse()
  // imports once more without folding those (refold_names()): the builder folds them instead,
  // recording the lineage.
  void value_read(TensorId t) {
    for (TensorId s : sources(t)) structural_.insert(s);
  }
  bool may_fold(const std::vector<TensorId>& inputs) const {
    for (TensorId t : inputs) {
      for (TensorId s : sources(t)) {
        if (no_fold_.count(weights_.at(s))) return false;
      }
    }
    return true;
  }
  void folded(const std::vector<TensorId>& inputs, TensorId out) {
    std::set<TensorId> all;
    for (TensorId t : inputs) {
      for (TensorId s : sources(t)) all.insert(s);
    }
    if (!all.empty()) derived_[out] = std::move(all);
  }
  // The weights that a fold consumed (none of them read): parse() imports again without folding.
  std::set<std::string> refold_names() const {
    std::set<std::string> out;
    for (const auto& [t, from] : derived_) {
      for (TensorId s : from) {
        if (!structural_.count(s)) out.insert(weights_.at(s));
      }
    }
    return out;
  }
  void set_no_fold(std::set<std::string> names) { no_fold_ = std::move(names); }

  void find_weights(const pb::GraphProto& g) {
    static const std::set<std::string> kQuantization = {
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
        "QLinearMatMul",  "ConvInteger",      "MatMulInteger"};
    std::set<std::string> excluded;
    for (const auto& node : g.node()) {
      const bool other_domain = !node.domain().empty() && node.domain() != "ai.onnx";
      if (!other_domain && !kQuantization.count(node.op_type())) continue;
      for (const auto& in : node.input()) excluded.insert(in);
    }
    for (const auto& init : g.initializer()) {
      const Tensor& t = net_.tensor(symbols_.at(init.name()));
      const bool float_type =
          t.dtype == DataType::kFloat32 || t.dtype == DataType::kFloat16 || t.dtype == DataType::kBFloat16;
      if (float_type && t.data && volume(t.dims) > 1 && !excluded.count(init.name()))
        weights_[t.id] = init.name();
    }
  }

  // The candidate weights `t` holds values of: itself, or those a folded constant came from.
  std::set<TensorId> sources(TensorId t) const {
    if (weights_.count(t)) return {t};
    auto it = derived_.find(t);
    return it == derived_.end() ? std::set<TensorId>{} : it->second;
  }

  TensorId lookup(const std::string& name) const {
    auto it = symbols_.find(name);
    KILN_CHECK(it != symbols_.end(), "input '" << name
                                               << "' is not produced by an earlier node, "
                                                  "an initializer or a graph input");
    return it->second;
  }
  void define(const std::string& name, TensorId t) { symbols_[name] = t; }

  // A subgraph imported in place (NodeContext::inline_graph): its initializers become constants,
  // its inputs are bound to `inputs`, its nodes are imported; names it defines are dropped after
  // (the outer scope sees only the returned outputs). Bounded in depth and in the nodes all
  // inlining adds, as an unrolled loop multiplies its body.
  std::vector<TensorId> inline_graph(const pb::GraphProto& g, const std::vector<TensorId>& inputs) {
    KILN_CHECK(
        inputs.size() == static_cast<size_t>(g.input_size()),
        "subgraph '" << g.name() << "' takes " << g.input_size() << " inputs, given " << inputs.size());
    KILN_CHECK(depth_ < kMaxGraphDepth, "subgraphs nested deeper than " << kMaxGraphDepth);
    inlined_nodes_ += g.node_size();
    KILN_CHECK(inlined_nodes_ <= kMaxInlinedNodes,
               "If / Loop / Scan unroll to more than "
                   << kMaxInlinedNodes << " nodes; Kiln imports control flow by unrolling it while parsing");
    struct Depth {
      int& d;
      explicit Depth(int& x) : d(x) { ++d; }
      ~Depth() { --d; }
    } depth(depth_);
    auto saved = symbols_;
    for (const auto& init : g.initializer()) {
      std::string name = init.name();
      for (int k = 1; net_.find_tensor(name) >= 0; ++k) name = init.name() + "_" + std::to_string(k);
      symbols_[init.name()] = constant(init, name);
    }
    for (int i = 0; i < g.input_size(); ++i) symbols_[g.input(i).name()] = inputs[static_cast<size_t>(i)];
    for (int i = 0; i < g.node_size(); ++i) import_node(g.node(i), i);
    std::vector<TensorId> out;
    for (const auto& o : g.output()) out.push_back(lookup(o.name()));
    symbols_ = std::move(saved);
    return out;
  }
  int32_t held_type(TensorId t) const {
    auto it = held_types_.find(t);
    return it == held_types_.end() ? 0 : it->second;
  }
  void set_held_type(TensorId t, int32_t onnx_type) { held_types_[t] = onnx_type; }

  TensorId constant(const pb::TensorProto& tp, const std::string& name) {
    ElemType et;
    KILN_CHECK(elem_type(tp.data_type(), &et), "tensor '" << tp.name() << "' has element type "
                                                          << elem_type_name(tp.data_type())
                                                          << ", which Kiln cannot hold");
    if (!et.exact) warn_once(et, tp.name());
    Dims dims(tp.dims().begin(), tp.dims().end());
    for (int64_t d : dims) KILN_CHECK(d >= 0, "tensor '" << tp.name() << "' has a negative dim");
    KILN_CHECK(dims.size() <= static_cast<size_t>(kMaxRank), "tensor '"
                                                                 << tp.name() << "' has rank " << dims.size()
                                                                 << "; Kiln supports up to " << kMaxRank);
    const int64_t n = volume(dims);
    std::vector<uint8_t> bytes;
    if (tp.data_location() == pb::TensorProto::EXTERNAL) {
      std::string raw = external_data(tp, raw_bytes(et, volume(dims)));
      bytes = convert_elements(tp, et, n, reinterpret_cast<const uint8_t*>(raw.data()));
    } else if (tp.has_raw_data()) {
      const int64_t need = raw_bytes(et, volume(dims));
      KILN_CHECK(static_cast<int64_t>(tp.raw_data().size()) == need,
                 "tensor '" << tp.name() << "' has " << tp.raw_data().size() << " bytes of raw_data, "
                            << "its dims and type need " << need);
      bytes = convert_elements(tp, et, n, reinterpret_cast<const uint8_t*>(tp.raw_data().data()));
    } else {
      bytes = convert_elements(tp, et, n, nullptr);
    }
    const TensorId id = net_.add_constant(name, et.dtype, dims,
                                          std::make_shared<const std::vector<uint8_t>>(std::move(bytes)));
    if (!et.exact) held_types_[id] = tp.data_type();
    return id;
  }

  std::string unique_name(const std::string& base) {
    std::string n = base.empty() ? "node" : base;
    if (used_names_.insert(n).second) return n;
    for (int i = 1;; ++i) {
      std::string c = n + "_" + std::to_string(i);
      if (used_names_.insert(c).second) return c;
    }
  }

 private:
  void check_model(const pb::ModelProto& model) {
    KILN_CHECK(model.has_graph(), "the model has no graph: not an ONNX model, or a truncated file");
    int64_t opset = -1;
    for (const auto& o : model.opset_import()) {
      if (o.domain().empty() || o.domain() == "ai.onnx") opset = o.version();
    }
    if (opset < 0 && model.opset_import_size() == 0) opset = 1;  // IR v1 had no opset_import
    KILN_CHECK(opset >= 0, "the model imports no ai.onnx opset; Kiln parses the default domain only");
    KILN_CHECK(opset <= kMaxOpset,
               "the model's ai.onnx opset is "
                   << opset << ", newer than " << kMaxOpset
                   << ", the newest Kiln's parser knows; export with opset_version <= " << kMaxOpset);
    KILN_CHECK(opset >= kMinOpset, "the model's ai.onnx opset is "
                                       << opset << ", older than " << kMinOpset
                                       << ", the oldest Kiln's parser supports; convert it first: "
                                          "onnx.version_converter.convert_version(model, 13)");
    opset_ = static_cast<int>(opset);
    if (info_) {
      info_->ir_version = model.ir_version();
      info_->opset = opset;
      info_->producer =
          model.producer_name() + (model.producer_version().empty() ? "" : " " + model.producer_version());
    }
  }

  void note_binding(const std::string& name, const pb::TypeProto& type) {
    if (!type.has_tensor_type() || !info_) return;
    ElemType et;
    if (elem_type(type.tensor_type().elem_type(), &et) && (!et.exact || et.dtype == DataType::kFloat8E4M3)) {
      info_->converted_bindings.push_back({name, et.onnx_name, binding_dtype(et)});
    }
  }

  // Graph inputs and outputs of float8 e4m3fn are bound as float32 (the values exactly: numpy
  // has no float8 and Kiln's engine API binds no float8 tensor); inside, the tensor is float8.
  static DataType binding_dtype(const ElemType& et) {
    return et.dtype == DataType::kFloat8E4M3 ? DataType::kFloat32 : et.dtype;
  }

  // Between float8 e4m3fn and its float32 binding: quantize / dequantize with scale 1 (exact).
  TensorId e4m3_binding(TensorId t, const std::string& name, bool to_float8) {
    const float one = 1.f;
    TensorId s = net_.add_constant(name + "/e4m3_scale", DataType::kFloat32, {}, &one, sizeof(one));
    Attributes a;
    a.set("format", std::string("e4m3"));
    if (!to_float8) a.set("dtype", std::string("float32"));
    return net_.add_layer(to_float8 ? "quantize" : "dequantize", {t, s}, a, name + "/e4m3_binding")
        .outputs[0];
  }

  void add_graph_input(const pb::ValueInfoProto& in) {
    KILN_CHECK(in.type().has_tensor_type(), "graph input '"
                                                << in.name()
                                                << "' is not a tensor (sequence, map or optional); "
                                                   "Kiln's engines take tensors only");
    const auto& tt = in.type().tensor_type();
    ElemType et;
    KILN_CHECK(elem_type(tt.elem_type(), &et), "graph input '" << in.name() << "' has element type "
                                                               << elem_type_name(tt.elem_type())
                                                               << ", which Kiln cannot hold");
    if (!et.exact) warn_once(et, in.name());
    KILN_CHECK(tt.has_shape(), "graph input '"
                                   << in.name()
                                   << "' has no shape (not even a rank); "
                                      "set it in the model (onnx.tools.update_model_dims) before parsing");
    Dims dims;
    for (const auto& d : tt.shape().dim()) {
      dims.push_back(d.has_dim_value() && d.dim_value() >= 0 ? d.dim_value() : kDynamic);
    }
    auto given = options_.input_values.find(in.name());
    if (given != options_.input_values.end()) {
      const ParseOptions::InputValue& v = given->second;
      KILN_CHECK(v.dtype == binding_dtype(et),
                 "input_values['" << in.name() << "'] is " << dtype_name(v.dtype) << "; the input is held as "
                                  << dtype_name(binding_dtype(et)));
      bool fits = v.dims.size() == dims.size();
      for (size_t i = 0; fits && i < dims.size(); ++i) fits = dims[i] < 0 || dims[i] == v.dims[i];
      KILN_CHECK(fits, "input_values['" << in.name() << "'] has dims " << to_string(v.dims)
                                        << "; the input is declared " << to_string(dims));
      KILN_CHECK(v.data.size() == static_cast<size_t>(tensor_bytes(v.dims, dtype_size(v.dtype))),
                 "input_values['" << in.name() << "'] has " << v.data.size() << " bytes, its dims need "
                                  << tensor_bytes(v.dims, dtype_size(v.dtype)));
      TensorId c = net_.add_constant(in.name(), v.dtype, v.dims, v.data.data(), v.data.size());
      symbols_[in.name()] = et.dtype == DataType::kFloat8E4M3 ? e4m3_binding(c, in.name(), true) : c;
      if (!et.exact) held_types_[symbols_[in.name()]] = tt.elem_type();
      return;
    }
    note_binding(in.name(), in.type());
    TensorId t = net_.add_input(in.name(), binding_dtype(et), dims);
    symbols_[in.name()] = et.dtype == DataType::kFloat8E4M3 ? e4m3_binding(t, in.name(), true) : t;
    if (!et.exact) held_types_[t] = tt.elem_type();
  }

  void import_node(const pb::NodeProto& node, int index) {
    const std::string domain = node.domain() == "ai.onnx" ? "" : node.domain();
    std::string label = "ONNX node '" + (node.name().empty() ? "#" + std::to_string(index) : node.name()) +
                        "' (" + node.op_type() + ", domain '" + (domain.empty() ? "ai.onnx" : domain) +
                        "', opset " + std::to_string(opset_) + ")";
    const OpImporter* imp = domain.empty() ? find_importer(node.op_type()) : nullptr;
    KILN_CHECK(imp != nullptr,
               label << " is not supported by Kiln's ONNX parser. docs/onnx.md lists the supported "
                        "operators; replace the node (onnx-simplifier, or export the model without it), "
                        "or keep that part of the model outside Kiln");
    KILN_CHECK(opset_ >= imp->since, label << ": Kiln imports " << node.op_type() << " from opset "
                                           << imp->since
                                           << " on (its meaning changed then); convert the model: "
                                              "onnx.version_converter.convert_version(model, 13)");
    ProtoNodeContext ctx(
        *this, node,
        unique_name(node.name().empty() ? node.op_type() + "_" + std::to_string(index) : node.name()));
    try {
      imp->fn(ctx);
      ctx.check_attrs_read();
    } catch (const Error& e) {
      std::string what = e.what();
      if (what.rfind("ONNX node", 0) == 0) throw;
      throw Error(label + ": " + what);
    }
    for (int i = 0; i < node.output_size(); ++i) {
      if (!node.output(i).empty() && !symbols_.count(node.output(i))) {
        throw Error(label + ": Kiln's importer did not produce output " + std::to_string(i) + " ('" +
                    node.output(i) + "'), which Kiln does not support");
      }
      if (info_ && !node.output(i).empty())
        info_->values.emplace_back(node.output(i), symbols_[node.output(i)]);
    }
  }

  std::string external_data(const pb::TensorProto& tp, int64_t expected) {
    std::string location;
    int64_t offset = 0, length = -1;
    for (const auto& kv : tp.external_data()) {
      if (kv.key() == "location")
        location = kv.value();
      else if (kv.key() == "offset")
        offset = parse_count(kv.value(), tp.name());
      else if (kv.key() == "length")
        length = parse_count(kv.value(), tp.name());
    }
    KILN_CHECK(!location.empty(), "tensor '" << tp.name() << "' has external data without a location");
    KILN_CHECK(location.find("..") == std::string::npos && location[0] != '/',
               "tensor '" << tp.name() << "': external data location '" << location
                          << "' leaves the model's folder; Kiln reads only files beside the model");
    KILN_CHECK(!options_.base_dir.empty(),
               "tensor '" << tp.name() << "' has external data ('" << location
                          << "'): parse the model from its file, or give ParseOptions.base_dir");
    const std::string path = options_.base_dir + "/" + location;
    std::ifstream f(path, std::ios::binary);
    KILN_CHECK(f.good(), "tensor '" << tp.name() << "': cannot open external data file '" << path << "'");
    f.seekg(0, std::ios::end);
    const int64_t file_size = static_cast<int64_t>(f.tellg());
    if (length < 0) length = file_size - offset;
    KILN_CHECK(offset >= 0 && length == expected && offset + length <= file_size,
               "tensor '" << tp.name() << "': external data (offset " << offset << ", length " << length
                          << ") does not fit '" << path << "' (" << file_size << " bytes) or the " << expected
                          << " bytes its dims and type need");
    std::string out(static_cast<size_t>(length), '\0');
    f.seekg(offset);
    f.read(out.data(), length);
    KILN_CHECK(f.good(), "tensor '" << tp.name() << "': reading external data from '" << path << "' failed");
    return out;
  }

  void warn_once(const ElemType& et, const std::string& tensor) {
    const std::string onnx_type = et.onnx_name;
    if (!warned_types_.insert(onnx_type).second) return;
    std::string msg = "ONNX " + onnx_type + " tensors (first: '" + tensor + "') are held as " +
                      (onnx_type == "float64"  ? "float32: computed in single precision"
                       : et.format || et.exact ? "float32 (their values exactly)"
                                               : dtype_name(et.dtype));
    if (no_fold_.empty()) KILN_LOG(kWarning, msg);  // else the second import: the first logged it
    if (info_) info_->warnings.push_back(msg);
  }

  ParseOptions options_;
  ParseInfo* info_;
  Network net_;
  int opset_ = 0;
  std::unordered_map<std::string, TensorId> symbols_;
  std::unordered_map<TensorId, int32_t> held_types_;  // tensors Kiln holds in another dtype
  std::map<TensorId, std::string> weights_;           // candidate weights: initializer -> name
  std::map<TensorId, std::set<TensorId>> derived_;    // folded constants -> the weights they hold
  std::set<TensorId> structural_;                     // weights whose values importers read
  std::set<std::string> no_fold_;                     // weights not folded while parsing
  static constexpr int kMaxGraphDepth = 16;
  static constexpr int64_t kMaxInlinedNodes = int64_t{1} << 20;
  int depth_ = 0;
  int64_t inlined_nodes_ = 0;
  std::set<std::string> used_names_;
  std::set<std::string> warned_types_;
};

int ProtoNodeContext::opset() const { return imp_.opset(); }
void ProtoNodeContext::note_value_read(TensorId t) const { imp_.value_read(t); }
bool ProtoNodeContext::may_fold(const std::vector<TensorId>& inputs) const { return imp_.may_fold(inputs); }
void ProtoNodeContext::note_fold(const std::vector<TensorId>& inputs, TensorId out) const {
  imp_.folded(inputs, out);
}
Network& ProtoNodeContext::net() { return imp_.net(); }
TensorId ProtoNodeContext::input_id(int i) const { return imp_.lookup(node_.input(i)); }
void ProtoNodeContext::set_output(int i, TensorId t) {
  if (wants_output(i)) imp_.define(node_.output(i), t);
}
int32_t ProtoNodeContext::held_type(TensorId t) const { return imp_.held_type(t); }
std::string ProtoNodeContext::unique_layer_name(const std::string& base) { return imp_.unique_name(base); }
void ProtoNodeContext::set_held_type(TensorId t, int32_t onnx_type) { imp_.set_held_type(t, onnx_type); }
std::vector<TensorId> ProtoNodeContext::inline_graph(const std::string& name,
                                                     const std::vector<TensorId>& inputs) {
  return imp_.inline_graph(get(name, pb::AttributeProto::GRAPH, false)->g(), inputs);
}

TensorId ProtoNodeContext::attr_tensor(const std::string& name) {
  const pb::AttributeProto* a = get(name, pb::AttributeProto::TENSOR, false);
  return imp_.constant(a->t(), name_ + "/" + name);
}

Network parse_model(const void* data, size_t size, const ParseOptions& options, ParseInfo* info) {
  KILN_CHECK(
      size <= static_cast<size_t>(INT_MAX),
      "the ONNX file is " << size
                          << " bytes; protobuf reads at most 2 GB: save the weights "
                             "as external data (onnx.save_model(model, path, save_as_external_data=True))");
  pb::ModelProto model;
  KILN_CHECK(model.ParseFromArray(data, static_cast<int>(size)),
             "not a valid ONNX model: protobuf parsing failed (a truncated or corrupt file, or not "
             "an .onnx file)");
  Importer importer(options, info);
  Network net = importer.run(model);
  std::set<std::string> refold = importer.refold_names();
  if (refold.empty()) return net;
  net = Network();  // the first import's constants go before the second's come
  if (info) *info = ParseInfo{};
  Importer again(options, info);
  again.set_no_fold(std::move(refold));
  return again.run(model);
}

}  // namespace

// ---- NodeContext helpers ----------------------------------------------------------------------

TensorId NodeContext::input(int i) const {
  if (!has_input(i)) fail("needs input " + std::to_string(i));
  return input_id(i);
}

std::optional<std::vector<int64_t>> NodeContext::int_values(int i) const {
  if (!has_input(i)) return std::nullopt;
  if (auto v = known_values(input(i))) return v;
  const Tensor& t = net_const().tensor(input(i));
  if (t.kind == TensorKind::kConstant && t.data && is_floating(t.dtype)) {
    auto f = float_values(i);
    std::vector<int64_t> v;
    for (double x : *f) {
      // NaN, infinities and values past int64 have no integer value (the cast would be undefined)
      if (!(x > -9.2e18 && x < 9.2e18)) return std::nullopt;
      v.push_back(static_cast<int64_t>(x));
    }
    return v;
  }
  return std::nullopt;
}

std::optional<std::vector<int64_t>> NodeContext::known_values(TensorId id) const {
  const Tensor& t = net_const().tensor(id);
  if (t.kind == TensorKind::kConstant && t.data && is_integral(t.dtype)) {
    note_value_read(id);
    const int64_t n = volume(t.dims);
    std::vector<int64_t> v(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) {
      const uint8_t* p = t.data->data() + k * dtype_size(t.dtype);
      if (t.dtype == DataType::kInt64)
        std::memcpy(&v[k], p, 8);
      else if (t.dtype == DataType::kInt32) {
        int32_t x;
        std::memcpy(&x, p, 4);
        v[k] = x;
      } else if (t.dtype == DataType::kInt8)
        v[k] = static_cast<int8_t>(*p);
      else
        v[k] = *p != 0;
    }
    return v;
  }
  ShapeValues sv = net_const().desc(id).values;
  if (fully_known(sv)) return *sv;
  return std::nullopt;
}

std::optional<std::vector<double>> NodeContext::float_values(int i) const {
  if (!has_input(i)) return std::nullopt;
  const Tensor& t = net_const().tensor(input(i));
  if (t.kind == TensorKind::kConstant && t.data && is_floating(t.dtype)) {
    note_value_read(input(i));
    const int64_t n = volume(t.dims);
    std::vector<double> v(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) {
      const uint8_t* p = t.data->data() + k * dtype_size(t.dtype);
      if (t.dtype == DataType::kFloat32) {
        float f;
        std::memcpy(&f, p, 4);
        v[k] = f;
      } else {
        uint16_t h;
        std::memcpy(&h, p, 2);
        if (t.dtype == DataType::kFloat16)
          v[k] = half_bits_to_float(h);
        else
          v[k] = bf16_bits_to_float(h);
      }
    }
    return v;
  }
  auto iv = int_values(i);
  if (!iv) return std::nullopt;
  return std::vector<double>(iv->begin(), iv->end());
}

Layer& NodeContext::add(const std::string& op, const std::vector<TensorId>& inputs, Attributes attrs,
                        const std::string& suffix) {
  std::string n = name();  // the node's first layer takes the node's (reserved) name
  if (counter_++ > 0 || !suffix.empty()) {
    n = unique_layer_name(n + "/" + (suffix.empty() ? op + std::to_string(counter_) : suffix));
  }
  return net().add_layer(op, inputs, std::move(attrs), n);
}

TensorId NodeContext::add1(const std::string& op, const std::vector<TensorId>& inputs, Attributes attrs,
                           const std::string& suffix) {
  if (auto folded = fold_small(op, inputs, attrs)) return *folded;
  return add(op, inputs, std::move(attrs), suffix).outputs.at(0);
}

// A layer whose inputs are all small constants becomes a constant of its output, computed by
// the reference kernel now (what the builder's fold_constants would do later): shape-computing
// subgraphs (Cast, Sub, Div, Ceil of sizes, a Range's bounds, If / Loop conditions) give values
// that importers need while parsing. Quantization ops are never folded (the builder fuses Q/DQ),
// nor anything past kMaxFoldElements elements (weights stay weights).
std::optional<TensorId> NodeContext::fold_small(const std::string& op, const std::vector<TensorId>& inputs,
                                                const Attributes& attrs) {
  constexpr int64_t kMaxFoldElements = 4096;
  if (inputs.empty() || op == "quantize" || op == "dequantize" || op == "fake_quantize" ||
      !has_kernel(op, Backend::kReference)) {
    return std::nullopt;
  }
  Network scratch;
  std::vector<TensorId> ids;
  std::vector<TensorView> views;
  for (TensorId t : inputs) {
    const Tensor& c = net_const().tensor(t);
    if (c.kind != TensorKind::kConstant || !c.data || !is_static(c.dims) ||
        volume(c.dims) > kMaxFoldElements) {
      return std::nullopt;
    }
    ids.push_back(scratch.add_constant("c" + std::to_string(ids.size()), c.dtype, c.dims, c.data));
    views.push_back({const_cast<uint8_t*>(c.data->data()), c.dtype, c.dims});
  }
  if (!may_fold(inputs)) return std::nullopt;  // a weight: the builder folds it, with its lineage
  try {
    const Layer& l = scratch.add_layer(op, ids, attrs, "fold");
    if (l.outputs.size() != 1) return std::nullopt;
    const Tensor o = scratch.tensor(l.outputs[0]);
    if (!is_static(o.dims) || volume(o.dims) > kMaxFoldElements) return std::nullopt;
    auto data = std::make_shared<std::vector<uint8_t>>(
        static_cast<size_t>(tensor_bytes(o.dims, dtype_size(o.dtype))));
    std::vector<TensorView> out = {{data->data(), o.dtype, o.dims}};
    if (volume(o.dims) > 0) create_kernel(l, Backend::kReference)->run(views, out, LaunchContext{});
    const TensorId folded = net().add_constant(unique_layer_name(name() + "/folded"), o.dtype, o.dims, data);
    note_fold(inputs, folded);
    return folded;
  } catch (const Error&) {
    return std::nullopt;  // the layer itself reports it
  }
}

TensorId NodeContext::constant_i64(const std::vector<int64_t>& values, Dims dims) {
  return net().add_constant(name() + "/const" + std::to_string(counter_++), DataType::kInt64, dims,
                            values.data(), values.size() * sizeof(int64_t));
}

TensorId NodeContext::scalar(DataType dtype, double value, int rank) {
  std::vector<uint8_t> bytes(dtype_size(dtype));
  TensorView view{bytes.data(), dtype, Dims(rank, 1)};
  store_element(view, 0, value);
  return net().add_constant(name() + "/const" + std::to_string(counter_++), dtype, Dims(rank, 1),
                            bytes.data(), bytes.size());
}

TensorId NodeContext::cast(TensorId t, DataType to) {
  if (net().desc(t).dtype == to) return t;
  return add1("cast", {t}, Attributes().set("to", std::string(dtype_name(to))));
}

TensorId NodeContext::elementwise(const std::string& op, TensorId a, TensorId b) {
  const bool comparison = op == "eq" || op == "ne" || op == "lt" || op == "le" || op == "gt" || op == "ge";
  if (net().desc(a).dtype == DataType::kInt8 && op != "and" && op != "or" && op != "xor") {
    TensorId y = add1("elementwise", {cast(a, DataType::kInt32), cast(b, DataType::kInt32)},
                      Attributes().set("op", op));
    return comparison ? y : cast(y, DataType::kInt8);
  }
  return add1("elementwise", {a, b}, Attributes().set("op", op));
}

TensorId NodeContext::unary(const std::string& op, TensorId x) {
  return add1("unary", {x}, Attributes().set("op", op));
}

void NodeContext::fail(const std::string& why) const { throw Error(why); }

int64_t normalize_axis(int64_t axis, int64_t rank, const NodeContext& ctx) {
  if (axis < -rank || axis >= rank) {  // a rank-0 tensor has no axis
    ctx.fail("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  }
  return axis < 0 ? axis + rank : axis;
}

void check_host_elements(int64_t n, const char* what, const NodeContext& ctx) {
  if (n < 0 || n > kMaxHostElements) {
    ctx.fail(std::string(what) + " of " + std::to_string(n) +
             " elements is larger than Kiln builds while parsing (" + std::to_string(kMaxHostElements) + ")");
  }
}

const OpImporter* find_importer(const std::string& op_type) {
  auto& r = importer_registry();
  auto it = r.find(op_type);
  return it == r.end() ? nullptr : &it->second;
}

ImporterRegistration::ImporterRegistration(std::initializer_list<OpImporter> importers) {
  for (const OpImporter& i : importers) importer_registry()[i.op_type] = i;
}

std::vector<std::string> supported_operators() {
  std::vector<std::string> ops;
  for (const auto& [name, imp] : importer_registry()) ops.push_back(name);
  return ops;
}

Network parse(const std::string& path, const ParseOptions& options, ParseInfo* info) {
  std::string bytes = read_file(path, "ONNX model");
  ParseOptions o = options;
  if (o.base_dir.empty()) {
    const size_t slash = path.find_last_of('/');
    o.base_dir = slash == std::string::npos ? "." : path.substr(0, slash);
  }
  try {
    return parse_model(bytes.data(), bytes.size(), o, info);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

Network parse_bytes(const void* data, size_t size, const ParseOptions& options, ParseInfo* info) {
  return parse_model(data, size, options, info);
}

}  // namespace kiln::onnx
