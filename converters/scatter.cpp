// Writes at constant positions, as functional graphs express in-place slice assignment:
// slice_scatter(self, src, dim, start, end, step) and select_scatter(self, src, dim, index);
// masked_scatter by a cumsum of the mask; scatter (.src / .value / .reduce / .value_reduce),
// scatter_add and scatter_reduce.two -> the scatter_elements layer (mean as a sum over a count);
// col2im -> a scatter_elements add at constant positions.
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

// scatter_elements(self, dim, index, updates), updates cast to self's dtype (the layer reads only
// the region of a larger src that index covers, as torch).
TensorId scatter_elements(ConversionContext& ctx, const KNode& n, TensorId self, TensorId updates,
                          const std::string& reduction, bool include_self, const std::string& tag) {
  updates = cast_to(ctx, n, updates, ctx.net().tensor(self).dtype, tag + "_src_cast");
  Attributes attrs;
  attrs.set("axis", wrap_axis(int_arg(n, "dim"), ctx.net().tensor(self).dims.size()))
      .set("reduction", reduction)
      .set("include_self", int64_t{include_self ? 1 : 0});
  return ctx.add(n, "scatter_elements", {self, ctx.tensor(n, "index"), updates}, attrs, tag).outputs[0];
}

// value broadcast to index's shape, in self's dtype.
TensorId filled_like_index(ConversionContext& ctx, const KNode& n, TensorId self, const std::string& tag) {
  TensorId shape = ctx.add(n, "shape", {ctx.tensor(n, "index")}, {}, tag + "_shape").outputs[0];
  TensorId v = ctx.scalar_or_tensor(n, "value", ctx.net().tensor(self).dtype);
  v = cast_to(ctx, n, v, ctx.net().tensor(self).dtype, tag + "_cast");
  return ctx.add(n, "expand", {v, shape}, {}, tag).outputs[0];
}

// The capability shared by the scatter converters; "" when the node converts.
std::string scatter_capability(const KGraph& g, const KNode& n, const char* src, bool numeric_only) {
  const KValue& self = value_arg(g, n, "self");
  const KValue& index = value_arg(g, n, "index");
  if (self.dims.empty()) return "self must have rank >= 1";
  if (index.dims.size() != self.dims.size()) return "index must have self's rank";
  if (!is_integer(index.dtype)) return "index must be int32/int64";
  const int64_t dim = int_arg(n, "dim");
  if (dim < -static_cast<int64_t>(self.dims.size()) || dim >= static_cast<int64_t>(self.dims.size()))
    return "dim is out of range";
  if (self.dtype == DataType::kInt8) return "int8 is not converted";
  if (numeric_only && !is_floating(self.dtype) && !is_integer(self.dtype))
    return std::string("reductions take floating or int32/int64 self, got ") + dtype_name(self.dtype);
  if (src != nullptr) {
    const Arg& a = n.arg(src);
    if (a.is_value()) {
      const KValue& v = g.value(a.value);
      if (v.dims.size() != self.dims.size()) return std::string(src) + " must have self's rank";
      if (v.dtype == DataType::kInt8) return "int8 is not converted";
    } else if (!a.is_number()) {
      return std::string(src) + " must be a tensor or a number";
    }
  }
  return "";
}

