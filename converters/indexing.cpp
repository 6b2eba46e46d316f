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

// The flat position in x's leading k dims of each broadcast index (index_leading's linear index,
// -1 where a component is out of range), for index_put.
TensorId linear_index(ConversionContext& ctx, const KNode& n, TensorId x,
                      const std::vector<TensorId>& indices) {
  const size_t k = indices.size();
  TensorId linear = -1, stride = -1, valid = -1;
  TensorId zero = ctx.constant_i64(n, {0}, {}, "zero");
  for (size_t j = k; j-- > 0;) {
    const std::string t = "i" + std::to_string(j);
    TensorId size = dim_size(ctx, n, x, static_cast<int64_t>(j), t + "_size");
    TensorId i = cast_to(ctx, n, indices[j], DataType::kInt64, t + "_i64");
    i = wrap_index(ctx, n, i, size, t + "_wrapped");
    TensorId ok = binary(ctx, n, "and", binary(ctx, n, "ge", i, zero, t + "_ge0"),
                         binary(ctx, n, "lt", i, size, t + "_lt_size"), t + "_in_range");
    valid = valid < 0 ? ok : binary(ctx, n, "and", valid, ok, t + "_all_in_range");
    if (stride >= 0) i = binary(ctx, n, "mul", i, stride, t + "_scaled");
    linear = linear < 0 ? i : binary(ctx, n, "add", linear, i, t + "_sum");
    if (j > 0) stride = stride < 0 ? size : binary(ctx, n, "mul", stride, size, t + "_stride");
  }
  TensorId outside = ctx.constant_i64(n, {-1}, {}, "out_of_range");
  return ctx.add(n, "where", {valid, linear, outside}, {}, "checked").outputs[0];
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
  TensorId linear = linear_index(ctx, n, x, indices);
  Attributes flat;
  flat.set("start_dim", int64_t{0}).set("end_dim", static_cast<int64_t>(k - 1));
  x = ctx.add(n, "flatten", {x}, flat, "flatten").outputs[0];
  Attributes attrs;
  attrs.set("axis", int64_t{0}).set("wrap", int64_t{0});
  return ctx.add(n, "gather", {x, linear}, attrs, tag).outputs[0];
}

// torch's advanced indexing (x[indices], x[indices] = v): the indexed dims (the non-None entries)
// are moved to the front and indexed there; the broadcast index dims B go back to where the first
// indexed dim was when the indexed dims are adjacent (torch puts them first otherwise).
struct AdvancedIndex {
  std::vector<int64_t> indexed, others;  // dims of x
  std::vector<TensorId> tensors;         // one per indexed dim
  int64_t broadcast_rank = 0;            // rank of B
  bool adjacent = false, leading = false;

  // x's dims with the indexed ones first.
  std::vector<int64_t> perm() const {
    std::vector<int64_t> p = indexed;
    p.insert(p.end(), others.begin(), others.end());
    return p;
  }
  // Adjacent indexed dims: the permutation from [B..., others...] to torch's order
  // [others before, B..., others after], or back (`inverse`).
  std::vector<int64_t> torch_order(bool inverse) const {
    const int64_t b = broadcast_rank, before = indexed.front();
    const int64_t after = static_cast<int64_t>(others.size()) - before;
    std::vector<int64_t> p;
    if (!inverse) {
      for (int64_t j = 0; j < before; ++j) p.push_back(b + j);
      for (int64_t j = 0; j < b; ++j) p.push_back(j);
    } else {
      for (int64_t j = 0; j < b; ++j) p.push_back(before + j);
      for (int64_t j = 0; j < before; ++j) p.push_back(j);
    }
    for (int64_t j = 0; j < after; ++j) p.push_back(b + before + j);
    return p;
  }
};

