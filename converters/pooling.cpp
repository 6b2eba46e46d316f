// Pooling over 1 to 3 spatial dims: max_pool{1,2,3}d_with_indices (values only), avg_pool{1,2,3}d,
// adaptive_avg_pool1d / _adaptive_avg_pool{2,3}d, adaptive_max_pool{2,3}d (values only) -> pooling /
// adaptive_pooling; upsample_{nearest,bilinear,trilinear,linear}*.vec / .default and
// _upsample_nearest_exact*.vec -> resize (the .default linear overloads never reach a converter:
// torch.export decomposes them while tracing). An unbatched input ([C, spatial...]) gets a batch dim
// of 1 around the layer.
#include <cmath>

#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// torch lists may give one value for every spatial dim; the engine wants one per dim.
std::vector<int64_t> per_dim(std::vector<int64_t> v, size_t spatial, const std::vector<int64_t>& fallback) {
  if (v.empty()) return fallback;
  if (v.size() == 1) v.assign(spatial, v[0]);
  KILN_CHECK(v.size() == spatial, "expected " << spatial << " values, got " << v.size());
  return v;
}

std::string pooled_input(const KGraph& g, const KNode& n, size_t spatial) {
  const KValue& x = value_arg(g, n, "self");
  if (x.dims.size() != spatial + 2 && x.dims.size() != spatial + 1)
    return "input must be " + std::to_string(spatial + 2) + "-D (N, C, spatial) or " +
           std::to_string(spatial + 1) + "-D (C, spatial)";
  return require_floating(x, "self");
}

// One layer on self, with a batch dim of 1 added and removed around it for an unbatched input.
void add_pooling(ConversionContext& ctx, const KNode& n, const std::string& op, const Attributes& attrs,
                 size_t spatial) {
  TensorId x = ctx.tensor(n, "self");
  const bool unbatched = ctx.net().tensor(x).dims.size() == spatial + 1;
  const Attributes batch_axis = Attributes().set("axes", std::vector<int64_t>{0});
  if (unbatched) x = ctx.add(n, "unsqueeze", {x}, batch_axis, "batched").outputs[0];
  TensorId y = ctx.add(n, op, {x}, attrs, unbatched ? op : "").outputs[0];
  if (unbatched) y = ctx.add(n, "squeeze", {y}, batch_axis).outputs[0];
  ctx.set_output(n, 0, y);
}

std::vector<int64_t> zeros(size_t k) { return std::vector<int64_t>(k, 0); }
std::vector<int64_t> ones(size_t k) { return std::vector<int64_t>(k, 1); }

void register_max_pool(const std::string& target, size_t spatial) {
  Converter c;
  c.target = target;
  c.capability = [spatial](const KGraph& g, const KNode& n) -> std::string {
    std::string r = require_unused_outputs(n, 1, "indices");
    if (!r.empty()) return r;
    auto kernel = per_dim(ints_arg(n, "kernel_size"), spatial, {});
    auto pads = per_dim(ints_arg(n, "padding"), spatial, zeros(spatial));
    for (size_t k = 0; k < pads.size() && k < kernel.size(); ++k) {
      if (2 * pads[k] > kernel[k]) return "padding must be at most half the kernel";
    }
    per_dim(ints_arg(n, "stride"), spatial, kernel);
    per_dim(ints_arg(n, "dilation"), spatial, ones(spatial));
    return pooled_input(g, n, spatial);
  };
  c.convert = [spatial](ConversionContext& ctx, const KNode& n) {
    auto kernel = per_dim(ints_arg(n, "kernel_size"), spatial, {});
    Attributes attrs;
    attrs.set("type", std::string("max"))
        .set("kernel", kernel)
        .set("strides", per_dim(ints_arg(n, "stride"), spatial, kernel))
        .set("pads", per_dim(ints_arg(n, "padding"), spatial, zeros(spatial)))
        .set("dilations", per_dim(ints_arg(n, "dilation"), spatial, ones(spatial)))
        .set("ceil_mode", int64_t{bool_arg(n, "ceil_mode")});
    add_pooling(ctx, n, "pooling", attrs, spatial);
  };
  c.limits = "indices output unused; padding ≤ kernel/2";
  register_converter(std::move(c));
}

