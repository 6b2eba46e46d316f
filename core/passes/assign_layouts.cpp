// assign_layouts: runs float16/bfloat16 2d convolutions channels last (layout nhwc), where
// tensor-core convolutions are fastest, and keeps the pointwise layers between them channels last
// too, so a chain conv -> pointwise -> conv needs no reformat. Transposes are inserted only at the
// boundaries: into channels last where a channels-first tensor meets a channels-last layer, and
// back where a channels-last tensor meets a layer that needs channels first (reshape, flatten,
// fully_connected, batch_norm, network outputs, ...).
//
// Layout is invisible: every original tensor keeps its id, dims and name, and whenever a layer
// reads it channels first it gets exactly those values (a transpose back writes into the
// original tensor). Each tensor is transposed at most once per direction.
//
// Channels-last layers:
//   convolution, rank 4, float16/bfloat16 or quantized (int8), weight constant: x and residual go channels
//   last, the
//       weight [K, C/g, kh, kw] is permuted at build time to [K, kh, kw, C/g]. With fewer than 8
//       input channels (and groups 1) x is zero-padded to 8 channels and the weight likewise.
//   pooling, adaptive_pooling, rank 4: when their input was computed channels last.
//   space_to_depth (space_to_depth_stems' image fold) of a float16/bfloat16 image, read by a
//       per-tensor quantization, or writing int8 itself: reads its input channels first and
//       writes channels last.
//   quantize, dequantize, fake_quantize with one scale (per tensor), rank 4: when their input was
//       computed channels last (the int8 input of a quantized convolution is quantized there).
//   reduce with keepdim = 1 (squeeze-excitation's spatial mean), likewise: its axes are renumbered
//       (NCHW axis 1 is NHWC axis 3, 2 is 1, 3 is 2), the kept rank-4 result stays channels last.
//   concat of rank-4 tensors, one of them computed channels last (DenseNet concatenates its conv
//       outputs on the channel axis every layer): the axis is renumbered likewise.
//   transposes NCHW <-> NHWC of the model's own: no copy where the tensor's other layout is at hand
//       (reads_as_layout_change).
//   ops with the schema trait kLayoutTransparent (activation, unary, cast, elementwise): when one
//       of their inputs was computed channels last
//       and every input is rank 4 or a constant of lower rank (constants are permuted at build
//       time, a lower-rank one as its rank-4 broadcast view: ConvNeXt's [C, 1, 1] layer scale).
//       Broadcasting commutes with a permutation applied to every operand.
// Safe on every backend; the builder runs it after precision assignment (it needs the final dtypes).
#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "core/passes/passes.h"
#include "core/weight_transforms.h"
#include "ir/ops/convolution.h"
#include "ir/ops/indexing.h"

namespace kiln {
namespace {

const std::vector<int64_t> kToLast = {0, 2, 3, 1};   // NCHW -> NHWC
const std::vector<int64_t> kToFirst = {0, 3, 1, 2};  // NHWC -> NCHW

bool all_ones(const Dims& d) {
  return std::all_of(d.begin(), d.end(), [](int64_t x) { return x == 1; });
}

class LayoutRewriter {
 public:
  explicit LayoutRewriter(Network& net) : net_(net) {}

  bool run() {
    std::vector<Layer> old = std::move(net_.mutable_layers());
    net_.mutable_layers().clear();
    original_ = &old;
    const size_t tensors = net_.tensors().size();
    last_.assign(tensors, -1);
    first_.assign(tensors, true);
    native_.assign(tensors, false);
    readers_.assign(tensors, 0);
    for (const Layer& l : old) {
      for (TensorId t : l.inputs) ++readers_[static_cast<size_t>(t)];
    }
    for (Layer& l : old) {
      if (wants_last(l)) {
        to_channels_last(l);
      } else if (reads_as_layout_change(l)) {
        continue;
      } else {
        for (TensorId t : l.inputs) need_first(t);
        layers_.push_back(std::move(l));
      }
    }
    original_ = nullptr;
    for (TensorId t : net_.outputs()) need_first(t);
    std::vector<Layer> kept;
    for (size_t i = 0; i < layers_.size(); ++i) {
      if (!dropped_.count(i)) kept.push_back(std::move(layers_[i]));
    }
    net_.mutable_layers() = std::move(kept);
    if (changed_) net_.compact();
    return changed_;
  }

