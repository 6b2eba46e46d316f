// Writes at constant positions, as functional graphs express in-place slice assignment:
// slice_scatter(self, src, dim, start, end, step) and select_scatter(self, src, dim, index);
// masked_scatter by a cumsum of the mask.
// Step 1: concat(self before, src, self after). Step > 1: where(mask, gather(src, spread), self)
// with a constant mask and spread index along dim. src is cast to self's dtype.
#include <algorithm>
#include <limits>

#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// Python slice bounds on a dim of `size`: wrapped once and clamped to [0, size].
int64_t clamp_bound(int64_t v, int64_t size) {
  if (v < 0) v += size;
  return std::clamp<int64_t>(v, 0, size);
}

std::string static_axis(const KValue& x, const KNode& n, int64_t* axis) {
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  const int64_t a = wrap_axis(int_arg(n, "dim"), static_cast<size_t>(rank));
  if (a < 0 || a >= rank) return "dim is out of range";
  if (x.dims[a] == kDynamic) return "the scattered dim must be static";
  *axis = a;
  return "";
}

std::string dtypes_ok(const KValue& self, const KValue& src) {
  if (self.dtype == DataType::kInt8 || src.dtype == DataType::kInt8) return "int8 is not converted";
  return "";
}

// self with positions start, start + step, ... (< end) along `axis` replaced by src's slices.
TensorId scatter_slices(ConversionContext& ctx, const KNode& n, TensorId self, TensorId src, int64_t axis,
                        int64_t start, int64_t end, int64_t step) {
  const Dims dims = ctx.net().tensor(self).dims;
  const int64_t size = dims[axis];
  src = cast_to(ctx, n, src, ctx.net().tensor(self).dtype, "src_cast");
  if (start >= end) return ctx.add(n, "identity", {self}).outputs[0];  // nothing is written
  if (step == 1) {
    std::vector<TensorId> parts;
    if (start > 0) parts.push_back(slice_axis(ctx, n, self, axis, 0, start, "before"));
    parts.push_back(src);
    if (end < size) parts.push_back(slice_axis(ctx, n, self, axis, end, size, "after"));
    if (parts.size() == 1) return ctx.add(n, "identity", {src}).outputs[0];
    return ctx.add(n, "concat", parts, Attributes().set("axis", axis)).outputs[0];
  }
  std::vector<uint8_t> mask(static_cast<size_t>(size), 0);
  std::vector<int64_t> spread(static_cast<size_t>(size), 0);
  for (int64_t p = start, k = 0; p < end; p += step, ++k) {
    mask[p] = 1;
    spread[p] = k;
  }
  Dims mask_dims(dims.size() - axis, 1);  // [size, 1, ...]: broadcasts along the later dims
  mask_dims[0] = size;
  TensorId m = ctx.net().add_constant(n.name + "/mask", DataType::kBool, mask_dims, mask.data(), mask.size());
  TensorId index = ctx.constant_i64(n, spread, {size}, "spread");
  Attributes attrs;
  attrs.set("axis", axis).set("wrap", int64_t{0});
  TensorId spread_src = ctx.add(n, "gather", {src, index}, attrs, "spread_src").outputs[0];
  return ctx.add(n, "where", {m, spread_src, self}).outputs[0];
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter slice_scatter;
  slice_scatter.target = "aten.slice_scatter.default";
  slice_scatter.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& self = value_arg(g, n, "self");
    const KValue& src = value_arg(g, n, "src");
    int64_t axis = 0;
    std::string r = static_axis(self, n, &axis);
    if (!r.empty()) return r;
    for (const char* name : {"start", "end"}) {
      const Arg& a = n.arg(name);
      if (!a.is_none() && a.kind != Arg::Kind::kInt) return std::string(name) + " must be a constant int";
    }
    if (int_arg(n, "step") < 1) return "step must be at least 1";
    if (src.dims.size() != self.dims.size()) return "src and self differ in rank";
    return dtypes_ok(self, src);
  };
  slice_scatter.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId self = ctx.tensor(n, "self");
    const Dims& dims = ctx.net().tensor(self).dims;
    const int64_t axis = wrap_axis(int_arg(n, "dim"), dims.size());
    const int64_t size = dims[axis];
    const int64_t start = n.arg("start").is_none() ? 0 : clamp_bound(int_arg(n, "start"), size);
    const int64_t end = n.arg("end").is_none() ? size : clamp_bound(int_arg(n, "end"), size);
    ctx.set_output(n, 0,
                   scatter_slices(ctx, n, self, ctx.tensor(n, "src"), axis, start, end, int_arg(n, "step")));
  };
  slice_scatter.limits = "constant start, end and step over a static dim; src cast to self's dtype";
  register_converter(std::move(slice_scatter));

  Converter select_scatter;
  select_scatter.target = "aten.select_scatter.default";
  select_scatter.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& self = value_arg(g, n, "self");
    const KValue& src = value_arg(g, n, "src");
    int64_t axis = 0;
    std::string r = static_axis(self, n, &axis);
    if (!r.empty()) return r;
    const int64_t index = int_arg(n, "index");
    if (index < -self.dims[axis] || index >= self.dims[axis]) return "index is out of range";
    if (src.dims.size() + 1 != self.dims.size()) return "src must have one dim less than self";
    return dtypes_ok(self, src);
  };
  select_scatter.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId self = ctx.tensor(n, "self");
    const Dims& dims = ctx.net().tensor(self).dims;
    const int64_t axis = wrap_axis(int_arg(n, "dim"), dims.size());
    int64_t index = int_arg(n, "index");
    if (index < 0) index += dims[axis];
    TensorId src = ctx.add(n, "unsqueeze", {ctx.tensor(n, "src")},
                           Attributes().set("axes", std::vector<int64_t>{axis}), "src_unsqueezed")
                       .outputs[0];
    ctx.set_output(n, 0, scatter_slices(ctx, n, self, src, axis, index, index + 1, 1));
  };
  select_scatter.limits = "a constant index over a static dim; src cast to self's dtype";
  register_converter(std::move(select_scatter));

  // masked_scatter(self, mask, source): the k-th true position of mask (row-major, mask
  // broadcast to self) takes source's k-th element: an exclusive cumsum of the mask numbers
  // them, a gather reads source, a where keeps self elsewhere.
  Converter masked_scatter;
  masked_scatter.target = "aten.masked_scatter.default";
  masked_scatter.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& self = value_arg(g, n, "self");
    const KValue& source = value_arg(g, n, "source");
    if (value_arg(g, n, "mask").dtype != DataType::kBool) return "mask must be bool";
    if (!is_static(self.dims) || !is_static(source.dims)) return "self and source need static shapes";
    int64_t count = 1;
    for (int64_t d : source.dims) count *= d;
    if (count == 0) return "source is empty";
    return dtypes_ok(self, source);
  };
  masked_scatter.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId self = ctx.tensor(n, "self");
    const Dims dims = ctx.net().tensor(self).dims;
    const std::vector<int64_t> shape(dims.begin(), dims.end());
    TensorId mask =
        ctx.add(n, "expand", {ctx.tensor(n, "mask")}, Attributes().set("shape", shape), "mask").outputs[0];
    Attributes flat;
    flat.set("start_dim", int64_t{0}).set("end_dim", int64_t{-1});
    auto flatten = [&](TensorId t, const std::string& tag) {
      if (ctx.net().tensor(t).dims.empty())
        return ctx.add(n, "reshape", {t}, Attributes().set("shape", std::vector<int64_t>{1}), tag).outputs[0];
      return ctx.add(n, "flatten", {t}, flat, tag).outputs[0];
    };
    TensorId numbers = cast_to(ctx, n, flatten(mask, "mask_flat"), DataType::kInt64, "mask_i64");
    Attributes scan;
    scan.set("axis", int64_t{0}).set("exclusive", int64_t{1});
    numbers = ctx.add(n, "cumsum", {numbers}, scan, "numbers").outputs[0];
    TensorId source = cast_to(ctx, n, flatten(ctx.tensor(n, "source"), "source_flat"),
                              ctx.net().tensor(self).dtype, "source_cast");
    const int64_t last = ctx.net().tensor(source).dims[0] - 1;  // unmasked positions may count past it
    numbers = binary(ctx, n, "min", numbers, ctx.constant_i64(n, {last}, {}, "last"), "numbers_clamped");
    Attributes gather;
    gather.set("axis", int64_t{0}).set("wrap", int64_t{0});
    TensorId values = ctx.add(n, "gather", {source, numbers}, gather, "values").outputs[0];
    values = ctx.add(n, "reshape", {values}, Attributes().set("shape", shape), "values_shaped").outputs[0];
    ctx.set_output(n, 0, ctx.add(n, "where", {mask, values, self}).outputs[0]);
  };
  masked_scatter.limits =
      "static shapes; a bool mask broadcast to self (source must hold as many elements as mask has true "
      "ones: more true ones repeat source's last element instead of raising)";
  register_converter(std::move(masked_scatter));
});

}  // namespace kiln
