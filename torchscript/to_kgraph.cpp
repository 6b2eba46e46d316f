#include "torchscript/to_kgraph.h"

#include "runtime/runtime.h"

#include <torch/csrc/jit/ir/constants.h>

#include <functional>
#include <sstream>
#include <unordered_set>

#include "ir/error.h"

namespace kiln::torchscript {

using torch::jit::Node;
using torch::jit::Value;

namespace {

using runtime::kiln_dtype;

// "aten.transpose.int", "aten.relu.default", "prim.If.default"
std::string target_of(const Node* n) {
  const c10::FunctionSchema* s = n->maybeSchema();
  std::string overload = s != nullptr && !s->overload_name().empty() ? s->overload_name() : "default";
  return std::string(n->kind().ns().toUnqualString()) + "." + n->kind().toUnqualString() + "." + overload;
}

std::string location_of(const Node* n) {
  auto flc = n->sourceRange().file_line_col();
  if (!flc) return "";
  return std::get<0>(*flc) + ":" + std::to_string(std::get<1>(*flc));
}

bool is_scalar_type_arg(const c10::Argument* a) {
  if (a == nullptr) return false;
  c10::TypePtr t = a->real_type();
  if (auto o = t->cast<c10::OptionalType>()) t = o->getElementType();
  return t->kind() == c10::TypeKind::ScalarTypeType;
}

const Arg& get(const KNode& k, const std::string& name) { return k.arg(name); }

class Translator {
 public:
  Translator(const std::shared_ptr<torch::jit::Graph>& graph, const ValueRecord& record)
      : graph_(graph), record_(record) {}

  Translation run(const std::vector<InputSpec>& inputs) {
    add_inputs(inputs);
    for (Node* n : graph_->nodes()) add_node(n);
    for (Value* leaf : output_leaves(graph_->return_node()->input(0))) {
      auto it = t_.value_of.find(leaf);
      if (it != t_.value_of.end()) t_.graph.mark_output(it->second);
    }
    force_opaque_readers();
    return std::move(t_);
  }

 private:
  void add_inputs(const std::vector<InputSpec>& inputs) {
    const auto& in = graph_->inputs();
    KILN_CHECK(in.size() == inputs.size() + 1, "the module's forward takes "
                                                   << in.size() - 1 << " inputs, the compile spec gives "
                                                   << inputs.size()
                                                   << "; give one input spec per forward argument");
    for (size_t k = 1; k < in.size(); ++k) {
      Value* v = in[k];
      KILN_CHECK(v->type()->kind() == c10::TypeKind::TensorType,
                 "forward argument '" << v->debugName() << "' has type " << v->type()->repr_str()
                                      << "; Kiln compiles modules whose forward takes tensors only");
      const InputSpec& spec = inputs[k - 1];
      std::optional<DataType> dtype = kiln_dtype(spec.dtype);
      KILN_CHECK(dtype,
                 "input " << k - 1 << " ('" << v->debugName() << "') has dtype " << c10::toString(spec.dtype)
                          << ", which Kiln does not support (float32, float16, bfloat16, int32, int64, "
                             "bool, int8)");
      Dims dims;
      for (size_t d = 0; d < spec.min_shape.size(); ++d)
        dims.push_back(spec.min_shape[d] == spec.max_shape[d] ? spec.min_shape[d] : -1);
      bind(v, t_.graph.add_input(v->debugName(), *dtype, dims));
    }
  }

  void bind(Value* v, ValueId id) {
    t_.value_of[v] = id;
    t_.ts_value[id] = v;
  }

  ValueId opaque(Value* v, const std::string& why) {
    ValueId id = t_.graph.add_value(v->debugName(), DataType::kInt64, {}, true);
    opaque_[id] = "'" + v->debugName() + "' " + why;
    bind(v, id);
    return id;
  }

  // A KGraph value for a node output, from its type and the record.
  ValueId add_output(Value* v) {
    const c10::TypeKind kind = v->type()->kind();
    if (kind == c10::TypeKind::IntType)
      return bound(v, t_.graph.add_value(v->debugName(), DataType::kInt64, {}, true));
    if (kind == c10::TypeKind::FloatType)
      return bound(v, t_.graph.add_value(v->debugName(), DataType::kFloat32, {}, true));
    if (kind == c10::TypeKind::BoolType)
      return bound(v, t_.graph.add_value(v->debugName(), DataType::kBool, {}, true));
    if (kind != c10::TypeKind::TensorType)
      return opaque(v, "is a " + v->type()->repr_str() + ", not a tensor or a number");
    auto it = record_.find(v);
    if (it == record_.end() || it->second.size() != kNumRuns)
      return opaque(v, "was not observed when recording shapes");
    const std::vector<Observed>& runs = it->second;
    for (const Observed& o : runs) {
      if (!o.is_tensor || o.dtype != runs[0].dtype || o.shape.size() != runs[0].shape.size())
        return opaque(v, "changes dtype or rank between runs");
    }
    std::optional<DataType> dtype = kiln_dtype(runs[0].dtype);
    if (!dtype)
      return opaque(
          v, "has dtype " + std::string(c10::toString(runs[0].dtype)) + ", which Kiln does not support");
    Dims dims = runs[0].shape;
    for (const Observed& o : runs) {
      for (size_t d = 0; d < dims.size(); ++d)
        if (o.shape[d] != dims[d]) dims[d] = -1;
    }
    return bound(v, t_.graph.add_value(v->debugName(), *dtype, dims, false));
  }

