// Indexing: aten.embedding -> embedding; aten.slice.Tensor -> slice (constant bounds) or gather
// with an arange (symbolic bounds); aten.select.int -> gather (0-d index); aten.gather ->
// gather_elements; aten.index.Tensor (integer index tensors, None entries allowed) -> transpose +
// gather, or flatten + gather of the linear index; aten.cumsum -> cumsum.
//
// Out-of-range indices behave as in torch, never as another element: embedding and gather
// refuse negative ones (embedding never wraps, gather_elements gets wrap = 0), index and select
// wrap each index once and no more (docs/ops.md, "Out-of-range indices").
//
// Index arithmetic stays int64 (the engine's gather/arange/elementwise take int64), so no index
// is narrowed; symbolic sizes become tracked 0-d int64 tensors.
#include <algorithm>
#include <limits>

#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// A slice bound: an int, or None (the start or the end of the dim).
int64_t bound(const KNode& n, const std::string& name, int64_t none) {
  const Arg& a = n.arg(name);
  return a.is_none() ? none : int_arg(n, name);
}

bool is_symbolic(const KGraph& g, const Arg& a) { return a.is_value() && g.value(a.value).host_scalar; }

// i < 0 ? i + size : i, computed as i + size * int64(i < 0) so tracked values follow.
TensorId wrap_index(ConversionContext& ctx, const KNode& n, TensorId i, TensorId size,
                    const std::string& tag) {
  TensorId zero = ctx.constant_i64(n, {0}, {}, tag + "_zero");
  TensorId negative = binary(ctx, n, "lt", i, zero, tag + "_neg");
  negative = cast_to(ctx, n, negative, DataType::kInt64, tag + "_neg_i64");
  return binary(ctx, n, "add", i, binary(ctx, n, "mul", size, negative, tag + "_shift"), tag);
}

// A slice bound as a 0-d int64 tensor, wrapped and clamped to [0, size] as torch does.
TensorId bound_tensor(ConversionContext& ctx, const KNode& n, const std::string& name, int64_t none,
                      TensorId size) {
  const Arg& a = n.arg(name);
  if (a.is_none()) return none == 0 ? ctx.constant_i64(n, {0}, {}, name) : size;
  TensorId v = a.is_value() ? ctx.tensor(a.value) : ctx.constant_i64(n, {int_arg(n, name)}, {}, name);
  v = cast_to(ctx, n, v, DataType::kInt64, name + "_i64");
  v = wrap_index(ctx, n, v, size, name + "_wrapped");
  v = binary(ctx, n, "max", v, ctx.constant_i64(n, {0}, {}, name + "_lo"), name + "_min0");
  return binary(ctx, n, "min", v, size, name + "_clamped");
}

