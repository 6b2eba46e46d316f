// aten.scaled_dot_product_attention -> attention (kept out of the decompositions because a
// converter exists, see py/kiln/compiler.py).
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter c;
  c.target = "aten.scaled_dot_product_attention.default";
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (n.arg("dropout_p").as_double() != 0.0) return "dropout_p must be 0 (inference)";
    if (bool_arg(n, "is_causal") && !n.arg("attn_mask").is_none())
      return "is_causal with a mask is not supported";
    const KValue& q = value_arg(g, n, "query");
    if (q.dims.size() < 3) return "query must have rank ≥ 3";
    if (!n.arg("scale").is_none()) n.arg("scale").as_double();
    return require_floating(q, "query");
  };
  c.convert = [](ConversionContext& ctx, const KNode& n) {
    std::vector<TensorId> inputs = {ctx.tensor(n, "query"), ctx.tensor(n, "key"), ctx.tensor(n, "value")};
    if (!n.arg("attn_mask").is_none()) inputs.push_back(ctx.tensor(n, "attn_mask"));
    Attributes attrs;
    attrs.set("causal", int64_t{bool_arg(n, "is_causal")});
    if (!n.arg("scale").is_none()) attrs.set("scale", n.arg("scale").as_double());
    ctx.set_output(n, 0, ctx.add(n, "attention", inputs, attrs).outputs[0]);
  };
  c.limits = "dropout_p = 0; bool or additive mask, or is_causal; equal batch dims; D ≤ 256 on CUDA";
  register_converter(std::move(c));
});

}  // namespace kiln