  ValueId bound(Value* v, ValueId id) {
    bind(v, id);
    return id;
  }

  Arg arg(Value* v, const c10::Argument* schema_arg) {
    auto it = t_.value_of.find(v);
    if (it != t_.value_of.end()) return Arg::of_value(it->second);
    Node* p = v->node();
    if (p->kind() == c10::prim::Constant) return constant(v, schema_arg);
    if (p->kind() == c10::prim::ListConstruct || p->kind() == c10::prim::TupleConstruct) {
      std::vector<Arg> list;
      for (Value* e : p->inputs()) list.push_back(arg(e, nullptr));
      return Arg::of_list(std::move(list));
    }
    KILN_FAIL("TorchScript value '" << v->debugName() << "' (from " << p->kind().toQualString()
                                    << ") has no KGraph value");
  }

  Arg constant(Value* v, const c10::Argument* schema_arg) {
    c10::IValue iv = *torch::jit::toIValue(v);
    if (iv.isTensor()) {
      at::Tensor t = iv.toTensor().detach().contiguous().cpu();
      // A 0-d float64 constant (a traced `x * 2.0`) never sets the result dtype of an op with a
      // float tensor (torch computes in the tensor's dtype), so it is held as float32.
      if (t.dim() == 0 && t.scalar_type() == c10::kDouble) t = t.to(c10::kFloat);
      std::optional<DataType> dtype = kiln_dtype(t.scalar_type());
      if (!dtype) {
        // Kept as an empty placeholder constant: every reader runs in PyTorch (force_opaque_readers).
        ValueId id = t_.graph.add_constant(v->debugName(), DataType::kInt8, {0}, nullptr, 0);
        opaque_[id] = "'" + v->debugName() + "' is a constant of dtype " +
                      std::string(c10::toString(t.scalar_type())) + ", which Kiln does not support";
        return Arg::of_value(bound(v, id));
      }
      ValueId id = t_.graph.add_constant(v->debugName(), *dtype, t.sizes().vec(), t.data_ptr(), t.nbytes());
      return Arg::of_value(bound(v, id));
    }
    if (iv.isNone()) return Arg::none();
    if (iv.isBool()) return Arg::of_bool(iv.toBool());
    if (iv.isInt()) {
      if (is_scalar_type_arg(schema_arg)) {
        auto st = static_cast<c10::ScalarType>(iv.toInt());
        std::optional<DataType> dtype = kiln_dtype(st);
        return Arg::of_string(dtype ? dtype_name(*dtype) : std::string(c10::toString(st)));
      }
      return Arg::of_int(iv.toInt());
    }
    if (iv.isDouble()) return Arg::of_float(iv.toDouble());
    if (iv.isString()) return Arg::of_string(iv.toStringRef());
    if (iv.isList() || iv.isTuple()) {
      std::vector<Arg> list;
      auto items = iv.isList() ? iv.toListRef().vec() : iv.toTupleRef().elements().vec();
      for (const c10::IValue& e : items) {
        if (e.isInt())
          list.push_back(Arg::of_int(e.toInt()));
        else if (e.isDouble())
          list.push_back(Arg::of_float(e.toDouble()));
        else if (e.isBool())
          list.push_back(Arg::of_bool(e.toBool()));
        else if (e.isNone())
          list.push_back(Arg::none());
        else
          list.push_back(Arg::of_string(e.tagKind()));
      }
      return Arg::of_list(std::move(list));
    }
    if (iv.isDevice()) return Arg::of_string(iv.toDevice().str());
    return Arg::of_string(iv.tagKind());  // informative only
  }

  static std::vector<Value*> output_leaves(Value* v) {
    Node* p = v->node();
    if (p->kind() == c10::prim::TupleConstruct || p->kind() == c10::prim::ListConstruct) {
      std::vector<Value*> out;
      for (Value* e : p->inputs()) {
        auto more = output_leaves(e);
        out.insert(out.end(), more.begin(), more.end());
      }
      return out;
    }
    return {v};
  }

  static bool inside(const Node* inner, const Node* n) {
    for (const Node* p = inner; p != nullptr;
         p = p->owningBlock() ? p->owningBlock()->owningNode() : nullptr) {
      if (p == n) return true;
    }
    return false;
  }

