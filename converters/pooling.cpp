// 2-D pooling: max_pool2d_with_indices (values only), avg_pool2d, _adaptive_avg_pool2d.
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// torch lists may give one value for both spatial dims; the engine wants one per dim.
std::vector<int64_t> per_dim(std::vector<int64_t> v, const std::vector<int64_t>& fallback) {
  if (v.empty()) return fallback;
  if (v.size() == 1) v.push_back(v[0]);
  return v;
}

std::string rank4_floating(const KGraph& g, const KNode& n) {
  const KValue& x = value_arg(g, n, "self");
  if (x.dims.size() != 4) return "input must be 4-D (N, C, H, W)";
  return require_floating(x, "self");
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter maxpool;
  maxpool.target = "aten.max_pool2d_with_indices.default";
  maxpool.capability = [](const KGraph& g, const KNode& n) -> std::string {
    std::string r = require_unused_outputs(n, 1, "indices");
    if (!r.empty()) return r;
    auto kernel = per_dim(ints_arg(n, "kernel_size"), {});
    auto pads = per_dim(ints_arg(n, "padding"), {0, 0});
    for (size_t k = 0; k < pads.size() && k < kernel.size(); ++k) {
      if (2 * pads[k] > kernel[k]) return "padding must be at most half the kernel";
    }
    ints_arg(n, "stride");
    ints_arg(n, "dilation");
    return rank4_floating(g, n);
  };
  maxpool.convert = [](ConversionContext& ctx, const KNode& n) {
    auto kernel = per_dim(ints_arg(n, "kernel_size"), {});
    Attributes attrs;
    attrs.set("type", std::string("max"))
        .set("kernel", kernel)
        .set("strides", per_dim(ints_arg(n, "stride"), kernel))
        .set("pads", per_dim(ints_arg(n, "padding"), {0, 0}))
        .set("dilations", per_dim(ints_arg(n, "dilation"), {1, 1}))
        .set("ceil_mode", int64_t{bool_arg(n, "ceil_mode")});
    ctx.set_output(n, 0, ctx.add(n, "pooling", {ctx.tensor(n, "self")}, attrs).outputs[0]);
  };
  maxpool.limits = "4-D input; indices output unused; padding ≤ kernel/2";
  register_converter(std::move(maxpool));

  Converter avgpool;
  avgpool.target = "aten.avg_pool2d.default";
  avgpool.capability = [](const KGraph& g, const KNode& n) -> std::string {
    ints_arg(n, "kernel_size");
    ints_arg(n, "stride");
    ints_arg(n, "padding");
    const Arg& d = n.arg("divisor_override");
    if (!d.is_none() && d.kind != Arg::Kind::kInt) return "divisor_override must be an int";
    return rank4_floating(g, n);
  };
  avgpool.convert = [](ConversionContext& ctx, const KNode& n) {
    auto kernel = per_dim(ints_arg(n, "kernel_size"), {});
    Attributes attrs;
    attrs.set("type", std::string("avg"))
        .set("kernel", kernel)
        .set("strides", per_dim(ints_arg(n, "stride"), kernel))
        .set("pads", per_dim(ints_arg(n, "padding"), {0, 0}))
        .set("ceil_mode", int64_t{bool_arg(n, "ceil_mode")})
        .set("count_include_pad", int64_t{bool_arg(n, "count_include_pad")});
    if (!n.arg("divisor_override").is_none()) attrs.set("divisor_override", int_arg(n, "divisor_override"));
    ctx.set_output(n, 0, ctx.add(n, "pooling", {ctx.tensor(n, "self")}, attrs).outputs[0]);
  };
  avgpool.limits = "4-D input";
  register_converter(std::move(avgpool));

  Converter adaptive;
  adaptive.target = "aten._adaptive_avg_pool2d.default";
  adaptive.capability = [](const KGraph& g, const KNode& n) -> std::string {
    ints_arg(n, "output_size");
    return rank4_floating(g, n);
  };
  adaptive.convert = [](ConversionContext& ctx, const KNode& n) {
    Attributes attrs;
    attrs.set("type", std::string("avg")).set("output_size", per_dim(ints_arg(n, "output_size"), {}));
    ctx.set_output(n, 0, ctx.add(n, "adaptive_pooling", {ctx.tensor(n, "self")}, attrs).outputs[0]);
  };
  adaptive.limits = "4-D input; constant output size";
  register_converter(std::move(adaptive));
});

}  // namespace kiln