 private:
  // quantize / dequantize / fake_quantize of a rank-4 tensor with one scale: elementwise, so it
  // runs on whichever layout its input has.
  bool per_tensor_quantize(const Layer& l) const {
    if (l.op != "quantize" && l.op != "dequantize" && l.op != "fake_quantize") return false;
    return net_.tensor(l.inputs[0]).dims.size() == 4 && volume(net_.tensor(l.inputs[1]).dims) == 1;
  }

  // Produced by a channels-last layer (whether or not it was also transposed back).
  bool is_tensor_last(TensorId t) const { return static_cast<size_t>(t) < native_.size() && native_[t]; }

  bool wants_last(const Layer& l) const {
    if (l.op == "convolution") {
      const Tensor &x = net_.tensor(l.inputs[0]), &w = net_.tensor(l.inputs[1]);
      if (x.dims.size() != 4 || channels_last(l) || w.kind != TensorKind::kConstant) return false;
      return x.dtype == DataType::kFloat16 || x.dtype == DataType::kBFloat16 || conv_quantized(l);
    }
    if (per_tensor_quantize(l)) return is_tensor_last(l.inputs[0]);
    if (l.op == "space_to_depth") return space_to_depth_last(l);
    if (l.op == "pooling" || l.op == "adaptive_pooling") {
      return net_.tensor(l.inputs[0]).dims.size() == 4 && !channels_last(l) && is_tensor_last(l.inputs[0]);
    }
    if (l.op == "concat") {
      bool any_last = false;
      for (TensorId t : l.inputs) {
        if (net_.tensor(t).dims.size() != 4) return false;
        any_last |= is_tensor_last(t);
      }
      return any_last;
    }
    if (l.op == "reduce") {
      return l.inputs.size() == 1 && net_.tensor(l.inputs[0]).dims.size() == 4 &&
             l.attrs.get_int("keepdim", int64_t{0}) == 1 && is_tensor_last(l.inputs[0]);
    }
    if (!has_trait(l.op, kLayoutTransparent)) return false;
    bool any_last = false;
    for (TensorId t : l.inputs) {
      const Tensor& x = net_.tensor(t);
      if (x.dims.size() != 4 && !(x.kind == TensorKind::kConstant && x.dims.size() < 4)) return false;
      any_last |= is_tensor_last(t);
    }
    for (TensorId t : l.outputs) {
      if (net_.tensor(t).dims.size() != 4) return false;
    }
    return any_last;
  }

  // A space_to_depth (space_to_depth_stems' fold of an image) writes channels last, reading its
  // channels-first input as it is, when what reads it runs channels last: a half convolution, or
  // a per-tensor quantization (the int8 input of a quantized one).
  bool space_to_depth_last(const Layer& l) const {
    const Tensor& x = net_.tensor(l.inputs[0]);
    if (x.dims.size() != 4 || (l.attrs.has("layout") && l.attrs.get_string("layout", l.name) != "nchw"))
      return false;
    if (x.dtype == DataType::kFloat16 || x.dtype == DataType::kBFloat16) return true;
    if (l.attrs.has("output_inv_scale")) return true;  // int8: a quantized convolution's input
    for (const Layer& r : *original_) {
      if (std::find(r.inputs.begin(), r.inputs.end(), l.outputs[0]) != r.inputs.end() &&
          per_tensor_quantize(r))
        return true;
    }
    return false;
  }