AdvancedIndex advanced_index(ConversionContext& ctx, const KNode& n, TensorId x) {
  const auto& list = n.arg("indices").list;
  const int64_t rank = static_cast<int64_t>(ctx.net().tensor(x).dims.size());
  AdvancedIndex a;
  for (int64_t d = 0; d < rank; ++d) {
    const bool is_index = d < static_cast<int64_t>(list.size()) && !list[d].is_none();
    (is_index ? a.indexed : a.others).push_back(d);
    if (is_index) {
      a.tensors.push_back(ctx.tensor(list[d].value));
      a.broadcast_rank =
          std::max(a.broadcast_rank, static_cast<int64_t>(ctx.net().tensor(a.tensors.back()).dims.size()));
    }
  }
  a.adjacent = a.indexed.back() - a.indexed.front() + 1 == static_cast<int64_t>(a.indexed.size());
  a.leading = a.indexed.front() == 0 && a.adjacent;
  return a;
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
    TensorId x = ctx.tensor(n, "self");
    const AdvancedIndex a = advanced_index(ctx, n, x);
    if (!a.leading)
      x = ctx.add(n, "transpose", {x}, Attributes().set("perm", a.perm()), "indexed_first").outputs[0];
    TensorId y = index_leading(ctx, n, x, a.tensors, a.leading ? "" : "gathered");
    if (!a.leading && a.adjacent) {  // [B..., others...] -> [others before, B..., others after]
      y = ctx.add(n, "transpose", {y}, Attributes().set("perm", a.torch_order(false))).outputs[0];
    } else if (!a.leading) {
      y = ctx.add(n, "identity", {y}).outputs[0];
    }
    ctx.set_output(n, 0, y);
  };
  index.limits =
      "integer index tensors, None entries allowed (torch's placement of the index dims); no bool masks";
  register_converter(std::move(index));

  // index_put(self, indices, values, accumulate): x[indices] = values (or +=). Integer indices:
  // the indexed dims go first and flatten into one of size P = their product, the rest into R;
  // values, broadcast to x[indices]'s shape in torch's order and brought to [B..., rest...], flatten
  // to [n, R]; a scatter_elements along axis 0 writes (adds) row i at the flat position of index i
  // (linear_index: -1 for an out-of-range component, which the scatter refuses or skips). A single
  // bool mask with one value: where(mask, value, x) (x + value with accumulate).
  Converter index_put;
  index_put.target = "aten.index_put.default";
  index_put.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    const KValue& values = value_arg(g, n, "values");
    const Arg& indices = n.arg("indices");
    if (x.dims.empty()) return "self must have rank >= 1";
    if (x.dtype == DataType::kInt8 || values.dtype == DataType::kInt8) return "int8 is not converted";
    if (indices.kind != Arg::Kind::kList || indices.list.empty()) return "indices must be a non-empty list";
    if (indices.list.size() > x.dims.size()) return "more indices than dims";
    const bool accumulate = n.find("accumulate") != nullptr && bool_arg(n, "accumulate");
    if (accumulate && x.dtype == DataType::kBool) return "accumulate into bool is not converted";
    int masks = 0, entries = 0;
    for (size_t d = 0; d < indices.list.size(); ++d) {
      const Arg& i = indices.list[d];
      if (i.is_none()) continue;
      if (!i.is_value()) return "index entries must be tensors or None";
      ++entries;
      const KValue& v = g.value(i.value);
      if (v.dtype == DataType::kBool) {
        ++masks;
        if (d + v.dims.size() > x.dims.size()) return "the bool mask has more dims than self";
      } else if (!is_integer(v.dtype)) {
        return "index tensors must be int32/int64 or one bool mask";
      }
    }
    if (entries == 0) return "no index tensor";
    if (masks > 0) {
      if (entries > 1) return "a bool mask with other index tensors is not converted";
      int64_t count = 1;
      for (int64_t d : values.dims) count = d == kDynamic ? -1 : count * d;
      if (count != 1) return "a bool mask takes one value (more: a data-dependent count of positions)";
    }
    return "";
  };
  index_put.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const DataType dtype = ctx.net().tensor(x).dtype;
    const int64_t rank = static_cast<int64_t>(ctx.net().tensor(x).dims.size());
    const bool accumulate = n.find("accumulate") != nullptr && bool_arg(n, "accumulate");
    TensorId values = cast_to(ctx, n, ctx.tensor(n, "values"), dtype, "values_cast");
    const auto& list = n.arg("indices").list;
    for (size_t d = 0; d < list.size(); ++d) {
      if (list[d].is_none() || ctx.graph().value(list[d].value).dtype != DataType::kBool) continue;
      TensorId mask = ctx.tensor(list[d].value);  // at dims [d, d + mask rank)
      const int64_t trailing = rank - static_cast<int64_t>(d + ctx.net().tensor(mask).dims.size());
      if (trailing > 0) {
        std::vector<int64_t> axes;
        for (int64_t j = 0; j < trailing; ++j) axes.push_back(-1 - j);
        mask = ctx.add(n, "unsqueeze", {mask}, Attributes().set("axes", axes), "mask_trailing").outputs[0];
      }
      TensorId v = ctx.add(n, "reshape", {values}, Attributes().set("shape", std::vector<int64_t>{}), "value")
                       .outputs[0];
      if (accumulate) v = binary(ctx, n, "add", x, v, "accumulated");
      ctx.set_output(n, 0, ctx.add(n, "where", {mask, v, x}).outputs[0]);
      return;
    }
    const AdvancedIndex a = advanced_index(ctx, n, x);
    const int64_t k = static_cast<int64_t>(a.indexed.size());
    TensorId x_shape = ctx.add(n, "shape", {x}, {}, "self_shape").outputs[0];
    TensorId xp =
        a.leading
            ? x
            : ctx.add(n, "transpose", {x}, Attributes().set("perm", a.perm()), "indexed_first").outputs[0];
    TensorId linear = linear_index(ctx, n, xp, a.tensors);  // shape B
    TensorId b_shape = ctx.add(n, "shape", {linear}, {}, "b_shape").outputs[0];
    // x[indices]'s shape in torch's order, values broadcast to it, then [B..., rest...].
    std::vector<TensorId> pieces;
    if (!a.leading && a.adjacent) {
      if (a.indexed.front() > 0)
        pieces.push_back(slice_axis(ctx, n, x_shape, 0, 0, a.indexed.front(), "before"));
      pieces.push_back(b_shape);
      if (a.indexed.back() + 1 < rank)
        pieces.push_back(slice_axis(ctx, n, x_shape, 0, a.indexed.back() + 1, rank, "after"));
    } else {
      TensorId xp_shape = a.leading ? x_shape : ctx.add(n, "shape", {xp}, {}, "xp_shape").outputs[0];
      pieces.push_back(b_shape);
      if (k < rank) pieces.push_back(slice_axis(ctx, n, xp_shape, 0, k, rank, "rest"));
    }
    TensorId target =
        pieces.size() == 1
            ? pieces[0]
            : ctx.add(n, "concat", pieces, Attributes().set("axis", int64_t{0}), "target").outputs[0];
    values = ctx.add(n, "expand", {values, target}, {}, "values_expanded").outputs[0];
    if (!a.leading && a.adjacent) {
      values =
          ctx.add(n, "transpose", {values}, Attributes().set("perm", a.torch_order(true)), "values_b_first")
              .outputs[0];
    }
    // [B..., rest...] -> [n, R]; xp [indexed..., rest...] -> [P, R]; B = [] counts as [1].
    auto flatten = [&](TensorId t, int64_t start, int64_t end, const std::string& tag) {
      Attributes f;
      f.set("start_dim", start).set("end_dim", end);
      return ctx.add(n, "flatten", {t}, f, tag).outputs[0];
    };
    auto unsqueeze = [&](TensorId t, int64_t axis, const std::string& tag) {
      return ctx.add(n, "unsqueeze", {t}, Attributes().set("axes", std::vector<int64_t>{axis}), tag)
          .outputs[0];
    };
    int64_t b = a.broadcast_rank;
    if (b == 0) {
      linear = unsqueeze(linear, 0, "linear_1d");
      values = unsqueeze(values, 0, "values_1row");
      b = 1;
    }
    linear = flatten(linear, 0, -1, "linear_flat");
    values = flatten(values, 0, b - 1, "values_rows");
    TensorId rows = flatten(xp, 0, k - 1, "self_rows");
    if (k < rank) {
      values = flatten(values, 1, -1, "values_2d");
      rows = flatten(rows, 1, -1, "self_2d");
    } else {
      values = unsqueeze(values, 1, "values_2d");
      rows = unsqueeze(rows, 1, "self_2d");
    }
    TensorId values_shape = ctx.add(n, "shape", {values}, {}, "values_shape").outputs[0];
    TensorId index =
        ctx.add(n, "expand", {unsqueeze(linear, 1, "linear_col"), values_shape}, {}, "index").outputs[0];
    Attributes attrs;
    attrs.set("axis", int64_t{0}).set("reduction", std::string(accumulate ? "add" : "none"));
    TensorId y = ctx.add(n, "scatter_elements", {rows, index, values}, attrs, "scattered").outputs[0];
    TensorId xp_shape = a.leading ? x_shape : ctx.add(n, "shape", {xp}, {}, "xp_shape_back").outputs[0];
    y = ctx.add(n, "reshape", {y, xp_shape}, {}, a.leading ? "" : "indexed_first_out").outputs[0];
    if (!a.leading) {
      const std::vector<int64_t> perm = a.perm();
      std::vector<int64_t> inverse(perm.size());
      for (size_t j = 0; j < perm.size(); ++j) inverse[perm[j]] = static_cast<int64_t>(j);
      y = ctx.add(n, "transpose", {y}, Attributes().set("perm", inverse)).outputs[0];
    }
    ctx.set_output(n, 0, y);
  };
  index_put.limits =
      "integer index tensors, None entries allowed (accumulate adds; repeated positions without it: one "
      "write "
      "lands); or one bool mask with a single value";
  register_converter(std::move(index_put));

  // embedding_bag / _embedding_bag (weight [num, D], indices [n], offsets [B (+1)], mode): each
  // index's bag is the number of offsets at or before its position, less one (a [n, B] comparison
  // summed); the embedding rows (times per_sample_weights) scatter into [B + 1, D] by bag: add
  // (sum, mean divided by the bag's count, at least 1) or max (empty bags stay 0, as torch). The
  // extra bag takes what belongs to none (positions before the first offset, padding_idx entries)
  // and is sliced off. include_last_offset drops the last offset: as torch, the last bag runs to
  // the end of indices.
  for (const char* target : {"aten._embedding_bag.default", "aten._embedding_bag_forward_only.default",
                             "aten.embedding_bag.default", "aten.embedding_bag.padding_idx"}) {
    Converter bag;
    bag.target = target;
    bag.capability = [](const KGraph& g, const KNode& n) -> std::string {
      const KValue& weight = value_arg(g, n, "weight");
      const KValue& indices = value_arg(g, n, "indices");
      const KValue& offsets = value_arg(g, n, "offsets");
      if (weight.dims.size() != 2) return "weight must be 2-D";
      if (indices.dims.size() != 1 || offsets.dims.size() != 1) return "indices and offsets must be 1-D";
      if (!is_integer(indices.dtype) || !is_integer(offsets.dtype))
        return "indices and offsets must be int32/int64";
      if (!is_floating(weight.dtype)) return "weight must be floating";
      const int64_t mode = int_arg(n, "mode");
      if (mode < 0 || mode > 2) return "mode must be 0 (sum), 1 (mean) or 2 (max)";
      if (const Arg* w = n.find("per_sample_weights"); w && !w->is_none() && mode != 0)
        return "per_sample_weights only with mode sum";
      if (const Arg* p = n.find("padding_idx"); p && !p->is_none() && p->kind != Arg::Kind::kInt)
        return "padding_idx must be a constant int";
      return require_unused_outputs(n, 1, "offset2bag / bag_size / max_indices");
    };
    bag.convert = [](ConversionContext& ctx, const KNode& n) {
      TensorId weight = ctx.tensor(n, "weight");
      const DataType dtype = ctx.net().tensor(weight).dtype;
      const int64_t width = ctx.net().tensor(weight).dims[1];
      TensorId indices = cast_to(ctx, n, ctx.tensor(n, "indices"), DataType::kInt64, "indices_i64");
      TensorId offsets = cast_to(ctx, n, ctx.tensor(n, "offsets"), DataType::kInt64, "offsets_i64");
      const int64_t mode = int_arg(n, "mode");
      const bool last_offset = n.find("include_last_offset") != nullptr && bool_arg(n, "include_last_offset");
      const Arg* pad = n.find("padding_idx");
      const int64_t padding_idx = pad == nullptr || pad->is_none() ? -1 : pad->i;

      TensorId rows = ctx.add(n, "embedding", {weight, indices}, {}, "rows").outputs[0];  // [n, D]
      if (const Arg* w = n.find("per_sample_weights"); w && !w->is_none()) {
        TensorId psw = cast_to(ctx, n, ctx.tensor(n, "per_sample_weights"), dtype, "psw_cast");
        psw = ctx.add(n, "unsqueeze", {psw}, Attributes().set("axes", std::vector<int64_t>{1}), "psw_col")
                  .outputs[0];
        rows = binary(ctx, n, "mul", rows, psw, "weighted");
      }
      TensorId starts = last_offset ? slice_axis(ctx, n, offsets, 0, 0, -1, "starts") : offsets;  // [B]
      TensorId bags = dim_size(ctx, n, starts, 0, "bags");
      TensorId positions =
          ctx.add(n, "arange", {dim_size(ctx, n, indices, 0, "count")}, {}, "positions").outputs[0];
      auto unsqueeze = [&](TensorId t, int64_t axis, const std::string& tag) {
        return ctx.add(n, "unsqueeze", {t}, Attributes().set("axes", std::vector<int64_t>{axis}), tag)
            .outputs[0];
      };
      TensorId member = binary(ctx, n, "ge", unsqueeze(positions, 1, "positions_col"),
                               unsqueeze(starts, 0, "starts_row"), "member");
      Attributes sum;
      sum.set("op", std::string("sum")).set("axes", std::vector<int64_t>{1}).set("keepdim", int64_t{0});
      TensorId bag_of =
          ctx.add(n, "reduce", {cast_to(ctx, n, member, DataType::kInt64, "member_i64")}, sum, "started")
              .outputs[0];
      bag_of = binary(ctx, n, "sub", bag_of, ctx.constant_i64(n, {1}, {}, "one"), "bag_of");
      // What belongs to no bag goes to the extra bag B.
      TensorId none = binary(ctx, n, "lt", bag_of, ctx.constant_i64(n, {0}, {}, "zero"), "before_first");
      if (padding_idx >= 0) {
        TensorId padded =
            binary(ctx, n, "eq", indices, ctx.constant_i64(n, {padding_idx}, {}, "padding_idx"), "padded");
        none = binary(ctx, n, "or", none, padded, "excluded");
      }
      bag_of = ctx.add(n, "where", {none, bags, bag_of}, {}, "bag").outputs[0];
      // [B + 1, D] zeros; index [n, D].
      TensorId extent = binary(ctx, n, "add", bags, ctx.constant_i64(n, {1}, {}, "extra"), "extent");
      TensorId shape =
          ctx.add(n, "concat",
                  {unsqueeze(extent, 0, "extent_1d"), ctx.constant_i64(n, {width}, {1}, "width")},
                  Attributes().set("axis", int64_t{0}), "out_shape")
              .outputs[0];
      TensorId zeros =
          ctx.add(n, "fill", {shape}, Attributes().set("dtype", std::string(dtype_name(dtype))), "zeros")
              .outputs[0];
      TensorId rows_shape = ctx.add(n, "shape", {rows}, {}, "rows_shape").outputs[0];
      TensorId index =
          ctx.add(n, "expand", {unsqueeze(bag_of, 1, "bag_col"), rows_shape}, {}, "index").outputs[0];
      Attributes scatter;
      scatter.set("axis", int64_t{0}).set("reduction", std::string(mode == 2 ? "max" : "add"));
      if (mode == 2) scatter.set("include_self", int64_t{0});
      TensorId out = ctx.add(n, "scatter_elements", {zeros, index, rows}, scatter, "bagged").outputs[0];
      if (mode == 1) {
        TensorId ones =
            ctx.add(n, "expand", {constant_of(ctx, n, 1.0, dtype, "one_f"), rows_shape}, {}, "ones")
                .outputs[0];
        Attributes add;
        add.set("axis", int64_t{0}).set("reduction", std::string("add"));
        TensorId count = ctx.add(n, "scatter_elements", {zeros, index, ones}, add, "count").outputs[0];
        count = binary(ctx, n, "max", count, constant_of(ctx, n, 1.0, dtype, "at_least_one"), "count_1");
        out = binary(ctx, n, "div", out, count, "mean");
      }
      Attributes cut;
      cut.set("axes", std::vector<int64_t>{0})
          .set("starts", std::vector<int64_t>{0})
          .set("ends", std::vector<int64_t>{-1});
      ctx.set_output(n, 0, ctx.add(n, "slice", {out}, cut).outputs[0]);
    };
    bag.limits =
        "1-D indices and offsets; mode sum, mean or max; per_sample_weights with sum; only output 0 used";
    register_converter(std::move(bag));
  }

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
