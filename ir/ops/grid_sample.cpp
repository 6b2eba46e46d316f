// grid_sample: x [N, C, H_in, W_in], grid [N, H_out, W_out, 2] -> [N, C, H_out, W_out], with the
// semantics of torch.nn.functional.grid_sample on 4-D inputs (aten.grid_sampler_2d). grid[..., 0]
// is the x (width) coordinate and grid[..., 1] the y (height) one, normalized to [-1, 1].
//   mode           bilinear, nearest (round half to even) or bicubic (A = -0.75)
//   padding_mode   zeros (outside samples read 0), border (coordinates clamped to the edge
//                  pixels) or reflection (coordinates reflected at the borders)
//   align_corners  0/1: -1 and 1 are the outer edges of the corner pixels (0) or their centres (1)
// The coordinate arithmetic is torch's, in float32 (kernels/grid_sample_index.h), so nearest
// picks torch's pixels. N, H_in, W_in, H_out and W_out may be dynamic.
#include "ir/ops/grid_sample.h"

#include "ir/error.h"
#include "ir/op_schema.h"

namespace kiln {
namespace {

// The position of `name` in `names`, or a KilnError listing the choices.
int choose(const std::vector<std::string>& names, const std::string& name, const std::string& who,
           const std::string& attr) {
  size_t k = 0;
  while (k < names.size() && names[k] != name) ++k;
  if (k == names.size()) {
    std::string choices;
    for (const std::string& n : names) choices += (choices.empty() ? "" : ", ") + n;
    KILN_FAIL(who << ": unknown " << attr << " '" << name << "': use " << choices);
  }
  return static_cast<int>(k);
}

std::vector<TensorDesc> infer_grid_sample(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const Dims& x = in[0].dims;
  const Dims& grid = in[1].dims;
  KILN_CHECK(x.size() == 4, who << ": input must be 4-D [N, C, H_in, W_in], got " << to_string(x));
  KILN_CHECK(grid.size() == 4, who << ": grid must be 4-D [N, H_out, W_out, 2], got " << to_string(grid));
  KILN_CHECK(is_floating(in[0].dtype),
             who << ": input must be float32, float16 or bfloat16, got " << dtype_name(in[0].dtype));
  KILN_CHECK(in[1].dtype == in[0].dtype, who << ": grid must have the input's dtype "
                                             << dtype_name(in[0].dtype) << ", got "
                                             << dtype_name(in[1].dtype));
  KILN_CHECK(grid[3] == 2 || grid[3] == kDynamic,
             who << ": the last dim of the grid must be 2 (x, y), got " << to_string(grid));
  KILN_CHECK(x[0] == grid[0] || x[0] == kDynamic || grid[0] == kDynamic,
             who << ": input and grid must have the same batch size, got " << to_string(x) << " and "
                 << to_string(grid));
  KILN_CHECK(x[2] != 0 && x[3] != 0,
             who << ": the input's spatial dims must not be empty, got " << to_string(x));
  grid_sample_attrs(layer);
  const int64_t n = x[0] != kDynamic ? x[0] : grid[0];
  return {{in[0].dtype, {n, x[1], grid[1], grid[2]}}};
}

const std::vector<AttrSpec> kGridSampleAttributes = {
    {"mode", AttrType::kString, AttrValue{std::string("bilinear")},
     "bilinear, nearest or bicubic (torch's interpolation_mode 0, 1, 2)"},
    {"padding_mode", AttrType::kString, AttrValue{std::string("zeros")},
     "zeros, border or reflection (torch's padding_mode 0, 1, 2)"},
    {"align_corners", AttrType::kInt, AttrValue{int64_t{0}},
     "0/1: grid values -1 and 1 are the corner pixels' outer edges (0) or centres (1)"},
};

const SchemaRegistration kRegistered{
    {"grid_sample", 2, 2, infer_grid_sample, kGridSampleAttributes},
};

}  // namespace

const std::vector<std::string>& grid_sample_modes() {
  static const std::vector<std::string> names = {"bilinear", "nearest", "bicubic"};
  return names;
}

const std::vector<std::string>& grid_sample_padding_modes() {
  static const std::vector<std::string> names = {"zeros", "border", "reflection"};
  return names;
}

GridSampleAttrs grid_sample_attrs(const Layer& layer) {
  const std::string who = describe(layer);
  GridSampleAttrs a;
  if (layer.attrs.has("mode")) {
    a.mode = static_cast<GridSampleMode>(
        choose(grid_sample_modes(), layer.attrs.get_string("mode", who), who, "mode"));
  }
  if (layer.attrs.has("padding_mode")) {
    a.padding = static_cast<GridSamplePadding>(choose(
        grid_sample_padding_modes(), layer.attrs.get_string("padding_mode", who), who, "padding_mode"));
  }
  const int64_t ac = layer.attrs.get_int("align_corners", int64_t{0});
  KILN_CHECK(ac == 0 || ac == 1, who << ": align_corners must be 0 or 1, got " << ac);
  a.align_corners = ac == 1;
  return a;
}

}  // namespace kiln
