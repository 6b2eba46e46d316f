// roi_align: x [N, C, H, W], rois [K, 5] -> [K, C, pooled_height, pooled_width], with the
// semantics of torchvision.ops.roi_align (torchvision.roi_align): each row of rois is
// (batch index, x1, y1, x2, y2) in input coordinates before spatial_scale; each output bin is the
// mean of a grid of bilinear samples inside its part of the box.
//   spatial_scale   box coordinates times this are the input's pixel coordinates
//   pooled_height, pooled_width   the output bins per box
//   sampling_ratio  samples per bin side; <= 0: ceil(box height / pooled_height) (and width), per box
//   aligned         0/1: 1 shifts the box by -0.5 pixel (pixel centres), 0 makes it at least 1 x 1
// The sample coordinates are torchvision's arithmetic in float32 (kernels/roi_align_sample.h).
// N, H, W and K may be dynamic (K is the number of boxes a detector kept).
#include "ir/ops/roi_align.h"

#include "ir/error.h"
#include "ir/op_schema.h"

namespace kiln {
namespace {

std::vector<TensorDesc> infer_roi_align(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const Dims& x = in[0].dims;
  const Dims& rois = in[1].dims;
  KILN_CHECK(x.size() == 4, who << ": input must be 4-D [N, C, H, W], got " << to_string(x));
  KILN_CHECK(rois.size() == 2, who << ": rois must be 2-D [K, 5], got " << to_string(rois));
  KILN_CHECK(is_floating(in[0].dtype),
             who << ": input must be float32, float16 or bfloat16, got " << dtype_name(in[0].dtype));
  KILN_CHECK(in[1].dtype == in[0].dtype, who << ": rois must have the input's dtype "
                                             << dtype_name(in[0].dtype) << ", got "
                                             << dtype_name(in[1].dtype));
  KILN_CHECK(rois[1] == 5 || rois[1] == kDynamic,
             who << ": rois rows must be (batch index, x1, y1, x2, y2), 5 values, got " << to_string(rois));
  const RoiAlignAttrs a = roi_align_attrs(layer);
  return {{in[0].dtype, {rois[0], x[1], a.pooled_height, a.pooled_width}}};
}

const std::vector<AttrSpec> kRoiAlignAttributes = {
    {"spatial_scale", AttrType::kFloat, AttrValue{1.0}, "box coordinates times this are pixel coordinates"},
    {"pooled_height", AttrType::kInt, std::nullopt, "output bins per box, vertically (>= 1)"},
    {"pooled_width", AttrType::kInt, std::nullopt, "output bins per box, horizontally (>= 1)"},
    {"sampling_ratio", AttrType::kInt, AttrValue{int64_t{-1}},
     "samples per bin side; <= 0: ceil(box side / bins), per box"},
    {"aligned", AttrType::kInt, AttrValue{int64_t{0}}, "0/1: 1 shifts boxes by -0.5 pixel (pixel centres)"},
};

const SchemaRegistration kRegistered{
    {"roi_align", 2, 2, infer_roi_align, kRoiAlignAttributes},
};

}  // namespace

RoiAlignAttrs roi_align_attrs(const Layer& layer) {
  const std::string who = describe(layer);
  RoiAlignAttrs a;
  a.spatial_scale = layer.attrs.get_float("spatial_scale", 1.0);
  a.pooled_height = layer.attrs.get_int("pooled_height", who);
  a.pooled_width = layer.attrs.get_int("pooled_width", who);
  a.sampling_ratio = layer.attrs.get_int("sampling_ratio", int64_t{-1});
  const int64_t aligned = layer.attrs.get_int("aligned", int64_t{0});
  KILN_CHECK(a.pooled_height >= 1 && a.pooled_width >= 1,
             who << ": pooled_height and pooled_width must be >= 1, got " << a.pooled_height << " and "
                 << a.pooled_width);
  KILN_CHECK(aligned == 0 || aligned == 1, who << ": aligned must be 0 or 1, got " << aligned);
  a.aligned = aligned == 1;
  return a;
}

}  // namespace kiln
