// Shape ops: view / _unsafe_view / reshape, permute, transpose, expand, clone, unsqueeze,
// squeeze, cat, split_with_sizes, and aten.sym_size.int (shape -> gather: a host scalar).
// Size lists may hold symbolic sizes: they become tracked int64 shape tensors (see
// ConversionContext::size_tensor), so a reshape can follow dynamic dims.
#include <algorithm>

#include "converters/converter.h"
#include "converters/converter_util.h"
#include "ir/op_schema.h"

namespace kiln {
namespace {

std::string size_list(const KGraph& g, const KNode& n, const std::string& name) {
  const Arg& a = n.arg(name);
  if (a.kind != Arg::Kind::kList) return name + " must be a list";
  for (const Arg& e : a.list) {
    if (e.kind == Arg::Kind::kInt) continue;
    if (!e.is_value() || !g.value(e.value).host_scalar)
      return name + " entry " + e.describe() + " is not a size";
  }
  return "";
}

void register_reshape(const std::string& target, const std::string& size_arg) {
  Converter c;
  c.target = target;
  c.capability = [size_arg](const KGraph& g, const KNode& n) {
    value_arg(g, n, "self");
    return size_list(g, n, size_arg);
  };
  c.convert = [size_arg](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    TensorId shape = ctx.size_tensor(n, size_arg);
    Layer& l = shape < 0 ? ctx.add(n, "reshape", {x}, Attributes().set("shape", ints_arg(n, size_arg)))
                         : ctx.add(n, "reshape", {x, shape});
    ctx.set_output(n, 0, l.outputs[0]);
  };
  c.limits = "sizes: ints and symbolic sizes";
  register_converter(std::move(c));
}

// Converters whose whole conversion is one layer on `self` with attributes from the node.
void register_simple(const std::string& target, const std::string& op,
                     std::function<Attributes(const KGraph&, const KNode&)> attrs,
                     const std::string& limits) {
  Converter c;
  c.target = target;
  c.capability = [attrs](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    attrs(g, n);  // throws with the reason when an argument is not constant
    return "";
  };
  c.convert = [op, attrs](ConversionContext& ctx, const KNode& n) {
    ctx.set_output(n, 0, ctx.add(n, op, {ctx.tensor(n, "self")}, attrs(ctx.graph(), n)).outputs[0]);
  };
  c.limits = limits;
  register_converter(std::move(c));
}

// squeeze's axes: the given dims (wrapped) that are 1; torch leaves the others as they are.
Attributes squeeze_attrs(const KValue& x, const std::vector<int64_t>& dims) {
  std::vector<int64_t> axes;
  for (int64_t d : dims) {
    int64_t a = wrap_axis(d, x.dims.size());
    KILN_CHECK(a >= 0 && static_cast<size_t>(a) < x.dims.size(), "dim " << d << " is out of range");
    KILN_CHECK(x.dims[a] != kDynamic, "squeezing a dynamic dim is not supported");
    if (x.dims[a] == 1) axes.push_back(a);
  }
  return Attributes().set("axes", axes);
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  register_reshape("aten.view.default", "size");
  register_reshape("aten._unsafe_view.default", "size");
  register_reshape("aten.reshape.default", "shape");

  register_simple(
      "aten.permute.default", "transpose",
      [](const KGraph&, const KNode& n) { return Attributes().set("perm", ints_arg(n, "dims")); },
      "constant dims");
  register_simple(
      "aten.transpose.int", "transpose",
      [](const KGraph& g, const KNode& n) {
        const size_t rank = value_arg(g, n, "self").dims.size();
        std::vector<int64_t> perm;
        for (size_t k = 0; k < rank; ++k) perm.push_back(static_cast<int64_t>(k));
        if (rank > 0)
          std::swap(perm.at(wrap_axis(int_arg(n, "dim0"), rank)),
                    perm.at(wrap_axis(int_arg(n, "dim1"), rank)));
        return Attributes().set("perm", perm);
      },
      "constant dims");
  register_simple(
      "aten.clone.default", "identity", [](const KGraph&, const KNode&) { return Attributes(); },
      "memory_format is ignored (engine tensors are contiguous)");
  register_simple(
      "aten.unsqueeze.default", "unsqueeze",
      [](const KGraph& g, const KNode& n) {
        const size_t rank = value_arg(g, n, "self").dims.size() + 1;
        return Attributes().set("axes", std::vector<int64_t>{wrap_axis(int_arg(n, "dim"), rank)});
      },
      "constant dim");
  register_simple(
      "aten.squeeze.dims", "squeeze",
      [](const KGraph& g, const KNode& n) {
        return squeeze_attrs(value_arg(g, n, "self"), ints_arg(n, "dim"));
      },
      "constant, static dims");
  register_simple(
      "aten.squeeze.dim", "squeeze",
      [](const KGraph& g, const KNode& n) {
        return squeeze_attrs(value_arg(g, n, "self"), {int_arg(n, "dim")});
      },
      "constant, static dim");
  // unflatten(x, dim, sizes) -> reshape: x's dims with `dim` replaced by `sizes`. A dynamic dim
  // outside `dim` becomes the one inferred (-1) entry, so it may be dynamic when sizes has no -1.
  register_simple(
      "aten.unflatten.int", "reshape",
      [](const KGraph& g, const KNode& n) {
        const KValue& x = value_arg(g, n, "self");
        const int64_t dim = wrap_axis(int_arg(n, "dim"), x.dims.size());
        KILN_CHECK(dim >= 0 && static_cast<size_t>(dim) < x.dims.size(), "dim is out of range");
        const std::vector<int64_t> sizes = ints_arg(n, "sizes");
        const bool sizes_infer = std::count(sizes.begin(), sizes.end(), int64_t{-1}) > 0;
        KILN_CHECK(x.dims[dim] != kDynamic || sizes_infer, "unflattening a dynamic dim needs a -1 in sizes");
        int unknown = sizes_infer ? 1 : 0;  // reshape infers one -1
        std::vector<int64_t> shape;
        for (size_t k = 0; k < x.dims.size(); ++k) {
          if (static_cast<int64_t>(k) == dim) {
            shape.insert(shape.end(), sizes.begin(), sizes.end());
          } else {
            unknown += x.dims[k] == kDynamic ? 1 : 0;
            shape.push_back(x.dims[k]);  // a dynamic dim is the -1 reshape infers
          }
        }
        KILN_CHECK(unknown <= 1, "more than one dim would be inferred (dynamic dims or -1 sizes)");
        return Attributes().set("shape", shape);
      },
      "constant dim and sizes; at most one dynamic or -1 dim");

  Converter expand;
  expand.target = "aten.expand.default";
  expand.capability = [](const KGraph& g, const KNode& n) {
    value_arg(g, n, "self");
    return size_list(g, n, "size");
  };
  expand.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    TensorId shape = ctx.size_tensor(n, "size");
    Layer& l = shape < 0 ? ctx.add(n, "expand", {x}, Attributes().set("shape", ints_arg(n, "size")))
                         : ctx.add(n, "expand", {x, shape});
    ctx.set_output(n, 0, l.outputs[0]);
  };
  expand.limits = "sizes: ints and symbolic sizes";
  register_converter(std::move(expand));

