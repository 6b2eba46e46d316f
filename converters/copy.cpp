// Copies and fills, all no-ops or broadcasts for the engine (its tensors have no strides, no aliasing
// and no device of their own): alias / detach / lift_fresh_copy -> identity; copy(self, src) ->
// src cast to self's dtype and expanded to self's shape; fill.Scalar / fill.Tensor; empty.* ->
// zeros (the engine never exposes uninitialized memory); repeat -> unsqueeze + expand + reshape;
// native_dropout in inference -> identity.
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

void register_identity(const std::string& target) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    return "";
  };
  c.convert = [](ConversionContext& ctx, const KNode& n) {
    ctx.set_output(n, 0, ctx.add(n, "identity", {ctx.tensor(n, "self")}).outputs[0]);
  };
  c.limits = "an identity: never splits an engine";
  register_converter(std::move(c));
}

// `t` expanded to the shape of `like` (a constant shape when static, else shape(like)).
TensorId expand_like(ConversionContext& ctx, const KNode& n, TensorId t, TensorId like,
                     const std::string& tag) {
  const Dims& target = ctx.net().tensor(like).dims;
  if (ctx.net().tensor(t).dims == target) return t;
  if (is_static(target))
    return ctx
        .add(n, "expand", {t}, Attributes().set("shape", std::vector<int64_t>(target.begin(), target.end())),
             tag)
        .outputs[0];
  TensorId shape = ctx.add(n, "shape", {like}, {}, tag + "_shape").outputs[0];
  return ctx.add(n, "expand", {t, shape}, {}, tag).outputs[0];
}

std::string not_int8(DataType t) { return t == DataType::kInt8 ? "int8 is not converted" : ""; }

// A size list argument with its symbolic entries as a shape tensor, or constant ints.
std::string size_list_ok(const KGraph& g, const KNode& n, const std::string& name) {
  const Arg& a = n.arg(name);
  if (a.kind != Arg::Kind::kList) return name + " must be a list";
  for (const Arg& e : a.list) {
    if (e.kind != Arg::Kind::kInt && !(e.is_value() && g.value(e.value).host_scalar))
      return name + " entry " + e.describe() + " is not a size";
  }
  return "";
}