  // A model's own NCHW <-> NHWC permutes (ConvNeXt: dwconv -> permute(0, 2, 3, 1) -> LayerNorm ->
  // MLP -> permute(0, 3, 1, 2) -> residual add) are layout changes this pass already knows:
  //   y = transpose(x, [0, 2, 3, 1]) where x has a channels-last version: y holds exactly that
  //       version's values, so y becomes a reshape of it to its own dims (a view: alias_views);
  //   z = transpose(u, [0, 3, 1, 2]): u is z's channels-last version, so z is recorded as computed
  //       channels last (its layout-transparent consumers and convolutions read u directly) and the
  //       transpose is emitted only if something needs z channels first (need_first).
  // Returns whether the layer was handled (replaced or deferred).
  bool reads_as_layout_change(const Layer& l) {
    if (l.op != "transpose" || l.inputs.size() != 1 || l.outputs.size() != 1) return false;
    const TensorId in = l.inputs[0], out = l.outputs[0];
    if (net_.tensor(in).dims.size() != 4 || net_.tensor(in).kind == TensorKind::kConstant) return false;
    const std::vector<int64_t> perm = l.attrs.get_ints("perm", l.name);
    const Dims dims = net_.tensor(out).dims;
    if (perm == kToLast && last_[in] >= 0 && last_[in] != in &&
        std::count(dims.begin(), dims.end(), kDynamic) <= 1) {
      // A reshape to the same dims (-1 for a dynamic one): alias_views makes it a view.
      Attributes attrs;
      attrs.set("shape", std::vector<int64_t>(dims.begin(), dims.end()));
      Layer& added = net_.add_layer("reshape", {last_[in]}, std::move(attrs),
                                    unique_layer(l.name + "/channels_last_view"));
      layers_.push_back(std::move(added));
      net_.mutable_layers().pop_back();
      grow();
      layers_.back().outputs[0] = out;
      changed_ = true;
      return true;
    }
    // Only once a layer runs channels last (a network without half convolutions keeps every
    // transpose as it is).
    if (perm == kToFirst && any_last_ && !net_.is_output(out)) {
      need_first(in);
      last_[out] = in;
      first_[out] = false;
      native_[out] = true;
      deferred_[out] = l.name;
      changed_ = true;
      return true;
    }
    return false;
  }

  // The channels-last version of tensor t, made on first use.
  TensorId last_version(TensorId t) {
    if (last_[t] >= 0) return last_[t];
    const Tensor& x = net_.tensor(t);
    TensorId made;
    if (x.kind == TensorKind::kConstant) {
      if (all_ones(x.dims)) return t;  // broadcasts the same way in either layout
      // A constant of lower rank broadcasts as if ones were prepended (ConvNeXt's layer scale
      // [C, 1, 1] is [1, C, 1, 1]): permute that rank-4 view.
      made = add_derived_constant(net_, unique_name(x.name + "/nhwc"), "nhwc", Attributes(), {t});
      grow();
    } else {
      made = emit_transpose(t, kToLast, unique_layer(net_.tensor(t).name + "/to_nhwc"));
    }
    last_[t] = made;
    return made;
  }

  // Makes the channels-first tensor t available: a transpose back writes into t itself.
  void need_first(TensorId t) {
    if (first_[t]) return;
    auto deferred = deferred_.find(t);
    emit_transpose(last_[t], kToFirst,
                   deferred != deferred_.end() ? unique_layer(deferred->second)
                                               : unique_layer(net_.tensor(t).name + "/to_nchw"));
    layers_.back().outputs[0] = t;
    first_[t] = true;
  }

  TensorId emit_transpose(TensorId src, const std::vector<int64_t>& perm, const std::string& name) {
    Attributes attrs;
    attrs.set("perm", perm);
    Layer& added = net_.add_layer("transpose", {src}, std::move(attrs), name);
    layers_.push_back(std::move(added));
    net_.mutable_layers().pop_back();
    grow();
    changed_ = true;
    return layers_.back().outputs[0];
  }

