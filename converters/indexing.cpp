// Indexing: aten.embedding -> embedding; aten.slice.Tensor -> slice.
#include <limits>

#include "converters/converter_util.h"
#include "converters/families.h"

namespace kiln {
namespace {

// A slice bound: an int, or None (the start or the end of the dim).
int64_t bound(const KNode& n, const std::string& name, int64_t none) {
  const Arg& a = n.arg(name);
  return a.is_none() ? none : int_arg(n, name);
}

}  // namespace

void register_indexing_converters() {
  Converter embedding;
  embedding.target = "aten.embedding.default";
  embedding.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& weight = value_arg(g, n, "weight");
    const KValue& indices = value_arg(g, n, "indices");
    if (weight.dims.size() != 2) return "weight must be 2-D";
    if (indices.dtype != DataType::kInt32 && indices.dtype != DataType::kInt64)
      return "indices must be int32/int64";
    return "";
  };
  embedding.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId out = ctx.add(n, "embedding", {ctx.tensor(n, "weight"), ctx.tensor(n, "indices")}).outputs[0];
    ctx.set_output(n, 0, out);
  };
  embedding.limits = "2-D weight; padding_idx ignored (inference); out-of-range indices read 0 on CUDA";
  register_converter(std::move(embedding));

  Converter slice;
  slice.target = "aten.slice.Tensor";
  slice.capability = [](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    int_arg(n, "dim");
    bound(n, "start", 0);
    bound(n, "end", 0);
    if (int_arg(n, "step") < 1) return "step must be at least 1";
    return "";
  };
  slice.convert = [](ConversionContext& ctx, const KNode& n) {
    Attributes attrs;
    attrs.set("axes", std::vector<int64_t>{int_arg(n, "dim")})
        .set("starts", std::vector<int64_t>{bound(n, "start", 0)})
        .set("ends", std::vector<int64_t>{bound(n, "end", std::numeric_limits<int64_t>::max())})
        .set("steps", std::vector<int64_t>{int_arg(n, "step")});
    ctx.set_output(n, 0, ctx.add(n, "slice", {ctx.tensor(n, "self")}, attrs).outputs[0]);
  };
  slice.limits = "constant start, end and step (step ≥ 1)";
  register_converter(std::move(slice));
}

}  // namespace kiln