void register_avg_pool(const std::string& target, size_t spatial) {
  Converter c;
  c.target = target;
  c.capability = [spatial](const KGraph& g, const KNode& n) -> std::string {
    auto kernel = per_dim(ints_arg(n, "kernel_size"), spatial, {});
    per_dim(ints_arg(n, "stride"), spatial, kernel);
    per_dim(ints_arg(n, "padding"), spatial, zeros(spatial));
    if (const Arg* d = n.find("divisor_override"); d && !d->is_none() && d->kind != Arg::Kind::kInt)
      return "divisor_override must be an int";
    return pooled_input(g, n, spatial);
  };
  c.convert = [spatial](ConversionContext& ctx, const KNode& n) {
    auto kernel = per_dim(ints_arg(n, "kernel_size"), spatial, {});
    Attributes attrs;
    attrs.set("type", std::string("avg"))
        .set("kernel", kernel)
        .set("strides", per_dim(ints_arg(n, "stride"), spatial, kernel))
        .set("pads", per_dim(ints_arg(n, "padding"), spatial, zeros(spatial)))
        .set("ceil_mode", int64_t{bool_arg(n, "ceil_mode")})
        .set("count_include_pad", int64_t{bool_arg(n, "count_include_pad")});
    if (const Arg* d = n.find("divisor_override"); d && !d->is_none())
      attrs.set("divisor_override", int_arg(n, "divisor_override"));
    add_pooling(ctx, n, "pooling", attrs, spatial);
  };
  c.limits = "constant window, stride and padding";
  register_converter(std::move(c));
}

void register_adaptive(const std::string& target, const std::string& type, size_t spatial) {
  Converter c;
  c.target = target;
  c.capability = [type, spatial](const KGraph& g, const KNode& n) -> std::string {
    if (type == "max") {
      std::string r = require_unused_outputs(n, 1, "indices");
      if (!r.empty()) return r;
    }
    per_dim(ints_arg(n, "output_size"), spatial, {});
    return pooled_input(g, n, spatial);
  };
  c.convert = [type, spatial](ConversionContext& ctx, const KNode& n) {
    Attributes attrs;
    attrs.set("type", type).set("output_size", per_dim(ints_arg(n, "output_size"), spatial, {}));
    add_pooling(ctx, n, "adaptive_pooling", attrs, spatial);
  };
  c.limits = type == "max" ? "constant output size; indices output unused" : "constant output size";
  register_converter(std::move(c));
}

// The output size of one spatial dim for a scale (torch: floor(in * scale)), or -1 when dynamic.
int64_t scaled_size(int64_t in, double scale) {
  return in == kDynamic ? -1 : static_cast<int64_t>(std::floor(static_cast<double>(in) * scale));
}

