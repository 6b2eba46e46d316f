// Padding -> pad layers: constant_pad_nd (any rank, negative pads crop, a number fill value),
// reflection_pad1d/2d/3d (mode reflect) and replication_pad1d/2d/3d (mode replicate). Pads are
// in torch's order (last dim first, before/after pairs), as the pad op takes them.
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// reflection / replication padding of the last `spatial` dims.
void register_mode_pad(const std::string& target, const std::string& mode, size_t spatial) {
  Converter c;
  c.target = target;
  c.capability = [mode, spatial](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (x.dims.size() != spatial + 1 && x.dims.size() != spatial + 2)
      return "self must have rank " + std::to_string(spatial + 1) + " or " + std::to_string(spatial + 2);
    const std::vector<int64_t> pads = ints_arg(n, "padding");
    if (pads.size() != 2 * spatial) return "padding must hold " + std::to_string(2 * spatial) + " values";
    for (size_t k = 0; k < pads.size(); ++k) {
      const int64_t size = x.dims[x.dims.size() - 1 - k / 2];
      if (size == kDynamic) return "padded dims must be static";
      if (mode == "reflect" && (pads[k] >= size || pads[k] < 0))
        return "reflect padding must be ≥ 0 and smaller than the padded dim";
      if (mode == "replicate" && (pads[k] < 0 || size == 0))
        return "replicate padding must be ≥ 0 on a non-empty dim";
    }
    return x.dtype == DataType::kInt8 ? "int8 is not converted" : "";
  };
  c.convert = [mode](ConversionContext& ctx, const KNode& n) {
    Attributes attrs;
    attrs.set("pads", ints_arg(n, "padding")).set("mode", mode);
    ctx.set_output(n, 0, ctx.add(n, "pad", {ctx.tensor(n, "self")}, attrs).outputs[0]);
  };
  c.limits = "constant padding of static dims";
  register_converter(std::move(c));
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter constant;
  constant.target = "aten.constant_pad_nd.default";
  constant.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    const std::vector<int64_t> pads = ints_arg(n, "pad");
    if (pads.size() % 2 != 0 || pads.size() > 2 * x.dims.size())
      return "pad must hold before/after pairs for ≤ rank dims";
    if (!n.arg("value").is_number()) return "value must be a constant number";
    for (size_t k = 0; k < pads.size(); ++k) {
      if (pads[k] < 0 && x.dims[x.dims.size() - 1 - k / 2] == kDynamic) return "cropping a dynamic dim";
    }
    return x.dtype == DataType::kInt8 ? "int8 is not converted" : "";
  };
  constant.convert = [](ConversionContext& ctx, const KNode& n) {
    Attributes attrs;
    attrs.set("pads", ints_arg(n, "pad"))
        .set("mode", std::string("constant"))
        .set("value", n.arg("value").as_double());
    ctx.set_output(n, 0, ctx.add(n, "pad", {ctx.tensor(n, "self")}, attrs).outputs[0]);
  };
  constant.limits = "constant pads (negative crops a static dim); a number value";
  register_converter(std::move(constant));

  for (size_t spatial = 1; spatial <= 3; ++spatial) {
    const std::string d = std::to_string(spatial) + "d.default";
    register_mode_pad("aten.reflection_pad" + d, "reflect", spatial);
    register_mode_pad("aten.replication_pad" + d, "replicate", spatial);
  }
});

}  // namespace kiln