  void to_channels_last(const Layer& l) {
    std::vector<TensorId> inputs;
    Attributes attrs = l.attrs;
    if (l.op == "convolution") {
      const ConvEpilogue e = conv_epilogue(l, l.inputs.size());
      for (size_t i = 0; i < l.inputs.size(); ++i) {
        const bool activation_like = i == 0 || static_cast<int>(i) == e.residual_input;
        const bool weight = i == 1;
        const TensorId padded = i == 0 ? channels_last_pad(l.inputs[0]) : -1;
        inputs.push_back(padded >= 0                 ? padded
                         : activation_like || weight ? last_version(l.inputs[i])
                                                     : l.inputs[i]);
      }
      const TensorId weight = inputs[1];
      pad_few_channels(l, inputs);
      if (inputs[1] != weight && !attrs.has("model_taps")) {  // the cost model leaves the zeros out
        const Dims& w = net_.tensor(l.inputs[1]).dims;
        attrs.set("model_taps", volume(w) / w[0]);
      }
      attrs.set("layout", std::string("nhwc"));
    } else if (l.op == "space_to_depth") {
      inputs = l.inputs;  // read channels first, written channels last
      attrs.set("layout", std::string("nhwc"));
    } else if (per_tensor_quantize(l)) {
      inputs = l.inputs;  // the scale and zero point stay as they are
      inputs[0] = last_version(l.inputs[0]);
    } else if (l.op == "pooling" || l.op == "adaptive_pooling") {
      inputs.push_back(last_version(l.inputs[0]));
      attrs.set("layout", std::string("nhwc"));
    } else if (l.op == "concat") {
      for (TensorId t : l.inputs) inputs.push_back(last_version(t));
      const int64_t axis = l.attrs.get_int("axis", int64_t{0});
      attrs.set("axis", kToFirst[static_cast<size_t>(axis < 0 ? axis + 4 : axis)]);
    } else if (l.op == "reduce") {
      inputs.push_back(last_version(l.inputs[0]));
      if (l.attrs.has("axes")) {
        std::vector<int64_t> axes = l.attrs.get_ints("axes", l.name);
        for (int64_t& a : axes) a = kToFirst[static_cast<size_t>(a < 0 ? a + 4 : a)];
        attrs.set("axes", axes);
      }
    } else {
      for (TensorId t : l.inputs) inputs.push_back(last_version(t));
    }
    // The original layer is not in the network while its replacement is added, so its name is free.
    Layer& added = net_.add_layer(l.op, inputs, std::move(attrs), l.name);
    layers_.push_back(std::move(added));
    net_.mutable_layers().pop_back();
    grow();
    for (size_t i = 0; i < l.outputs.size(); ++i) {
      last_[l.outputs[i]] = layers_.back().outputs[i];
      first_[l.outputs[i]] = false;
      native_[l.outputs[i]] = true;
    }
    any_last_ = true;
    changed_ = true;
  }

