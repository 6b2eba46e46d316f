// dtype conversion: aten._to_copy (a dtype change, or none, on the same device) -> cast / identity;
// aten.scalar_tensor -> a rank-0 constant.
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter to_copy;
  to_copy.target = "aten._to_copy.default";
  to_copy.capability = [](const KGraph& g, const KNode& n) -> std::string {
    // A device change of a constant, or of a value computed from constants alone (a CPU counter
    // a transformers cache keeps, cloned and moved to the GPU), moves nothing in an engine: its
    // constants live on the engine's device.
    if (!n.arg("device").is_none() && !g.from_constants_only(value_arg(g, n, "self").id))
      return "a device change is not converted";
    if (const Arg* layout = n.find("layout"); layout && !layout->is_none() && layout->s != "torch.strided")
      return "layout " + layout->describe() + " is not converted";
    const Arg& dtype = n.arg("dtype");
    if (!dtype.is_none()) parse_dtype(dtype.s);
    return "";
  };
  to_copy.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const Arg& dtype = n.arg("dtype");
    Layer& l = dtype.is_none() ? ctx.add(n, "identity", {x})
                               : ctx.add(n, "cast", {x}, Attributes().set("to", dtype.s));
    ctx.set_output(n, 0, l.outputs[0]);
  };
  to_copy.limits =
      "dtype changes; memory_format ignored; a device argument only when it is the input's own device (the "
      "frontend drops it then) or the input is computed from constants alone";
  register_converter(std::move(to_copy));

  Converter scalar;
  scalar.target = "aten.scalar_tensor.default";
  scalar.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (!n.arg("s").is_number()) return "the value must be a constant number";
    const Arg& dtype = n.arg("dtype");
    if (dtype.is_none()) return "needs a dtype";
    parse_dtype(dtype.s);
    return "";
  };
  scalar.convert = [](ConversionContext& ctx, const KNode& n) {
    ctx.set_output(n, 0, ctx.scalar_or_tensor(n, "s", parse_dtype(n.arg("dtype").s)));
  };
  scalar.limits = "a constant number with a dtype";
  register_converter(std::move(scalar));
});

}  // namespace kiln
