// Ops that move elements: index_select -> gather; flip -> gather of a reversed arange; roll over
// adjacent dims -> one gather of the flattened dims (constant rolled positions), other rolls ->
// slice + concat per dim; as_strided -> reshape when the strides are row-major, else a gather of constant
// flat positions; diagonal -> gather of constant flat positions over the two dims.
//
// as_strided reads self as the row-major storage it views: the FX frontend converts it only when
// self is contiguous with storage offset 0 (otherwise the node runs in PyTorch).
#include <algorithm>
#include <map>

#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

// A constant gather index larger than this is refused (as_strided / diagonal of huge tensors).
constexpr int64_t kMaxConstantIndex = int64_t{1} << 24;

TensorId gather(ConversionContext& ctx, const KNode& n, TensorId x, TensorId index, int64_t axis,
                const std::string& tag) {
  Attributes attrs;
  attrs.set("axis", axis).set("wrap", int64_t{0});
  return ctx.add(n, "gather", {x, index}, attrs, tag).outputs[0];
}

int64_t checked_axis(const KValue& x, int64_t dim) {
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  const int64_t a = wrap_axis(dim, static_cast<size_t>(rank));
  KILN_CHECK(a >= 0 && a < rank, "dim " << dim << " is out of range for rank " << rank);
  return a;
}

// x rolled by `shift` along a static axis: concat(x[n - s:], x[:n - s]).
TensorId roll_axis(ConversionContext& ctx, const KNode& n, TensorId x, int64_t axis, int64_t shift,
                   const std::string& tag) {
  const int64_t size = ctx.net().tensor(x).dims.at(axis);
  if (size == 0) return x;
  const int64_t s = ((shift % size) + size) % size;
  if (s == 0) return x;
  TensorId tail = slice_axis(ctx, n, x, axis, size - s, size, tag + "_tail");
  TensorId head = slice_axis(ctx, n, x, axis, 0, size - s, tag + "_head");
  return ctx.add(n, "concat", {tail, head}, Attributes().set("axis", axis), tag).outputs[0];
}