  // Values used inside the node's blocks but defined outside it.
  static std::vector<Value*> captured(Node* n) {
    std::vector<Value*> out;
    std::unordered_set<Value*> seen;
    std::function<void(torch::jit::Block*)> walk = [&](torch::jit::Block* b) {
      for (Node* inner : b->nodes()) {
        for (Value* in : inner->inputs()) {
          if (!inside(in->node(), n) && seen.insert(in).second) out.push_back(in);
        }
        for (torch::jit::Block* sub : inner->blocks()) walk(sub);
      }
      for (Value* in : b->return_node()->inputs()) {
        if (!inside(in->node(), n) && seen.insert(in).second) out.push_back(in);
      }
    };
    for (torch::jit::Block* b : n->blocks()) walk(b);
    return out;
  }

  void add_node(Node* n) {
    const c10::Symbol kind = n->kind();
    if (kind == c10::prim::Constant || kind == c10::prim::ListConstruct ||
        kind == c10::prim::TupleConstruct || folded_.count(n))
      return;
    KNode k;
    k.name = n->outputs().empty()
                 ? std::string(kind.toUnqualString()) + "_" + std::to_string(t_.graph.nodes().size())
                 : n->output(0)->debugName();
    k.target = target_of(n);
    k.location = location_of(n);
    const c10::FunctionSchema* schema = n->maybeSchema();
    if (schema != nullptr && schema->arguments().size() == n->inputs().size() && !schema->is_vararg()) {
      for (size_t i = 0; i < n->inputs().size(); ++i)
        k.args.emplace_back(schema->arguments()[i].name(), arg(n->input(i), &schema->arguments()[i]));
    } else {
      for (size_t i = 0; i < n->inputs().size(); ++i)
        k.args.emplace_back("arg" + std::to_string(i), arg(n->input(i), nullptr));
      std::vector<Value*> free = captured(n);
      for (size_t i = 0; i < free.size(); ++i)
        k.args.emplace_back("captured" + std::to_string(i), arg(free[i], nullptr));
    }
    Node* unpack = nullptr;
    if (n->outputs().size() == 1 && n->output()->type()->cast<c10::ListType>() &&
        n->output()->uses().size() == 1 && n->output()->uses()[0].user->kind() == c10::prim::ListUnpack) {
      unpack = n->output()->uses()[0].user;
      folded_.insert(unpack);
      for (Value* o : unpack->outputs()) k.outputs.push_back(add_output(o));
    } else {
      for (Value* o : n->outputs()) k.outputs.push_back(add_output(o));
    }
    normalize(n, k);
    t_.source.push_back(n);
    t_.unpack.push_back(unpack);
    t_.graph.add_node(std::move(k));
  }

  // Static dim `d` of a tensor argument, or -1.
  int64_t static_dim(const KNode& k, const std::string& name, int64_t d) {
    const Arg& a = get(k, name);
    if (!a.is_value()) return -1;
    const Dims& dims = t_.graph.value(a.value).dims;
    if (d < 0) d += static_cast<int64_t>(dims.size());
    if (d < 0 || d >= static_cast<int64_t>(dims.size())) return -1;
    return dims[d];
  }

  static Arg expanded(const Arg& a, size_t n) {
    if (a.kind != Arg::Kind::kList || a.list.size() != 1) return a;
    return Arg::of_list(std::vector<Arg>(n, a.list[0]));
  }