// upsample_*: sizes from output_size, or scales from scale_factors (.vec) / scales_* (.default).
// `.default` gives both an output size and (optionally) the scales torch maps coordinates with;
// the resize op takes one: the scales when they give that same size, the size when there are none.
void register_upsample(const std::string& target, const std::string& mode, size_t spatial, bool vec) {
  Converter c;
  c.target = target;
  auto scales_of = [vec, spatial](const KNode& n) {
    std::vector<double> scales;
    if (vec) {
      const Arg& f = n.arg("scale_factors");
      if (f.is_none()) return scales;
      KILN_CHECK(f.kind == Arg::Kind::kList, "scale_factors must be a list of numbers");
      for (const Arg& e : f.list) {
        KILN_CHECK(e.is_number(), "scale_factors must be constant numbers");
        scales.push_back(e.as_double());
      }
      if (scales.size() == 1) scales.assign(spatial, scales[0]);
      return scales;
    }
    static const char* names[3][3] = {
        {"scales"}, {"scales_h", "scales_w"}, {"scales_d", "scales_h", "scales_w"}};
    for (size_t k = 0; k < spatial; ++k) {
      const Arg* s = n.find(names[spatial - 1][k]);
      if (s == nullptr || s->is_none()) return std::vector<double>{};
      KILN_CHECK(s->is_number(), "scales must be constant numbers");
      scales.push_back(s->as_double());
    }
    return scales;
  };
  c.capability = [spatial, scales_of, vec](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, vec ? "input" : "self");
    if (x.dims.size() != spatial + 2) return "input must be " + std::to_string(spatial + 2) + "-D";
    std::string r = require_floating(x, "input");
    if (!r.empty()) return r;
    const std::vector<double> scales = scales_of(n);
    const Arg& size = n.arg("output_size");
    if (!size.is_none() && !size.is_int_list()) return "output_size must be constant ints";
    if (vec && size.is_none() == scales.empty()) return "give one of output_size and scale_factors";
    if (scales.size() != 0 && scales.size() != spatial) return "one scale per spatial dim";
    if (!vec && !scales.empty()) {
      const std::vector<int64_t> sizes = size.ints();
      for (size_t k = 0; k < spatial; ++k) {
        const int64_t in = x.dims[2 + k];
        if (in == kDynamic || scaled_size(in, scales[k]) != sizes.at(k))
          return "output_size disagrees with floor(input size * scale)";
      }
    }
    if (scales.empty()) {
      for (size_t k = 0; k < spatial; ++k) {
        if (x.dims[2 + k] == kDynamic) return "a fixed output_size over a dynamic spatial dim";
      }
    }
    return "";
  };
  c.convert = [mode, scales_of, vec](ConversionContext& ctx, const KNode& n) {
    Attributes attrs;
    attrs.set("mode", mode);
    if (const Arg* ac = n.find("align_corners"); ac && !ac->is_none() && mode == "linear")
      attrs.set("align_corners", int64_t{bool_arg(n, "align_corners")});
    const std::vector<double> scales = scales_of(n);
    if (!scales.empty()) {
      attrs.set("scales", scales);
    } else {
      attrs.set("sizes", ints_arg(n, "output_size"));
    }
    ctx.set_output(n, 0, ctx.add(n, "resize", {ctx.tensor(n, vec ? "input" : "self")}, attrs).outputs[0]);
  };
  c.limits = "constant output_size or scales (torch's coordinate mapping for each)";
  register_converter(std::move(c));
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  register_max_pool("aten.max_pool1d_with_indices.default", 1);
  register_max_pool("aten.max_pool2d_with_indices.default", 2);
  register_max_pool("aten.max_pool3d_with_indices.default", 3);
  register_avg_pool("aten.avg_pool1d.default", 1);
  register_avg_pool("aten.avg_pool2d.default", 2);
  register_avg_pool("aten.avg_pool3d.default", 3);
  register_adaptive("aten.adaptive_avg_pool1d.default", "avg", 1);
  register_adaptive("aten._adaptive_avg_pool2d.default", "avg", 2);
  register_adaptive("aten._adaptive_avg_pool3d.default", "avg", 3);
  register_adaptive("aten.adaptive_max_pool2d.default", "max", 2);
  register_adaptive("aten.adaptive_max_pool3d.default", "max", 3);

  register_upsample("aten.upsample_nearest1d.vec", "nearest", 1, true);
  register_upsample("aten.upsample_nearest2d.vec", "nearest", 2, true);
  register_upsample("aten.upsample_nearest3d.vec", "nearest", 3, true);
  register_upsample("aten._upsample_nearest_exact1d.vec", "nearest_exact", 1, true);
  register_upsample("aten._upsample_nearest_exact2d.vec", "nearest_exact", 2, true);
  register_upsample("aten._upsample_nearest_exact3d.vec", "nearest_exact", 3, true);
  register_upsample("aten.upsample_linear1d.vec", "linear", 1, true);
  register_upsample("aten.upsample_bilinear2d.vec", "linear", 2, true);
  register_upsample("aten.upsample_trilinear3d.vec", "linear", 3, true);
  register_upsample("aten.upsample_nearest2d.default", "nearest", 2, false);
});

}  // namespace kiln
