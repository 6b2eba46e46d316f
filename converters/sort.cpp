// Selection along a dim -> the topk op: aten.topk (k largest or smallest, sorted), aten.sort and
// sort.stable (topk with k = the dim's size, largest first when descending). Equal values keep
// their order (lower index first), so sort is stable either way, as torch's stable sort.
#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

std::string selectable(const KGraph& g, const KNode& n) {
  const KValue& x = value_arg(g, n, "self");
  if (x.dims.empty()) return "self must have rank ≥ 1";
  if (!is_floating(x.dtype) && !is_integer(x.dtype))
    return std::string(dtype_name(x.dtype)) + " is not converted";
  const int64_t axis = wrap_axis(int_arg(n, "dim"), x.dims.size());
  if (axis < 0 || axis >= static_cast<int64_t>(x.dims.size())) return "dim is out of range";
  return "";
}

void add_topk(ConversionContext& ctx, const KNode& n, int64_t k, bool largest) {
  TensorId x = ctx.tensor(n, "self");
  const int64_t axis = wrap_axis(int_arg(n, "dim"), ctx.net().tensor(x).dims.size());
  Attributes attrs;
  attrs.set("k", k).set("axis", axis).set("largest", int64_t{largest});
  const std::vector<TensorId> outs = ctx.add(n, "topk", {x}, attrs).outputs;
  ctx.set_output(n, 0, outs[0]);
  ctx.set_output(n, 1, outs[1]);
}

void register_sort(const std::string& target) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    std::string r = selectable(g, n);
    if (!r.empty()) return r;
    const KValue& x = value_arg(g, n, "self");
    if (x.dims[wrap_axis(int_arg(n, "dim"), x.dims.size())] == kDynamic) return "sorting a dynamic dim";
    bool_arg(n, "descending");
    return "";
  };
  c.convert = [](ConversionContext& ctx, const KNode& n) {
    const KValue& x = ctx.graph().value(n.arg("self").value);
    add_topk(ctx, n, x.dims[wrap_axis(int_arg(n, "dim"), x.dims.size())], bool_arg(n, "descending"));
  };
  c.limits = "a static dim; stable (equal values keep their order); CUDA: dims up to 4096";
  register_converter(std::move(c));
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter topk;
  topk.target = "aten.topk.default";
  topk.capability = [](const KGraph& g, const KNode& n) -> std::string {
    std::string r = selectable(g, n);
    if (!r.empty()) return r;
    if (n.arg("k").kind != Arg::Kind::kInt) return "k must be a constant int";
    bool_arg(n, "sorted");  // sorted=False allows any order; sorted results are one of them
    return "";
  };
  topk.convert = [](ConversionContext& ctx, const KNode& n) {
    add_topk(ctx, n, int_arg(n, "k"), bool_arg(n, "largest"));
  };
  topk.limits = "a constant k; results always sorted (ties: lower index first); CUDA: dims up to 4096";
  register_converter(std::move(topk));

  register_sort("aten.sort.default");
  register_sort("aten.sort.stable");
});

}  // namespace kiln