  // A convolution input that is a zero channel pad of a channels-first tensor only it reads (an
  // INT8 stem: quantize_int8_layers pads 3 channels to 16) is padded after the transpose into
  // channels last instead, on the last dim: the transpose moves 3 channels rather than 16, and the
  // pad writes whole rows. Returns the channels-last padded tensor, or -1 when `x` is not such a pad.
  TensorId channels_last_pad(TensorId x) {
    if (readers_[static_cast<size_t>(x)] != 1 || net_.is_output(x) || net_.tensor(x).dims.size() != 4)
      return -1;
    for (size_t i = layers_.size(); i-- > 0;) {
      if (layers_[i].outputs.empty() || layers_[i].outputs[0] != x) continue;
      const Layer p = layers_[i];  // a copy: add_layer below may grow layers_
      if (p.op != "pad" || (p.attrs.has("mode") && p.attrs.get_string("mode", p.name) != "constant"))
        return -1;
      const std::vector<int64_t> pads = indexing::resolve_pads(p.attrs.get_ints("pads", p.name), 4);
      for (int d = 0; d < 4; ++d) {
        if (d != 1 && (pads[2 * d] != 0 || pads[2 * d + 1] != 0)) return -1;
      }
      if (pads[2] < 0 || pads[3] < 0) return -1;
      Attributes attrs = p.attrs;
      attrs.set("pads", std::vector<int64_t>{pads[2], pads[3]});  // torch order: the last dim only
      const TensorId src = last_version(p.inputs[0]);
      Layer& pad = net_.add_layer("pad", {src}, std::move(attrs), unique_layer(p.name + "/nhwc"));
      layers_.push_back(std::move(pad));
      net_.mutable_layers().pop_back();
      grow();
      dropped_.insert(i);
      changed_ = true;
      return layers_.back().outputs[0];
    }
    return -1;
  }

  // A convolution with fewer than kMinChannels input channels (an image's 3) runs badly on tensor
  // cores: its channels-last input is zero-padded to kMinChannels (a pad layer) and its weight
  // gets zero rows for the new channels, which adds nothing to any output.
  void pad_few_channels(const Layer& l, std::vector<TensorId>& inputs) {
    constexpr int64_t kMinChannels = 8;
    const int64_t c = net_.tensor(inputs[0]).dims[3];
    const Tensor w = net_.tensor(inputs[1]);  // a copy: add_layer below may move the tensor list
    if (c <= 0 || c >= kMinChannels || l.attrs.get_int("groups", int64_t{1}) != 1 || w.dims[3] != c) return;
    Attributes attrs;
    attrs.set("pads", std::vector<int64_t>{0, kMinChannels - c});  // torch order: last dim first
    Layer& pad = net_.add_layer("pad", {inputs[0]}, std::move(attrs), unique_layer(l.name + "/pad_channels"));
    layers_.push_back(std::move(pad));
    net_.mutable_layers().pop_back();
    grow();
    inputs[0] = layers_.back().outputs[0];
    const std::string name = unique_name(w.name + "/pad_channels");
    inputs[1] = add_derived_constant(net_, name, "pad_channels", Attributes().set("channels", kMinChannels),
                                     {inputs[1]});
    grow();
  }

  void grow() {
    last_.resize(net_.tensors().size(), -1);
    first_.resize(net_.tensors().size(), true);
    native_.resize(net_.tensors().size(), false);
  }

  std::string unique_name(const std::string& base) const {
    std::string name = base;
    for (int i = 1; net_.find_tensor(name) != -1; ++i) name = base + "_" + std::to_string(i);
    return name;
  }

  // Layer names double as output tensor names; both must be unused.
  std::string unique_layer(const std::string& base) const {
    std::string name = base;
    for (int i = 1;; ++i) {
      bool used = net_.find_tensor(name) != -1;
      for (const auto& l : layers_) used |= l.name == name;
      if (!used) return name;
      name = base + "_" + std::to_string(i);
    }
  }

  Network& net_;
  std::vector<Layer> layers_;
  std::vector<TensorId> last_;                    // channels-last version of each tensor, -1 when none
  std::vector<bool> first_;                       // whether the channels-first tensor holds its values
  std::vector<bool> native_;                      // original tensors computed by a channels-last layer
  std::map<TensorId, std::string> deferred_;      // a model's NHWC -> NCHW transpose, by its output
  std::vector<int> readers_;                      // layers reading each original tensor
  const std::vector<Layer>* original_ = nullptr;  // the layers as they were, during run()
  std::set<size_t> dropped_;                      // layers_ replaced (channels_last_pad)
  bool any_last_ = false;                         // some layer runs channels last
  bool changed_ = false;
};

}  // namespace

bool assign_layouts(Network& net) { return LayoutRewriter(net).run(); }

}  // namespace kiln
