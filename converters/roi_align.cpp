// torchvision.roi_align.default (torchvision.ops.roi_align, the pooler of Faster/Mask R-CNN's box
// and mask heads) -> roi_align. The boxes come as a [K, 5] tensor (batch index, x1, y1, x2, y2),
// K often data-dependent (the boxes a detector kept): a dynamic dim. spatial_scale, the pooled
// size, sampling_ratio and aligned must be constants.
#include "ir/ops/roi_align.h"
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

Attributes roi_align_attributes(const KNode& n) {
  const Arg& scale = n.arg("spatial_scale");
  KILN_CHECK(scale.is_number(),
             "argument 'spatial_scale' must be a constant number, got " << scale.describe());
  const int64_t ph = int_arg(n, "pooled_height"), pw = int_arg(n, "pooled_width");
  KILN_CHECK(ph >= 1 && pw >= 1, "the pooled size must be at least 1 x 1, got " << ph << " x " << pw);
  Attributes attrs;
  attrs.set("spatial_scale", scale.as_double())
      .set("pooled_height", ph)
      .set("pooled_width", pw)
      .set("sampling_ratio", int_arg(n, "sampling_ratio"))
      .set("aligned", int64_t{bool_arg(n, "aligned")});
  return attrs;
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter c;
  c.target = "torchvision.roi_align.default";
  c.dynamic_shapes = true;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "input");
    const KValue& rois = value_arg(g, n, "rois");
    if (x.dims.size() != 4) return "input must be 4-D (N, C, H, W)";
    if (rois.dims.size() != 2) return "rois must be a [K, 5] tensor (the list-of-boxes form runs in PyTorch)";
    std::string r = require_floating(x, "input");
    if (!r.empty()) return r;
    if (rois.dtype != x.dtype) return "rois must have the input's dtype";
    roi_align_attributes(n);
    return "";
  };
  c.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId y =
        ctx.add(n, "roi_align", {ctx.tensor(n, "input"), ctx.tensor(n, "rois")}, roi_align_attributes(n))
            .outputs[0];
    ctx.set_output(n, 0, y);
  };
  c.limits =
      "rois a [K, 5] tensor of the input's dtype; constant spatial_scale, pooled size, sampling_ratio, "
      "aligned";
  register_converter(std::move(c));
});

}  // namespace kiln