// x[i0, ..., ik-1] for integer index tensors on x's leading dims. torch wraps each index once
// (-size <= i < size) and raises for any other. One index tensor: a gather that wraps. Several:
// flatten(x, 0, k-1)[sum_j wrap(ij) * stride_j], stride_j = prod(D_j+1..D_k-1), the index tensors
// broadcasting against each other in the elementwise ops. A component out of range could still
// land on a valid flat position, so such positions become -1 and the gather does not wrap: it
// refuses them (reference backend) or writes NaN (CUDA) instead of returning another element.
TensorId index_leading(ConversionContext& ctx, const KNode& n, TensorId x,
                       const std::vector<TensorId>& indices, const std::string& tag) {
  const size_t k = indices.size();
  if (k == 1) {
    TensorId i = cast_to(ctx, n, indices[0], DataType::kInt64, "i0_i64");
    return ctx.add(n, "gather", {x, i}, Attributes().set("axis", int64_t{0}), tag).outputs[0];
  }
  TensorId linear = -1, stride = -1, valid = -1;
  TensorId zero = ctx.constant_i64(n, {0}, {}, "zero");
  for (size_t j = k; j-- > 0;) {
    const std::string t = "i" + std::to_string(j);
    TensorId size = dim_size(ctx, n, x, static_cast<int64_t>(j), t + "_size");
    TensorId i = cast_to(ctx, n, indices[j], DataType::kInt64, t + "_i64");
    i = wrap_index(ctx, n, i, size, t + "_wrapped");
    // 0 <= i < size after the wrap
    TensorId ok = binary(ctx, n, "and", binary(ctx, n, "ge", i, zero, t + "_ge0"),
                         binary(ctx, n, "lt", i, size, t + "_lt_size"), t + "_in_range");
    valid = valid < 0 ? ok : binary(ctx, n, "and", valid, ok, t + "_all_in_range");
    if (stride >= 0) i = binary(ctx, n, "mul", i, stride, t + "_scaled");
    linear = linear < 0 ? i : binary(ctx, n, "add", linear, i, t + "_sum");
    if (j > 0) stride = stride < 0 ? size : binary(ctx, n, "mul", stride, size, t + "_stride");
  }
  TensorId outside = ctx.constant_i64(n, {-1}, {}, "out_of_range");
  linear = ctx.add(n, "where", {valid, linear, outside}, {}, "checked").outputs[0];
  Attributes flat;
  flat.set("start_dim", int64_t{0}).set("end_dim", static_cast<int64_t>(k - 1));
  x = ctx.add(n, "flatten", {x}, flat, "flatten").outputs[0];
  Attributes attrs;
  attrs.set("axis", int64_t{0}).set("wrap", int64_t{0});
  return ctx.add(n, "gather", {x, linear}, attrs, tag).outputs[0];
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
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
  embedding.limits =
      "2-D weight; padding_idx ignored (inference); an index < 0 or ≥ num_embeddings raises on the reference "
      "backend and gives a NaN row on CUDA";
  register_converter(std::move(embedding));

  Converter slice;
  slice.target = "aten.slice.Tensor";
  slice.capability = [](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    int_arg(n, "dim");
    for (const char* name : {"start", "end"}) {
      if (!is_symbolic(g, n.arg(name))) bound(n, name, 0);
    }
    if (int_arg(n, "step") < 1) return "step must be at least 1";
    return "";
  };
  slice.convert = [](ConversionContext& ctx, const KNode& n) {
    if (is_symbolic(ctx.graph(), n.arg("start")) || is_symbolic(ctx.graph(), n.arg("end"))) {
      // x.index_select(dim, arange(start, end, step)): the engine's slice takes constant bounds.
      TensorId x = ctx.tensor(n, "self");
      const int64_t axis = wrap_axis(int_arg(n, "dim"), ctx.net().tensor(x).dims.size());
      TensorId size = dim_size(ctx, n, x, axis, "size");
      TensorId start = bound_tensor(ctx, n, "start", 0, size);
      TensorId end = bound_tensor(ctx, n, "end", std::numeric_limits<int64_t>::max(), size);
      const int64_t step = int_arg(n, "step");
      // count = max(0, ceil((end - start) / step)); index = start + step * arange(count)
      TensorId count = binary(ctx, n, "sub", end, start, "span");
      if (step > 1) {
        count = binary(ctx, n, "add", count, ctx.constant_i64(n, {step - 1}, {}, "round_up"), "span_up");
        count = binary(ctx, n, "floor_div", count, ctx.constant_i64(n, {step}, {}, "step"), "count");
      }
      count = binary(ctx, n, "max", count, ctx.constant_i64(n, {0}, {}, "zero"), "count_pos");
      TensorId index = ctx.add(n, "arange", {count}, {}, "arange").outputs[0];
      if (step > 1)
        index = binary(ctx, n, "mul", index, ctx.constant_i64(n, {step}, {}, "stride"), "stepped");
      index = binary(ctx, n, "add", index, start, "index");
      ctx.set_output(n, 0, ctx.add(n, "gather", {x, index}, Attributes().set("axis", axis)).outputs[0]);
      return;
    }
    Attributes attrs;
    attrs.set("axes", std::vector<int64_t>{int_arg(n, "dim")})
        .set("starts", std::vector<int64_t>{bound(n, "start", 0)})
        .set("ends", std::vector<int64_t>{bound(n, "end", std::numeric_limits<int64_t>::max())})
        .set("steps", std::vector<int64_t>{int_arg(n, "step")});
    ctx.set_output(n, 0, ctx.add(n, "slice", {ctx.tensor(n, "self")}, attrs).outputs[0]);
  };
  slice.limits = "constant step ≥ 1; constant start/end, or symbolic ones (then a gather of an arange)";
  register_converter(std::move(slice));

  Converter select;
  select.target = "aten.select.int";
  select.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (x.dims.empty()) return "self must have rank ≥ 1";
    int_arg(n, "dim");
    int_arg(n, "index");
    return "";
  };
  select.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const Dims& dims = ctx.net().tensor(x).dims;
    const int64_t axis = wrap_axis(int_arg(n, "dim"), dims.size());
    int64_t i = int_arg(n, "index");
    TensorId index;
    if (i >= 0 || dims[axis] != kDynamic) {
      index = ctx.constant_i64(n, {i < 0 ? i + dims[axis] : i}, {}, "index");
    } else {
      index = binary(ctx, n, "add", ctx.constant_i64(n, {i}, {}, "index"), dim_size(ctx, n, x, axis, "size"),
                     "wrapped");
    }
    // The index is wrapped here already: a second wrap in the gather would hide one below -size.
    Attributes attrs;
    attrs.set("axis", axis).set("wrap", int64_t{0});
    ctx.set_output(n, 0, ctx.add(n, "gather", {x, index}, attrs).outputs[0]);
  };
  select.limits = "a constant index (negative wraps)";
  register_converter(std::move(select));

  Converter gather;
  gather.target = "aten.gather.default";
  gather.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    const KValue& index = value_arg(g, n, "index");
    if (index.dtype != DataType::kInt32 && index.dtype != DataType::kInt64)
      return "index must be int32/int64";
    if (index.dims.size() != x.dims.size()) return "index and self differ in rank";
    const int64_t axis = wrap_axis(int_arg(n, "dim"), x.dims.size());
    for (size_t d = 0; d < x.dims.size(); ++d) {
      if (static_cast<int64_t>(d) == axis) continue;
      const bool dynamic = x.dims[d] == kDynamic || index.dims[d] == kDynamic;
      if (dynamic ? x.dims[d] != index.dims[d] : index.dims[d] > x.dims[d])
        return "index dim " + std::to_string(d) + " must match self's (or be a smaller static size)";
    }
    return "";
  };
  gather.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    TensorId index = ctx.tensor(n, "index");
    const Dims xd = ctx.net().tensor(x).dims;
    const Dims id = ctx.net().tensor(index).dims;
    const int64_t axis = wrap_axis(int_arg(n, "dim"), xd.size());
    // torch lets index be smaller than self outside the axis: cut self to index's extent there.
    std::vector<int64_t> axes, starts, ends;
    for (size_t d = 0; d < xd.size(); ++d) {
      if (static_cast<int64_t>(d) != axis && id[d] != kDynamic && id[d] < xd[d]) {
        axes.push_back(static_cast<int64_t>(d));
        starts.push_back(0);
        ends.push_back(id[d]);
      }
    }
    if (!axes.empty()) {
      Attributes attrs;
      attrs.set("axes", axes).set("starts", starts).set("ends", ends);
      x = ctx.add(n, "slice", {x}, attrs, "cut").outputs[0];
    }
    // torch.gather refuses negative indices (no wrap), unlike ONNX GatherElements.
    Attributes attrs;
    attrs.set("axis", axis).set("wrap", int64_t{0});
    ctx.set_output(n, 0, ctx.add(n, "gather_elements", {x, index}, attrs).outputs[0]);
  };
  gather.limits =
      "int32/int64 index of self's rank; outside dim, index dims equal self's or are smaller static sizes";
  register_converter(std::move(gather));

  Converter index;
  index.target = "aten.index.Tensor";
  index.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    const Arg& indices = n.arg("indices");
    if (indices.kind != Arg::Kind::kList || indices.list.empty()) return "indices must be a non-empty list";
    if (indices.list.size() > x.dims.size()) return "more indices than dims";
    bool any = false;
    for (const Arg& i : indices.list) {
      if (i.is_none()) continue;
      if (!i.is_value()) return "index entries must be tensors or None";
      const DataType t = g.value(i.value).dtype;
      if (t == DataType::kBool) return "bool mask indices (a data-dependent shape) are not converted";
      if (t != DataType::kInt32 && t != DataType::kInt64) return "only integer index tensors are converted";
      any = true;
    }
    if (!any) return "no index tensor";
    return "";
  };
  index.convert = [](ConversionContext& ctx, const KNode& n) {
    // torch's advanced indexing: the indexed dims (the non-None entries) are moved to the front,
    // indexed there (index_leading), and the broadcast index dims moved back to where the first
    // indexed dim was when the indexed dims are adjacent (torch puts them first otherwise).
    TensorId x = ctx.tensor(n, "self");
    const auto& list = n.arg("indices").list;
    const int64_t rank = static_cast<int64_t>(ctx.net().tensor(x).dims.size());
    std::vector<int64_t> indexed, others;
    std::vector<TensorId> tensors;
    size_t broadcast_rank = 0;
    for (int64_t d = 0; d < rank; ++d) {
      const bool is_index = d < static_cast<int64_t>(list.size()) && !list[d].is_none();
      (is_index ? indexed : others).push_back(d);
      if (is_index) {
        tensors.push_back(ctx.tensor(list[d].value));
        broadcast_rank = std::max(broadcast_rank, ctx.net().tensor(tensors.back()).dims.size());
      }
    }
    const bool adjacent = indexed.back() - indexed.front() + 1 == static_cast<int64_t>(indexed.size());
    const bool leading = indexed.front() == 0 && adjacent;
    if (!leading) {
      std::vector<int64_t> perm = indexed;
      perm.insert(perm.end(), others.begin(), others.end());
      x = ctx.add(n, "transpose", {x}, Attributes().set("perm", perm), "indexed_first").outputs[0];
    }
    TensorId y = index_leading(ctx, n, x, tensors, leading ? "" : "gathered");
    if (!leading && adjacent) {  // [B..., others...] -> [others before, B..., others after]
      const int64_t b = static_cast<int64_t>(broadcast_rank), before = indexed.front();
      const int64_t after = static_cast<int64_t>(others.size()) - before;
      std::vector<int64_t> perm;
      for (int64_t j = 0; j < before; ++j) perm.push_back(b + j);
      for (int64_t j = 0; j < b; ++j) perm.push_back(j);
      for (int64_t j = 0; j < after; ++j) perm.push_back(b + before + j);
      y = ctx.add(n, "transpose", {y}, Attributes().set("perm", perm)).outputs[0];
    } else if (!leading) {
      y = ctx.add(n, "identity", {y}).outputs[0];
    }
    ctx.set_output(n, 0, y);
  };
  index.limits =
      "integer index tensors, None entries allowed (torch's placement of the index dims); no bool masks";
  register_converter(std::move(index));

  Converter cumsum;
  cumsum.target = "aten.cumsum.default";
  cumsum.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (x.dims.empty()) return "self must have rank ≥ 1";
    int_arg(n, "dim");
    if (n.outputs.at(0) != kNoValue && g.value(n.outputs[0]).dtype == DataType::kInt8)
      return "int8 is not converted";
    return "";
  };
  cumsum.convert = [](ConversionContext& ctx, const KNode& n) {
    // torch: the dtype argument, else int64 for integer/bool input, else the input's dtype.
    if (n.outputs.at(0) == kNoValue) return;
    const DataType out = ctx.graph().value(n.outputs[0]).dtype;
    TensorId x = ctx.tensor(n, "self");
    x = cast_to(ctx, n, x, out, "cast");
    const int64_t axis = wrap_axis(int_arg(n, "dim"), ctx.net().tensor(x).dims.size());
    ctx.set_output(n, 0, ctx.add(n, "cumsum", {x}, Attributes().set("axis", axis)).outputs[0]);
  };
  cumsum.limits = "constant dim; bool/integer input accumulates in int64 (torch's result dtype)";
  register_converter(std::move(cumsum));
});

}  // namespace kiln