// empty.memory_format / empty_strided: zeros of the recorded dtype.
void register_empty(const std::string& target) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    std::string r = size_list_ok(g, n, "size");
    if (!r.empty() || !output_used(n, 0)) return r;
    return not_int8(output_dtype(g, n));
  };
  c.convert = [](ConversionContext& ctx, const KNode& n) {
    if (!output_used(n, 0)) return;
    Attributes attrs;
    attrs.set("value", 0.0).set("dtype", std::string(dtype_name(output_dtype(ctx.graph(), n))));
    TensorId shape = ctx.size_tensor(n, "size");
    if (shape < 0) {
      attrs.set("shape", ints_arg(n, "size"));
      ctx.set_output(n, 0, ctx.add(n, "fill", {}, attrs).outputs[0]);
    } else {
      ctx.set_output(n, 0, ctx.add(n, "fill", {shape}, attrs).outputs[0]);
    }
  };
  c.limits = "zeros (uninitialized memory is never exposed); sizes: ints and symbolic sizes";
  register_converter(std::move(c));
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  register_identity("aten.alias.default");
  register_identity("aten.detach.default");
  register_identity("aten.lift_fresh_copy.default");

  // copy(self, src): the values of src (broadcast to self's shape) in self's dtype.
  Converter copy;
  copy.target = "aten.copy.default";
  copy.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& self = value_arg(g, n, "self");
    const KValue& src = value_arg(g, n, "src");
    if (src.dims.size() > self.dims.size()) return "src has a higher rank than self";
    std::string r = not_int8(self.dtype);
    return r.empty() ? not_int8(src.dtype) : r;
  };
  copy.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId self = ctx.tensor(n, "self");
    TensorId src = cast_to(ctx, n, ctx.tensor(n, "src"), ctx.net().tensor(self).dtype, "cast");
    TensorId out = expand_like(ctx, n, src, self, "expand");
    if (out == ctx.tensor(n, "src")) out = ctx.add(n, "identity", {out}).outputs[0];
    ctx.set_output(n, 0, out);
  };
  copy.limits = "src broadcast to self's shape and cast to its dtype";
  register_converter(std::move(copy));

  // fill(self, value): value (a number or a 0-d tensor) in self's shape and dtype.
  for (const char* target : {"aten.fill.Scalar", "aten.fill.Tensor"}) {
    Converter fill;
    fill.target = target;
    fill.capability = [](const KGraph& g, const KNode& n) -> std::string {
      const KValue& self = value_arg(g, n, "self");
      const Arg& value = n.arg("value");
      if (value.is_value() ? !g.value(value.value).dims.empty() : !value.is_number())
        return "value must be a number or a 0-d tensor";
      return not_int8(self.dtype);
    };
    fill.convert = [](ConversionContext& ctx, const KNode& n) {
      TensorId self = ctx.tensor(n, "self");
      TensorId value = operand_as(ctx, n, "value", ctx.net().tensor(self).dtype);
      ctx.set_output(n, 0, expand_like(ctx, n, value, self, ""));
    };
    fill.limits = "a number or 0-d tensor value, in self's shape and dtype";
    register_converter(std::move(fill));
  }

  // native_dropout(input, p, train): the identity in inference (train False; the mask output,
  // all true, unused).
  Converter dropout;
  dropout.target = "aten.native_dropout.default";
  dropout.capability = [](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "input");
    const Arg& train = n.arg("train");
    if (train.is_none() || train.i != 0) return "dropout in training mode is random";
    return require_unused_outputs(n, 1, "mask");
  };
  dropout.convert = [](ConversionContext& ctx, const KNode& n) {
    ctx.set_output(n, 0, ctx.add(n, "identity", {ctx.tensor(n, "input")}).outputs[0]);
  };
  dropout.limits = "train=False (the identity); mask output unused";
  register_converter(std::move(dropout));

  register_empty("aten.empty.memory_format");
  register_empty("aten.empty_strided.default");

  // repeat(self, repeats): self (with leading 1 dims up to len(repeats)) unsqueezed before each
  // dim, expanded by the repeat count there, then each (count, dim) pair merged by a reshape.
  Converter repeat;
  repeat.target = "aten.repeat.default";
  repeat.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    const std::vector<int64_t> repeats = ints_arg(n, "repeats");
    if (repeats.size() < x.dims.size()) return "fewer repeats than dims";
    for (int64_t r : repeats) {
      if (r < 0) return "repeats must be ≥ 0";
    }
    if (2 * repeats.size() > static_cast<size_t>(kMaxRank))
      return "more than " + std::to_string(kMaxRank / 2) + " repeats (the expanded rank would exceed " +
             std::to_string(kMaxRank) + ")";
    int dynamic = 0;
    for (int64_t d : x.dims) dynamic += d == kDynamic ? 1 : 0;
    if (dynamic > 1) return "at most one dynamic dim";
    for (int64_t r : repeats) {
      if (dynamic > 0 && r == 0) return "a repeat of 0 with a dynamic dim";
    }
    return not_int8(x.dtype);
  };
  repeat.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const std::vector<int64_t> repeats = ints_arg(n, "repeats");
    Dims dims = ctx.net().tensor(x).dims;
    const size_t rank = repeats.size();
    if (dims.size() < rank) {  // leading size-1 dims, as torch adds them
      std::vector<int64_t> lead;
      for (size_t k = 0; k < rank - dims.size(); ++k) lead.push_back(static_cast<int64_t>(k));
      x = ctx.add(n, "unsqueeze", {x}, Attributes().set("axes", lead), "lead").outputs[0];
      dims = ctx.net().tensor(x).dims;
    }
    std::vector<int64_t> axes, expanded, merged;
    for (size_t k = 0; k < rank; ++k) {
      axes.push_back(static_cast<int64_t>(2 * k));
      expanded.push_back(repeats[k]);
      expanded.push_back(-1);                                             // expand: -1 keeps the dim
      merged.push_back(dims[k] == kDynamic ? -1 : repeats[k] * dims[k]);  // reshape: -1 infers it
    }
    x = ctx.add(n, "unsqueeze", {x}, Attributes().set("axes", axes), "unsqueeze").outputs[0];
    x = ctx.add(n, "expand", {x}, Attributes().set("shape", expanded), "expand").outputs[0];
    ctx.set_output(n, 0, ctx.add(n, "reshape", {x}, Attributes().set("shape", merged)).outputs[0]);
  };
  repeat.limits = "constant repeats; at most one dynamic dim";
  register_converter(std::move(repeat));
});

}  // namespace kiln