// torch's reduce names (scatter_reduce: sum, prod, mean, amax, amin; scatter.reduce: add,
// multiply) as scatter_elements reductions; "" when not one.
std::string reduction_of(const std::string& reduce) {
  if (reduce == "sum" || reduce == "add") return "add";
  if (reduce == "prod" || reduce == "multiply") return "mul";
  if (reduce == "amax") return "max";
  if (reduce == "amin") return "min";
  if (reduce == "mean") return "mean";
  return "";
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

  // col2im(x [N, C * kh * kw, L] or unbatched, output_size, kernel_size, dilation, padding,
  // stride) (F.fold): each column element adds into the output position its block and kernel
  // offset give, fixed at build time: a scatter_elements add along the flattened output
  // [N, C, H * W + 1] with a constant position index ([K * L], expanded over N and C; positions in
  // the padding go to the extra slot, sliced off).
  Converter col2im;
  col2im.target = "aten.col2im.default";
  col2im.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (x.dims.size() != 2 && x.dims.size() != 3) return "self must be [C * kh * kw, L] or batched";
    const size_t r = x.dims.size();
    if (x.dims[r - 2] == kDynamic || x.dims[r - 1] == kDynamic) return "the column dims must be static";
    for (const char* name : {"output_size", "kernel_size", "dilation", "padding", "stride"}) {
      if (!n.arg(name).is_int_list() || n.arg(name).ints().size() != 2)
        return std::string(name) + " must be 2 constant ints";
    }
    const auto k = ints_arg(n, "kernel_size"), out = ints_arg(n, "output_size"),
               dil = ints_arg(n, "dilation");
    const auto pad = ints_arg(n, "padding"), stride = ints_arg(n, "stride");
    for (int d = 0; d < 2; ++d) {
      if (k[d] < 1 || out[d] < 1 || dil[d] < 1 || stride[d] < 1 || pad[d] < 0)
        return "sizes must be positive";
    }
    const int64_t taps = k[0] * k[1];
    if (x.dims[r - 2] % taps != 0) return "dim -2 must be a multiple of kernel_size's product";
    int64_t blocks = 1;
    for (int d = 0; d < 2; ++d) {
      const int64_t b = (out[d] + 2 * pad[d] - dil[d] * (k[d] - 1) - 1) / stride[d] + 1;
      if (b < 1) return "the kernel does not fit the padded output";
      blocks *= b;
    }
    if (x.dims[r - 1] != blocks) return "dim -1 must be the number of blocks";
    if (!is_floating(x.dtype)) return require_floating(x, "self");
    return "";
  };
  col2im.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const Dims dims = ctx.net().tensor(x).dims;
    const bool batched = dims.size() == 3;
    if (!batched)
      x = ctx.add(n, "unsqueeze", {x}, Attributes().set("axes", std::vector<int64_t>{0}), "batched")
              .outputs[0];
    const auto k = ints_arg(n, "kernel_size"), out = ints_arg(n, "output_size"),
               dil = ints_arg(n, "dilation");
    const auto pad = ints_arg(n, "padding"), stride = ints_arg(n, "stride");
    const int64_t taps = k[0] * k[1], channels = dims[dims.size() - 2] / taps, blocks = dims.back();
    const int64_t bw = (out[1] + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) / stride[1] + 1;
    const int64_t plane = out[0] * out[1];
    std::vector<int64_t> position;  // per (kernel tap, block), row-major as the columns
    position.reserve(static_cast<size_t>(taps * blocks));
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t l = 0; l < blocks; ++l) {
        const int64_t h = (l / bw) * stride[0] - pad[0] + (t / k[1]) * dil[0];
        const int64_t w = (l % bw) * stride[1] - pad[1] + (t % k[1]) * dil[1];
        position.push_back(h >= 0 && h < out[0] && w >= 0 && w < out[1] ? h * out[1] + w : plane);
      }
    }
    // x [N, C * K, L] -> [N, C, K * L]
    x = ctx.add(n, "reshape", {x},
                Attributes().set("shape", std::vector<int64_t>{-1, channels, taps * blocks}), "columns")
            .outputs[0];
    TensorId index = ctx.constant_i64(n, position, {1, 1, taps * blocks}, "positions");
    index =
        ctx.add(n, "expand", {index, ctx.add(n, "shape", {x}, {}, "columns_shape").outputs[0]}, {}, "index")
            .outputs[0];
    TensorId shape = ctx.add(n, "shape", {x}, {}, "x_shape").outputs[0];
    TensorId target =
        ctx.add(n, "concat",
                {slice_axis(ctx, n, shape, 0, 0, 2, "nc"), ctx.constant_i64(n, {plane + 1}, {1}, "plane")},
                Attributes().set("axis", int64_t{0}), "target_shape")
            .outputs[0];
    const DataType dtype = ctx.net().tensor(x).dtype;
    TensorId zeros =
        ctx.add(n, "fill", {target}, Attributes().set("dtype", std::string(dtype_name(dtype))), "zeros")
            .outputs[0];
    Attributes add;
    add.set("axis", int64_t{2}).set("reduction", std::string("add"));
    TensorId y = ctx.add(n, "scatter_elements", {zeros, index, x}, add, "summed").outputs[0];
    y = slice_axis(ctx, n, y, 2, 0, plane, "plane_only");
    std::vector<int64_t> final_shape = {-1, channels, out[0], out[1]};
    if (!batched) final_shape.erase(final_shape.begin());
    if (!batched)
      y = ctx.add(n, "squeeze", {y}, Attributes().set("axes", std::vector<int64_t>{0}), "unbatched")
              .outputs[0];
    ctx.set_output(n, 0, ctx.add(n, "reshape", {y}, Attributes().set("shape", final_shape)).outputs[0]);
  };
  col2im.limits =
      "static column dims; constant sizes; floating dtypes (atomic adds on CUDA: the summation order varies)";
  register_converter(std::move(col2im));

  // scatter(self, dim, index, src | value [, reduce]): writes (or, with reduce, folds) src / value.
  struct ScatterForm {
    const char* target;
    const char* source;  // "src" (a tensor) or "value" (a number)
    bool has_reduce;
  };
  for (const ScatterForm& f :
       {ScatterForm{"aten.scatter.src", "src", false}, ScatterForm{"aten.scatter.value", "value", false},
        ScatterForm{"aten.scatter.reduce", "src", true},
        ScatterForm{"aten.scatter.value_reduce", "value", true},
        ScatterForm{"aten.scatter_add.default", "src", false}}) {
    const std::string target = f.target;
    const bool add = target == "aten.scatter_add.default";
    Converter c;
    c.target = target;
    c.capability = [f, add](const KGraph& g, const KNode& n) -> std::string {
      if (f.has_reduce) {
        const Arg& r = n.arg("reduce");
        if (r.kind != Arg::Kind::kString || (r.s != "add" && r.s != "multiply"))
          return "reduce must be 'add' or 'multiply'";
      }
      return scatter_capability(g, n, f.source, f.has_reduce || add);
    };
    c.convert = [f, add](ConversionContext& ctx, const KNode& n) {
      TensorId self = ctx.tensor(n, "self");
      TensorId src =
          std::string(f.source) == "src" ? ctx.tensor(n, "src") : filled_like_index(ctx, n, self, "value");
      const std::string reduction = add ? "add" : f.has_reduce ? reduction_of(n.arg("reduce").s) : "none";
      ctx.set_output(n, 0, scatter_elements(ctx, n, self, src, reduction, true, ""));
    };
    c.limits = add ? "int32/int64 index of self's rank; floating or integer self (atomic adds on CUDA: "
                     "the summation order varies)"
               : f.has_reduce ? "reduce 'add' or 'multiply'; int32/int64 index of self's rank"
                              : "int32/int64 index of self's rank (repeated positions: one write lands, "
                                "unspecified which, as in torch)";
    register_converter(std::move(c));
  }

  // scatter_reduce(self, dim, index, src, reduce, include_self): sum / prod / amax / amin fold in
  // scatter_elements; mean divides the sum by the count of what was summed there (self counting
  // once with include_self), keeping self where nothing landed.
  Converter reduce;
  reduce.target = "aten.scatter_reduce.two";
  reduce.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const Arg& r = n.arg("reduce");
    if (r.kind != Arg::Kind::kString || reduction_of(r.s).empty())
      return "reduce must be sum, prod, mean, amax or amin";
    if (const Arg* inc = n.find("include_self");
        inc && !inc->is_none() && inc->kind != Arg::Kind::kBool && inc->kind != Arg::Kind::kInt)
      return "include_self must be a constant bool";
    if (r.s == "mean" && !is_floating(value_arg(g, n, "self").dtype)) return "mean takes floating self";
    return scatter_capability(g, n, "src", true);
  };
  reduce.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId self = ctx.tensor(n, "self");
    TensorId src = ctx.tensor(n, "src");
    const Arg* inc = n.find("include_self");
    const bool include_self = inc == nullptr || inc->is_none() || bool_arg(n, "include_self");
    const std::string reduction = reduction_of(n.arg("reduce").s);
    if (reduction != "mean") {
      ctx.set_output(n, 0, scatter_elements(ctx, n, self, src, reduction, include_self, ""));
      return;
    }
    const DataType dtype = ctx.net().tensor(self).dtype;
    TensorId sum = scatter_elements(ctx, n, self, src, "add", include_self, "sum");
    // count: ones scattered into zeros shaped like self (index's shape, src's region).
    TensorId self_shape = ctx.add(n, "shape", {self}, {}, "self_shape").outputs[0];
    TensorId zeros =
        ctx.add(n, "fill", {self_shape}, Attributes().set("dtype", std::string(dtype_name(dtype))), "zeros")
            .outputs[0];
    TensorId index_shape = ctx.add(n, "shape", {ctx.tensor(n, "index")}, {}, "index_shape").outputs[0];
    TensorId ones =
        ctx.add(n, "expand", {constant_of(ctx, n, 1.0, dtype, "one"), index_shape}, {}, "ones").outputs[0];
    TensorId count = scatter_elements(ctx, n, zeros, ones, "add", true, "count");
    if (include_self) {
      count = binary(ctx, n, "add", count, constant_of(ctx, n, 1.0, dtype, "self_one"), "count_self");
      ctx.set_output(n, 0, binary(ctx, n, "div", sum, count, ""));
      return;
    }
    TensorId hit = binary(ctx, n, "gt", count, constant_of(ctx, n, 0.0, dtype, "none_hit"), "hit");
    TensorId mean = binary(ctx, n, "div", sum, count, "mean");
    ctx.set_output(n, 0, ctx.add(n, "where", {hit, mean, self}).outputs[0]);
  };
  reduce.limits =
      "sum, prod, mean (floating), amax, amin; constant include_self; int32/int64 index of self's rank";
  register_converter(std::move(reduce));
});

}  // namespace kiln