  // Renames TorchScript's un-decomposed ops to the overloads torch.export produces (see header).
  void normalize(Node* n, KNode& k) {
    const std::string op = n->kind().toQualString();
    const c10::FunctionSchema* s = n->maybeSchema();
    const std::string overload = s != nullptr ? s->overload_name() : "";
    auto rebuild = [&](const std::string& target, std::vector<std::pair<std::string, Arg>> args) {
      k.target = target;
      k.args = std::move(args);
    };
    if ((op == "aten::conv1d" || op == "aten::conv2d" || op == "aten::conv3d") && overload.empty()) {
      const size_t spatial = static_cast<size_t>(op[10] - '0');
      rebuild("aten.convolution.default",
              {{"input", get(k, "input")},
               {"weight", get(k, "weight")},
               {"bias", get(k, "bias")},
               {"stride", expanded(get(k, "stride"), spatial)},
               {"padding", expanded(get(k, "padding"), spatial)},
               {"dilation", expanded(get(k, "dilation"), spatial)},
               {"transposed", Arg::of_bool(false)},
               {"output_padding", Arg::of_list(std::vector<Arg>(spatial, Arg::of_int(0)))},
               {"groups", get(k, "groups")}});
    } else if (op == "aten::_convolution") {
      k.target = "aten.convolution.default";
      k.args.resize(9);  // input .. groups; benchmark/deterministic/cudnn flags do not change results
    } else if (op == "aten::batch_norm" && get(k, "training").kind == Arg::Kind::kBool &&
               !get(k, "training").b) {
      rebuild("aten._native_batch_norm_legit_no_training.default", {{"input", get(k, "input")},
                                                                    {"weight", get(k, "weight")},
                                                                    {"bias", get(k, "bias")},
                                                                    {"running_mean", get(k, "running_mean")},
                                                                    {"running_var", get(k, "running_var")},
                                                                    {"momentum", get(k, "momentum")},
                                                                    {"eps", get(k, "eps")}});
      k.outputs.resize(3, kNoValue);  // save_mean, save_invstd: nobody reads them
    } else if (op == "aten::layer_norm") {
      rebuild("aten.native_layer_norm.default", {{"input", get(k, "input")},
                                                 {"normalized_shape", get(k, "normalized_shape")},
                                                 {"weight", get(k, "weight")},
                                                 {"bias", get(k, "bias")},
                                                 {"eps", get(k, "eps")}});
      k.outputs.resize(3, kNoValue);  // mean, rstd
    } else if (op == "aten::max_pool2d") {
      k.target = "aten.max_pool2d_with_indices.default";
      k.outputs.resize(2, kNoValue);  // indices
    } else if (op == "aten::adaptive_avg_pool2d") {
      k.target = "aten._adaptive_avg_pool2d.default";
    } else if ((op == "aten::softmax" || op == "aten::log_softmax") && overload == "int" &&
               get(k, "dtype").is_none()) {
      rebuild(op == "aten::softmax" ? "aten._softmax.default" : "aten._log_softmax.default",
              {{"self", get(k, "self")}, {"dim", get(k, "dim")}, {"half_to_float", Arg::of_bool(false)}});
    } else if (op == "aten::size" && overload == "int") {
      k.target = "aten.sym_size.int";
    } else if (op == "aten::contiguous") {
      rebuild("aten.clone.default", {{"self", get(k, "self")}, {"memory_format", Arg::none()}});
    } else if ((op == "aten::dropout" || op == "aten::feature_dropout") &&
               get(k, "train").kind == Arg::Kind::kBool && !get(k, "train").b) {
      rebuild("aten.clone.default", {{"self", get(k, "input")}, {"memory_format", Arg::none()}});
    } else if (op == "aten::t" && get(k, "self").is_value() &&
               t_.graph.value(get(k, "self").value).dims.size() == 2) {
      rebuild("aten.transpose.int",
              {{"self", get(k, "self")}, {"dim0", Arg::of_int(0)}, {"dim1", Arg::of_int(1)}});
    } else if ((op == "aten::chunk" || (op == "aten::split" && overload == "Tensor")) &&
               k.outputs.size() != 1) {
      const int64_t dim = get(k, "dim").i;
      const int64_t size = static_dim(k, "self", dim);
      if (size >= 0) {
        int64_t piece = op == "aten::chunk"
                            ? (size + get(k, "chunks").i - 1) / std::max<int64_t>(get(k, "chunks").i, 1)
                            : get(k, "split_size").i;
        std::vector<Arg> sizes;
        for (int64_t start = 0; piece > 0 && start < size; start += piece)
          sizes.push_back(Arg::of_int(std::min(piece, size - start)));
        if (sizes.size() == k.outputs.size()) {
          rebuild("aten.split_with_sizes.default",
                  {{"self", get(k, "self")}, {"split_sizes", Arg::of_list(sizes)}, {"dim", get(k, "dim")}});
        }
      }
    }
  }

  // Nodes reading or producing a value engines cannot hold run in PyTorch.
  void force_opaque_readers() {
    const auto& nodes = t_.graph.nodes();
    for (size_t i = 0; i < nodes.size(); ++i) {
      std::string why;
      for (ValueId v : KGraph::node_inputs(nodes[i])) {
        auto it = opaque_.find(v);
        if (it != opaque_.end()) {
          why = "reads " + it->second;
          break;
        }
      }
      for (ValueId v : nodes[i].outputs) {
        auto it = opaque_.find(v);
        if (why.empty() && it != opaque_.end()) why = "returns " + it->second;
      }
      if (!why.empty()) t_.torch_nodes[static_cast<int>(i)] = why;
    }
  }

  std::shared_ptr<torch::jit::Graph> graph_;
  const ValueRecord& record_;
  Translation t_;
  std::map<ValueId, std::string> opaque_;
  std::unordered_set<Node*> folded_;
};

}  // namespace

Translation to_kgraph(const std::shared_ptr<torch::jit::Graph>& graph, const ValueRecord& record,
                      const std::vector<InputSpec>& inputs) {
  return Translator(graph, record).run(inputs);
}

}  // namespace kiln::torchscript
