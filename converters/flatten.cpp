// aten.flatten.using_ints: one flatten layer (dynamic dims inside the flattened range stay
// dynamic). TorchScript graphs hold it as written; torch.export keeps it too now that a converter
// takes it whole (compiler.py drops ops with converters from its decomposition table).
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter c;
  c.target = "aten.flatten.using_ints";
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    int_arg(n, "start_dim");
    int_arg(n, "end_dim");
    return "";
  };
  c.convert = [](ConversionContext& ctx, const KNode& n) {
    Attributes attrs =
        Attributes().set("start_dim", int_arg(n, "start_dim")).set("end_dim", int_arg(n, "end_dim"));
    ctx.set_output(n, 0, ctx.add(n, "flatten", {ctx.tensor(n, "self")}, attrs).outputs[0]);
  };
  c.limits = "constant start_dim/end_dim";
  register_converter(std::move(c));
});

}  // namespace kiln