int64_t numel(const Dims& dims) {
  int64_t total = 1;
  for (int64_t d : dims) total *= d;
  return total;
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  Converter index_select;
  index_select.target = "aten.index_select.default";
  index_select.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    const KValue& index = value_arg(g, n, "index");
    if (!is_integer(index.dtype)) return "index must be int32/int64";
    if (index.dims.size() > 1) return "index must be 0-d or 1-D";
    if (x.dims.empty()) return "self must have rank ≥ 1";
    checked_axis(x, int_arg(n, "dim"));
    return "";
  };
  index_select.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const int64_t axis = wrap_axis(int_arg(n, "dim"), ctx.net().tensor(x).dims.size());
    TensorId index = cast_to(ctx, n, ctx.tensor(n, "index"), DataType::kInt64, "index_i64");
    if (ctx.net().tensor(index).dims.empty())  // a 0-d index keeps the dim, with size 1
      index = ctx.add(n, "unsqueeze", {index}, Attributes().set("axes", std::vector<int64_t>{0}), "index_1d")
                  .outputs[0];
    ctx.set_output(n, 0, gather(ctx, n, x, index, axis, ""));
  };
  index_select.limits =
      "a 0-d or 1-D int32/int64 index; a negative or too large index is refused as in torch";
  register_converter(std::move(index_select));

  Converter flip;
  flip.target = "aten.flip.default";
  flip.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    for (int64_t d : ints_arg(n, "dims")) checked_axis(x, d);
    return "";
  };
  flip.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const size_t rank = ctx.net().tensor(x).dims.size();
    std::vector<int64_t> axes;
    for (int64_t d : ints_arg(n, "dims")) axes.push_back(wrap_axis(d, rank));
    std::sort(axes.begin(), axes.end());
    axes.erase(std::unique(axes.begin(), axes.end()), axes.end());
    if (axes.empty()) x = ctx.add(n, "identity", {x}).outputs[0];
    for (int64_t axis : axes) {
      const std::string tag = "axis" + std::to_string(axis);
      const int64_t size = ctx.net().tensor(x).dims[axis];
      TensorId index;
      if (size != kDynamic) {
        std::vector<int64_t> reversed(static_cast<size_t>(size));
        for (int64_t i = 0; i < size; ++i) reversed[i] = size - 1 - i;
        index = ctx.constant_i64(n, reversed, {size}, tag + "_index");
      } else {  // (size - 1) - arange(size)
        TensorId count = dim_size(ctx, n, x, axis, tag + "_size");
        TensorId ramp = ctx.add(n, "arange", {count}, {}, tag + "_arange").outputs[0];
        TensorId last =
            binary(ctx, n, "sub", count, ctx.constant_i64(n, {1}, {}, tag + "_one"), tag + "_last");
        index = binary(ctx, n, "sub", last, ramp, tag + "_index");
      }
      x = gather(ctx, n, x, index, axis, axes.size() == 1 ? "" : tag);
    }
    ctx.set_output(n, 0, x);
  };
  flip.limits = "constant dims (static or dynamic)";
  register_converter(std::move(flip));

  Converter roll;
  roll.target = "aten.roll.default";
  roll.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    const std::vector<int64_t> shifts = ints_arg(n, "shifts");
    const std::vector<int64_t> dims = ints_arg(n, "dims");
    if (dims.empty()) {
      if (shifts.size() != 1) return "without dims, shifts must hold one value";
      if (!is_static(x.dims)) return "rolling the flattened tensor needs static dims";
      return "";
    }
    if (shifts.size() != dims.size()) return "shifts and dims differ in length";
    for (int64_t d : dims) {
      if (x.dims.at(checked_axis(x, d)) == kDynamic) return "rolling a dynamic dim is not converted";
    }
    return "";
  };
  roll.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const std::vector<int64_t> shifts = ints_arg(n, "shifts");
    const std::vector<int64_t> dims = ints_arg(n, "dims");
    const Dims shape = ctx.net().tensor(x).dims;
    if (dims.empty()) {
      Attributes flat;
      flat.set("start_dim", int64_t{0}).set("end_dim", int64_t{-1});
      if (shape.empty()) {
        ctx.set_output(n, 0, ctx.add(n, "identity", {x}).outputs[0]);
        return;
      }
      x = ctx.add(n, "flatten", {x}, flat, "flatten").outputs[0];
      x = roll_axis(ctx, n, x, 0, shifts[0], "roll");
      ctx.set_output(n, 0,
                     ctx.add(n, "reshape", {x},
                             Attributes().set("shape", std::vector<int64_t>(shape.begin(), shape.end())))
                         .outputs[0]);
      return;
    }
    // The shift per axis (a dim named twice shifts by the sum).
    std::map<int64_t, int64_t> shift_of;
    for (size_t k = 0; k < dims.size(); ++k) shift_of[wrap_axis(dims[k], shape.size())] += shifts[k];
    const int64_t first = shift_of.begin()->first, last = shift_of.rbegin()->first;
    if (last - first + 1 == static_cast<int64_t>(shift_of.size())) {
      // Adjacent axes (Swin's roll over H and W): one gather of the flattened axes with the
      // rolled positions as a constant index, instead of slices and a concat per axis.
      std::vector<int64_t> index(1, 0);
      for (const auto& [axis, shift] : shift_of) {
        const int64_t size = shape[axis];
        const int64_t s = size == 0 ? 0 : ((shift % size) + size) % size;
        std::vector<int64_t> next;
        next.reserve(index.size() * static_cast<size_t>(size));
        for (int64_t outer : index) {
          for (int64_t i = 0; i < size; ++i) next.push_back(outer * size + (i - s + size) % size);
        }
        index = std::move(next);
      }
      TensorId shape_of_x = ctx.add(n, "shape", {x}, {}, "shape").outputs[0];
      Attributes flat;
      flat.set("start_dim", first).set("end_dim", last);
      TensorId y = last > first ? ctx.add(n, "flatten", {x}, flat, "flatten").outputs[0] : x;
      TensorId positions = ctx.constant_i64(n, index, {static_cast<int64_t>(index.size())}, "positions");
      y = ctx.add(n, "gather", {y, positions}, Attributes().set("axis", first), last > first ? "rolled" : "")
              .outputs[0];
      if (last > first) y = ctx.add(n, "reshape", {y, shape_of_x}).outputs[0];
      ctx.set_output(n, 0, y);
      return;
    }
    for (const auto& [axis, shift] : shift_of)
      x = roll_axis(ctx, n, x, axis, shift, "roll" + std::to_string(axis));
    if (x == ctx.tensor(n, "self")) x = ctx.add(n, "identity", {x}).outputs[0];
    ctx.set_output(n, 0, x);
  };
  roll.limits = "constant shifts over static dims";
  register_converter(std::move(roll));

  // as_strided(self, size, stride, storage_offset) over self's row-major storage.
  Converter as_strided;
  as_strided.target = "aten.as_strided.default";
  as_strided.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (!is_static(x.dims)) return "self must have static dims";
    const std::vector<int64_t> size = ints_arg(n, "size");
    const std::vector<int64_t> stride = ints_arg(n, "stride");
    if (size.size() != stride.size()) return "size and stride differ in length";
    const Arg& offset_arg = n.arg("storage_offset");
    const int64_t offset = offset_arg.is_none() ? 0 : int_arg(n, "storage_offset");
    int64_t last = offset, count = 1;
    for (size_t k = 0; k < size.size(); ++k) {
      if (size[k] < 0 || stride[k] < 0) return "negative sizes or strides";
      if (size[k] == 0) return "";  // an empty view reads nothing
      if (size[k] > kMaxConstantIndex || count > kMaxConstantIndex / size[k]) return "the view is too large";
      count *= size[k];
      last += (size[k] - 1) * stride[k];
    }
    if (offset < 0 || last >= numel(x.dims)) return "the view reads past self's storage";
    return "";
  };
  as_strided.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const std::vector<int64_t> size = ints_arg(n, "size");
    const std::vector<int64_t> stride = ints_arg(n, "stride");
    const int64_t offset = n.arg("storage_offset").is_none() ? 0 : int_arg(n, "storage_offset");
    const Dims out(size.begin(), size.end());
    int64_t total = numel(out);
    // Row-major strides over the whole storage: a reshape.
    bool row_major = offset == 0 && total == numel(ctx.net().tensor(x).dims);
    for (int64_t k = static_cast<int64_t>(size.size()) - 1, expected = 1; k >= 0 && row_major; --k) {
      row_major = size[k] == 1 || stride[k] == expected;
      expected *= size[k];
    }
    if (row_major) {
      ctx.set_output(n, 0, ctx.add(n, "reshape", {x}, Attributes().set("shape", size)).outputs[0]);
      return;
    }
    std::vector<int64_t> flat(static_cast<size_t>(total));
    for (int64_t i = 0; i < total; ++i) {
      int64_t rest = i, pos = offset;
      for (int64_t k = static_cast<int64_t>(size.size()) - 1; k >= 0; --k) {
        pos += (rest % size[k]) * stride[k];
        rest /= size[k];
      }
      flat[i] = pos;
    }
    Attributes all;
    all.set("start_dim", int64_t{0}).set("end_dim", int64_t{-1});
    if (!ctx.net().tensor(x).dims.empty())
      x = ctx.add(n, "flatten", {x}, all, "storage").outputs[0];
    else
      x = ctx.add(n, "reshape", {x}, Attributes().set("shape", std::vector<int64_t>{1}), "storage")
              .outputs[0];
    TensorId index = ctx.constant_i64(n, flat, out, "positions");
    ctx.set_output(n, 0, gather(ctx, n, x, index, 0, ""));
  };
  as_strided.limits =
      "static self, contiguous with storage offset 0 (checked by the frontend); constant size, stride and "
      "offset inside self's storage";
  register_converter(std::move(as_strided));

  // diagonal(self, offset, dim1, dim2): dim1 and dim2 moved last and merged, then a gather of the
  // flat positions of the diagonal; the diagonal becomes the last dim.
  Converter diagonal;
  diagonal.target = "aten.diagonal.default";
  diagonal.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (x.dims.size() < 2) return "self must have rank ≥ 2";
    const int64_t d1 = checked_axis(x, int_arg(n, "dim1"));
    const int64_t d2 = checked_axis(x, int_arg(n, "dim2"));
    int_arg(n, "offset");
    if (d1 == d2) return "dim1 and dim2 must differ";
    if (x.dims[d1] == kDynamic || x.dims[d2] == kDynamic) return "dim1 and dim2 must be static";
    return "";
  };
  diagonal.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const Dims dims = ctx.net().tensor(x).dims;
    const size_t rank = dims.size();
    const int64_t d1 = wrap_axis(int_arg(n, "dim1"), rank), d2 = wrap_axis(int_arg(n, "dim2"), rank);
    const int64_t offset = int_arg(n, "offset");
    const int64_t rows = dims[d1], cols = dims[d2];
    const int64_t length =
        std::max<int64_t>(0, offset >= 0 ? std::min(rows, cols - offset) : std::min(rows + offset, cols));
    std::vector<int64_t> perm;
    for (size_t k = 0; k < rank; ++k) {
      if (static_cast<int64_t>(k) != d1 && static_cast<int64_t>(k) != d2)
        perm.push_back(static_cast<int64_t>(k));
    }
    perm.push_back(d1);
    perm.push_back(d2);
    x = ctx.add(n, "transpose", {x}, Attributes().set("perm", perm), "last").outputs[0];
    Attributes merge;
    merge.set("start_dim", static_cast<int64_t>(rank - 2)).set("end_dim", int64_t{-1});
    x = ctx.add(n, "flatten", {x}, merge, "merged").outputs[0];
    std::vector<int64_t> positions(static_cast<size_t>(length));
    for (int64_t i = 0; i < length; ++i) {
      const int64_t r = offset >= 0 ? i : i - offset, c = offset >= 0 ? i + offset : i;
      positions[i] = r * cols + c;
    }
    TensorId index = ctx.constant_i64(n, positions, {length}, "positions");
    ctx.set_output(n, 0, gather(ctx, n, x, index, static_cast<int64_t>(rank - 2), ""));
  };
  diagonal.limits = "constant offset and dims; dim1 and dim2 static";
  register_converter(std::move(diagonal));
});

}  // namespace kiln
