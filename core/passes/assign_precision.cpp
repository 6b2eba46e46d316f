// assign_precision: runs float32 layers in a reduced precision where the config allows it, while
// the network's declared input and output dtypes stay as they are.
//
// The network is rebuilt layer by layer. Each layer gets a compute precision: its per-layer
// override, else the config's reduced type (FP16 before BF16 when both are enabled), else
// float32. Its floating inputs are brought to that precision — float32 weights are converted
// once at build time, activations through a `cast` layer (one per tensor and dtype, shared by all
// consumers). A layer that does not accept the reduced dtype keeps float32. Network outputs whose
// dtype changed get a final cast back, so bindings keep their names and dtypes.
//
// Float inputs that were declared float16/bfloat16 are left alone unless an override asks
// otherwise; `cast` layers keep their input as is (casting first would lose precision).
// With TF32 enabled, float32 GEMMs and convolutions get `allow_tf32` = 1.
#include <map>
#include <set>
#include <utility>

#include "core/passes/passes.h"
#include "core/weight_transforms.h"
#include "ir/error.h"
#include "ir/logging.h"
#include "ir/op_schema.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

class PrecisionRewriter {
 public:
  PrecisionRewriter(const Network& in, const PrecisionConfig& config) : in_(in), config_(config) {
    if (config.fp16)
      reduced_ = DataType::kFloat16;
    else if (config.bf16)
      reduced_ = DataType::kBFloat16;
  }

  Network run() {
    for (TensorId id : in_.inputs()) {
      const Tensor& t = in_.tensor(id);
      map_[{id, t.dtype}] = out_.add_input(t.name, t.dtype, t.dims);
      current_[id] = t.dtype;
    }
    for (const Layer& l : in_.layers()) rewrite(l);
    for (TensorId id : in_.outputs()) finish_output(id);
    return std::move(out_);
  }

 private:
  DataType precision_of(const Layer& l) const {
    auto it = config_.layer_precisions.find(l.name);
    if (it != config_.layer_precisions.end()) return it->second;
    return reduced_;
  }

  // The id in out_ of old tensor `id` as `dtype` (a float dtype), creating it on first use.
  TensorId as(TensorId id, DataType dtype) {
    auto key = std::make_pair(id, dtype);
    auto it = map_.find(key);
    if (it != map_.end()) return it->second;
    const Tensor& t = in_.tensor(id);
    TensorId made;
    if (t.kind == TensorKind::kConstant) {
      std::string name = dtype == t.dtype ? t.name : t.name + "/" + dtype_name(dtype);
      if (t.dtype == dtype) {
        made = out_.add_constant(name, dtype, t.dims, t.data);
        out_.tensor(made).lineage = t.lineage;
      } else {
        DerivedConstant c =
            derive_constant("convert", Attributes().set("dtype", static_cast<int64_t>(dtype)), {&t});
        made = out_.add_constant(name, dtype, t.dims, std::move(c.value.data));
        out_.tensor(made).lineage = std::move(c.lineage);
      }
    } else {
      TensorId src = map_.at({id, current_.at(id)});
      Attributes attrs;
      attrs.set("to", std::string(dtype_name(dtype)));
      made = out_.add_layer("cast", {src}, std::move(attrs), t.name + "/to_" + dtype_name(dtype)).outputs[0];
    }
    map_[key] = made;
    return made;
  }

  DataType dtype_now(TensorId id) const {
    const Tensor& t = in_.tensor(id);
    if (t.kind == TensorKind::kConstant) return t.dtype;
    return current_.at(id);
  }

  bool try_add(const Layer& l, DataType precision) {
    std::vector<TensorId> inputs;
    for (TensorId t : l.inputs) {
      DataType now = dtype_now(t);
      // Convert float32 inputs, and anything this pass changed; a tensor the network itself
      // declares float16/bfloat16 stays unless the layer's precision is set explicitly.
      bool convert =
          is_floating(now) && now != precision && l.op != "cast" &&
          (now == DataType::kFloat32 || now != in_.tensor(t).dtype || config_.layer_precisions.count(l.name));
      inputs.push_back(convert ? as(t, precision) : as(t, now));
    }
    Attributes attrs = l.attrs;
    if (config_.tf32 && precision == DataType::kFloat32 && has_trait(l.op, kTf32Capable)) {
      attrs.set("allow_tf32", int64_t{1});
    }
    try {
      const Layer& added = out_.add_layer(l.op, inputs, std::move(attrs), l.name);
      for (size_t i = 0; i < l.outputs.size(); ++i) {
        DataType d = out_.tensor(added.outputs[i]).dtype;
        map_[{l.outputs[i], d}] = added.outputs[i];
        current_[l.outputs[i]] = d;
      }
      return true;
    } catch (const Error& e) {
      if (precision == DataType::kFloat32) throw;
      KILN_LOG(kVerbose, "assign_precision: " << describe(l) << " stays float32 (" << e.what() << ")");
      return false;
    }
  }

  void rewrite(const Layer& l) {
    DataType p = precision_of(l);
    if (p != DataType::kFloat32 && try_add(l, p)) return;
    try_add(l, DataType::kFloat32);
  }

  void finish_output(TensorId id) {
    const Tensor& t = in_.tensor(id);
    if (t.kind == TensorKind::kInput || t.kind == TensorKind::kConstant) {
      out_.mark_output(as(id, t.dtype));
      return;
    }
    DataType now = current_.at(id);
    TensorId made = map_.at({id, now});
    if (now != t.dtype) {
      // The binding keeps its name: the reduced tensor is renamed, the cast back takes the name.
      out_.tensor(made).name = t.name + "/" + dtype_name(now);
      out_.reindex();
      made = as(id, t.dtype);
    }
    out_.mark_output(made, t.name);
  }

  const Network& in_;
  const PrecisionConfig& config_;
  DataType reduced_ = DataType::kFloat32;
  Network out_;
  std::map<std::pair<TensorId, DataType>, TensorId> map_;
  std::map<TensorId, DataType> current_;  // activations and inputs: dtype of their newest version
};

// The rewrite builds a fresh network; it changed something when a layer differs in op,
// attributes (TF32 marks) or the dtypes it reads and writes (casts added, weights converted).
bool same_precisions(const Network& a, const Network& b) {
  if (a.layers().size() != b.layers().size()) return false;
  auto dtypes = [](const Network& n, const std::vector<TensorId>& ids) {
    std::vector<DataType> out;
    for (TensorId t : ids) out.push_back(n.tensor(t).dtype);
    return out;
  };
  for (size_t i = 0; i < a.layers().size(); ++i) {
    const Layer &la = a.layers()[i], &lb = b.layers()[i];
    if (la.op != lb.op || !(la.attrs == lb.attrs) || dtypes(a, la.inputs) != dtypes(b, lb.inputs) ||
        dtypes(a, la.outputs) != dtypes(b, lb.outputs)) {
      return false;
    }
  }
  return true;
}

}  // namespace

bool assign_precision(Network& net, const PrecisionConfig& config) {
  for (const auto& kv : config.layer_precisions) {
    KILN_CHECK(is_floating(kv.second), "layer precision for '" << kv.first
                                                               << "' must be a floating dtype, got "
                                                               << dtype_name(kv.second));
  }
  const bool reduce = config.fp16 || config.bf16 || !config.layer_precisions.empty();
  if (!reduce && !config.tf32) return false;
  Network rewritten = PrecisionRewriter(net, config).run();
  if (same_precisions(net, rewritten)) return false;
  net = std::move(rewritten);
  net.revalidate();
  return true;
}

}  // namespace kiln
