// Writes at constant positions, as functional graphs express in-place slice assignment:
// slice_scatter(self, src, dim, start, end, step) and select_scatter(self, src, dim, index).
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
});

}  // namespace kiln
