// aten.convolution -> convolution / deconvolution layers.
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter c;
  c.target = "aten.convolution.default";
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "input");
    if (x.dims.size() < 3 || x.dims.size() > 5) return "input rank must be 3 to 5 (1d/2d/3d convolution)";
    if (x.dims[1] < 0) return "the channel dim must be static";
    if (!value_arg(g, n, "weight").is_constant() && !is_static(value_arg(g, n, "weight").dims)) {
      return "weight must have a static shape";
    }
    ints_arg(n, "stride");
    ints_arg(n, "padding");
    ints_arg(n, "dilation");
    int_arg(n, "groups");
    if (bool_arg(n, "transposed")) ints_arg(n, "output_padding");
    return require_floating(x, "input");
  };
  c.convert = [](ConversionContext& ctx, const KNode& n) {
    std::vector<TensorId> inputs = {ctx.tensor(n, "input"), ctx.tensor(n, "weight")};
    if (!n.arg("bias").is_none()) inputs.push_back(ctx.tensor(n, "bias"));
    Attributes attrs;
    attrs.set("strides", ints_arg(n, "stride"))
        .set("pads", ints_arg(n, "padding"))
        .set("dilations", ints_arg(n, "dilation"))
        .set("groups", int_arg(n, "groups"));
    const bool transposed = bool_arg(n, "transposed");
    if (transposed) attrs.set("output_padding", ints_arg(n, "output_padding"));
    ctx.set_output(n, 0, ctx.add(n, transposed ? "deconvolution" : "convolution", inputs, attrs).outputs[0]);
  };
  c.limits = "1d/2d/3d, transposed too; static channel dim; floating dtypes";
  register_converter(std::move(c));
});

}  // namespace kiln
