// aten.grid_sampler_2d.default (torch.nn.functional.grid_sample on 4-D inputs) -> grid_sample.
// torch passes the modes as ints (interpolation_mode 0/1/2: bilinear, nearest, bicubic;
// padding_mode 0/1/2: zeros, border, reflection), the indices of the engine op's name lists.
// They and align_corners must be constants: a node computing them runs in PyTorch.
#include "ir/ops/grid_sample.h"
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// Name `names[index]` of a constant int argument; throws with the argument's name otherwise.
std::string named_choice(const KNode& n, const std::string& arg, const std::vector<std::string>& names) {
  const Arg& a = n.arg(arg);
  KILN_CHECK(a.kind == Arg::Kind::kInt,
             "argument '" << arg << "' must be a constant int (computed modes run in PyTorch), got "
                          << a.describe());
  KILN_CHECK(a.i >= 0 && a.i < static_cast<int64_t>(names.size()),
             "argument '" << arg << "' must be 0 to " << names.size() - 1 << ", got " << a.i);
  return names[static_cast<size_t>(a.i)];
}

Attributes grid_sample_attributes(const KNode& n) {
  Attributes attrs;
  attrs.set("mode", named_choice(n, "interpolation_mode", grid_sample_modes()))
      .set("padding_mode", named_choice(n, "padding_mode", grid_sample_padding_modes()))
      .set("align_corners", int64_t{bool_arg(n, "align_corners")});
  return attrs;
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter c;
  c.target = "aten.grid_sampler_2d.default";
  c.dynamic_shapes = true;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "input");
    const KValue& grid = value_arg(g, n, "grid");
    if (x.dims.size() != 4) return "input must be 4-D (N, C, H, W)";
    if (grid.dims.size() != 4) return "grid must be 4-D (N, H_out, W_out, 2)";
    std::string r = require_floating(x, "input");
    if (!r.empty()) return r;
    if (grid.dtype != x.dtype) return "grid must have the input's dtype";
    grid_sample_attributes(n);
    return "";
  };
  c.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId y =
        ctx.add(n, "grid_sample", {ctx.tensor(n, "input"), ctx.tensor(n, "grid")}, grid_sample_attributes(n))
            .outputs[0];
    ctx.set_output(n, 0, y);
  };
  c.limits =
      "constant interpolation_mode, padding_mode and align_corners; input and grid of one floating dtype";
  register_converter(std::move(c));
});

}  // namespace kiln