  Converter cat;
  cat.target = "aten.cat.default";
  cat.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const Arg& tensors = n.arg("tensors");
    if (tensors.kind != Arg::Kind::kList || tensors.list.empty()) return "tensors must be a non-empty list";
    const size_t most = static_cast<size_t>(find_schema("concat")->max_inputs);
    if (tensors.list.size() > most)
      return "cat of " + std::to_string(tensors.list.size()) + " tensors: an engine concat takes at most " +
             std::to_string(most);
    for (const Arg& t : tensors.list) {
      if (!t.is_value() || g.value(t.value).host_scalar) return "every entry of tensors must be a tensor";
    }
    int_arg(n, "dim");
    return "";
  };
  cat.convert = [](ConversionContext& ctx, const KNode& n) {
    // torch.cat skips 1-D tensors of size 0 whatever the dim (an empty KV cache before the first
    // step is torch.tensor([])).
    std::vector<TensorId> inputs;
    for (const Arg& t : n.arg("tensors").list) {
      if (ctx.graph().value(t.value).dims != Dims{0}) inputs.push_back(ctx.tensor(t.value));
    }
    if (inputs.empty()) inputs.push_back(ctx.tensor(n.arg("tensors").list[0].value));  // all empty
    if (inputs.size() == 1) {
      ctx.set_output(n, 0, ctx.add(n, "identity", inputs).outputs[0]);
      return;
    }
    ctx.set_output(n, 0,
                   ctx.add(n, "concat", inputs, Attributes().set("axis", int_arg(n, "dim"))).outputs[0]);
  };
  cat.limits = "constant dim; at most 1024 tensors (the concat op's input limit)";
  register_converter(std::move(cat));

  Converter split;
  split.target = "aten.split_with_sizes.default";
  split.capability = [](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    ints_arg(n, "split_sizes");
    int_arg(n, "dim");
    return "";
  };
  split.convert = [](ConversionContext& ctx, const KNode& n) {
    Attributes attrs;
    attrs.set("axis", int_arg(n, "dim")).set("sizes", ints_arg(n, "split_sizes"));
    Layer& l = ctx.add(n, "split", {ctx.tensor(n, "self")}, attrs);
    const std::vector<TensorId> outs = l.outputs;  // copy: later layers may grow the layer list
    for (size_t k = 0; k < outs.size(); ++k) ctx.set_output(n, k, outs[k]);
  };
  split.limits = "constant sizes and dim";
  register_converter(std::move(split));

  Converter sym_size;
  sym_size.target = "aten.sym_size.int";
  sym_size.capability = [](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    int_arg(n, "dim");
    return "";
  };
  sym_size.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const int64_t dim = wrap_axis(int_arg(n, "dim"), ctx.net().tensor(x).dims.size());
    TensorId shape = ctx.add(n, "shape", {x}, {}, "shape").outputs[0];
    TensorId index = ctx.constant_i64(n, {dim}, {}, "index");
    ctx.set_output(n, 0,
                   ctx.add(n, "gather", {shape, index}, Attributes().set("axis", int64_t{0})).outputs[0]);
  };
  sym_size.limits = "a symbolic size (host-tracked value)";
  register_converter(std::move(sym_size));
});

}  // namespace kiln
