// Reductions -> reduce / arg_reduce layers:
//   sum / mean / prod (.default over every dim, .dim_IntList / .dim / .dim_int over some), with the
//     dtype argument (self is cast to the result dtype first, as torch does);
//   amax / amin / max / min (.default: every dim; .dim: values and indices); argmax / argmin;
//   aminmax; var / std / var_mean (.correction, var.dim); any / all (every dim, .dim, .dims);
//   logsumexp; linalg_vector_norm.
// The result dtype is the one torch.export recorded for the node's output.
#include <cmath>
#include <limits>

#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

TensorId reduce(ConversionContext& ctx, const KNode& n, const std::string& op, TensorId x,
                const std::vector<int64_t>& axes, bool keepdim, const std::string& tag,
                int64_t correction = -1) {
  Attributes attrs;
  attrs.set("op", op).set("axes", axes).set("keepdim", int64_t{keepdim});
  if (correction >= 0) attrs.set("correction", correction);
  return ctx.add(n, "reduce", {x}, attrs, tag).outputs[0];
}

std::vector<int64_t> all_axes(size_t rank) {
  std::vector<int64_t> axes(rank);
  for (size_t k = 0; k < rank; ++k) axes[k] = static_cast<int64_t>(k);
  return axes;
}

bool keepdim_arg(const KNode& n) {
  const Arg* k = n.find("keepdim");
  return k != nullptr && !k->is_none() && bool_arg(n, "keepdim");
}

// The dims a reduction covers, validated against self's rank (empty: every dim).
std::vector<int64_t> reduced_dims(const KGraph& g, const KNode& n, const std::string& name) {
  const size_t rank = value_arg(g, n, "self").dims.size();
  std::vector<int64_t> dims = dims_arg(n, name);
  for (int64_t d : dims) {
    const int64_t a = wrap_axis(d, rank == 0 ? 1 : rank);  // torch allows dim 0 / -1 on a 0-d tensor
    KILN_CHECK(a >= 0 && a < static_cast<int64_t>(rank == 0 ? 1 : rank), "dim " << d << " is out of range");
  }
  if (rank == 0) return {};  // a 0-d tensor reduces to itself
  return dims;
}

// sum / mean / prod: self cast to the result dtype (torch's dtype argument, int64 for integer sums
// and products), then reduced.
void register_accumulate(const std::string& target, const std::string& op, const std::string& dim_name) {
  Converter c;
  c.target = target;
  c.capability = [op, dim_name](const KGraph& g, const KNode& n) -> std::string {
    value_arg(g, n, "self");
    if (!dim_name.empty()) reduced_dims(g, n, dim_name);
    if (!output_used(n, 0)) return "";
    const DataType out = output_dtype(g, n);
    if (is_floating(out)) return "";
    if (op != "mean" && is_integer(out)) return "";
    return std::string("result dtype ") + dtype_name(out) + " is not converted";
  };
  c.convert = [op, dim_name](ConversionContext& ctx, const KNode& n) {
    if (!output_used(n, 0)) return;
    TensorId x = cast_to(ctx, n, ctx.tensor(n, "self"), output_dtype(ctx.graph(), n), "cast");
    const std::vector<int64_t> axes =
        dim_name.empty() ? std::vector<int64_t>{} : reduced_dims(ctx.graph(), n, dim_name);
    ctx.set_output(n, 0, reduce(ctx, n, op, x, axes, keepdim_arg(n), ""));
  };
  c.limits =
      std::string(dim_name.empty() ? "every dim" : "constant dims") +
      "; the dtype argument casts self first; " +
      (op == "mean" ? "floating results" : "floating, int32 or int64 results (bool and ints sum as int64)");
  register_converter(std::move(c));
}

// max / min over some dims of a floating or integer tensor (bool through int32).
TensorId extreme(ConversionContext& ctx, const KNode& n, const std::string& op,
                 const std::vector<int64_t>& axes, bool keepdim, const std::string& tag) {
  TensorId x = ctx.tensor(n, "self");
  const DataType dtype = ctx.net().tensor(x).dtype;
  if (dtype == DataType::kBool) x = cast_to(ctx, n, x, DataType::kInt32, tag + "_as_int");
  TensorId r = reduce(ctx, n, op, x, axes, keepdim, tag);
  return cast_to(ctx, n, r, dtype, tag + "_to_bool");
}

std::string extreme_dtype(const KGraph& g, const KNode& n) {
  const DataType t = value_arg(g, n, "self").dtype;
  if (is_floating(t) || is_integer(t) || t == DataType::kBool) return "";
  return std::string(dtype_name(t)) + " is not converted";
}

// amax / amin (dims, keepdim) and max / min .default (every dim).
void register_extreme(const std::string& target, const std::string& op, bool has_dims) {
  Converter c;
  c.target = target;
  c.capability = [has_dims](const KGraph& g, const KNode& n) -> std::string {
    if (has_dims) reduced_dims(g, n, "dim");
    return extreme_dtype(g, n);
  };
  c.convert = [op, has_dims](ConversionContext& ctx, const KNode& n) {
    const std::vector<int64_t> axes = has_dims ? reduced_dims(ctx.graph(), n, "dim") : std::vector<int64_t>{};
    ctx.set_output(n, 0, extreme(ctx, n, op, axes, has_dims && keepdim_arg(n), op));
  };
  c.limits = std::string(has_dims ? "constant dims" : "every dim") + "; floating, integer or bool";
  register_converter(std::move(c));
}

std::string arg_dtype(const KGraph& g, const KNode& n) {
  const DataType t = value_arg(g, n, "self").dtype;
  if (is_floating(t) || is_integer(t)) return "";
  return std::string(dtype_name(t)) + " is not converted (floating, int32 or int64)";
}

// argmax / argmin of self along `axis` (the first of equal values, as torch).
TensorId arg_extreme(ConversionContext& ctx, const KNode& n, const std::string& op, TensorId x, int64_t axis,
                     bool keepdim, const std::string& tag) {
  Attributes attrs;
  attrs.set("op", op).set("axis", axis).set("keepdim", int64_t{keepdim});
  return ctx.add(n, "arg_reduce", {x}, attrs, tag).outputs[0];
}

// max.dim / min.dim: (values, indices) along one dim.
void register_extreme_dim(const std::string& target, const std::string& op) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    if (value_arg(g, n, "self").dims.empty()) return "self must have rank ≥ 1";
    int_arg(n, "dim");
    return output_used(n, 1) ? arg_dtype(g, n) : extreme_dtype(g, n);
  };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    const bool keepdim = bool_arg(n, "keepdim");
    const int64_t dim = int_arg(n, "dim");
    if (output_used(n, 0)) ctx.set_output(n, 0, extreme(ctx, n, op, {dim}, keepdim, op));
    if (output_used(n, 1))
      ctx.set_output(n, 1, arg_extreme(ctx, n, "arg" + op, ctx.tensor(n, "self"), dim, keepdim, "arg" + op));
  };
  c.limits = "a constant dim; indices of the first extreme (floating or integer self when used)";
  register_converter(std::move(c));
}

// argmax / argmin (dim None: over the flattened tensor).
void register_arg(const std::string& target, const std::string& op) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const Arg& dim = n.arg("dim");
    if (!dim.is_none()) {
      if (value_arg(g, n, "self").dims.empty()) return "";
      int_arg(n, "dim");
    }
    return arg_dtype(g, n);
  };
  c.convert = [op](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const size_t rank = ctx.net().tensor(x).dims.size();
    const bool keepdim = bool_arg(n, "keepdim");
    if (rank == 0) {  // a 0-d tensor: index 0
      ctx.set_output(n, 0, ctx.constant_i64(n, {0}, {}, "zero"));
      return;
    }
    if (!n.arg("dim").is_none()) {
      ctx.set_output(n, 0, arg_extreme(ctx, n, op, x, int_arg(n, "dim"), keepdim, ""));
      return;
    }
    Attributes flat;
    flat.set("start_dim", int64_t{0}).set("end_dim", int64_t{-1});
    x = ctx.add(n, "flatten", {x}, flat, "flatten").outputs[0];
    TensorId r = arg_extreme(ctx, n, op, x, 0, false, op);
    if (keepdim) {  // every dim kept with size 1
      r = ctx.add(n, "unsqueeze", {r}, Attributes().set("axes", all_axes(rank)), "keepdim").outputs[0];
    }
    ctx.set_output(n, 0, r);
  };
  c.limits = "a constant dim or None (the flattened tensor); floating or integer";
  register_converter(std::move(c));
}

// var's correction: var.correction's number (None: 1) or var.dim's unbiased flag.
int64_t correction_arg(const KNode& n) {
  if (const Arg* unbiased = n.find("unbiased")) return unbiased->is_none() || unbiased->i != 0 ? 1 : 0;
  const Arg* c = n.find("correction");
  if (c == nullptr || c->is_none()) return 1;
  KILN_CHECK(c->is_number(), "correction must be a constant number");
  const double v = c->as_double();
  KILN_CHECK(v >= 0 && v == std::floor(v) && v < 1e9, "correction must be a whole number ≥ 0, got " << v);
  return static_cast<int64_t>(v);
}

// var / std / var_mean: `outputs` lists what each node output is ("var", "std" or "mean").
void register_variance(const std::string& target, const std::vector<std::string>& outputs) {
  Converter c;
  c.target = target;
  c.capability = [](const KGraph& g, const KNode& n) -> std::string {
    reduced_dims(g, n, "dim");
    correction_arg(n);
    return require_floating(value_arg(g, n, "self"), "self");
  };
  c.convert = [outputs](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const std::vector<int64_t> axes = reduced_dims(ctx.graph(), n, "dim");
    const bool keepdim = keepdim_arg(n);
    for (size_t k = 0; k < outputs.size(); ++k) {
      if (!output_used(n, k)) continue;
      const std::string& what = outputs[k];
      TensorId r = what == "mean" ? reduce(ctx, n, "mean", x, axes, keepdim, "mean")
                                  : reduce(ctx, n, "var", x, axes, keepdim, "var", correction_arg(n));
      if (what == "std") r = unary(ctx, n, "sqrt", r, "std");
      ctx.set_output(n, k, r);
    }
  };
  c.limits = "constant dims; a whole-number correction; floating dtypes";
  register_converter(std::move(c));
}

// any / all: max / min of int32(x != 0) over the dims, as bool (the reduce op has no bool form).
void register_any_all(const std::string& target, const std::string& op, const std::string& dim_name) {
  Converter c;
  c.target = target;
  c.capability = [dim_name](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (x.dtype == DataType::kInt8) return "int8 is not converted";
    if (!dim_name.empty()) reduced_dims(g, n, dim_name);
    return "";
  };
  c.convert = [op, dim_name](ConversionContext& ctx, const KNode& n) {
    TensorId x = cast_to(ctx, n, ctx.tensor(n, "self"), DataType::kBool, "nonzero");
    x = cast_to(ctx, n, x, DataType::kInt32, "as_int");
    const std::vector<int64_t> axes =
        dim_name.empty() ? std::vector<int64_t>{} : reduced_dims(ctx.graph(), n, dim_name);
    TensorId r = reduce(ctx, n, op, x, axes, !dim_name.empty() && keepdim_arg(n), op);
    ctx.set_output(n, 0, cast_to(ctx, n, r, DataType::kBool, "to_bool"));
  };
  c.limits =
      std::string(dim_name.empty() ? "every dim" : "constant dims") + "; as " + op + " over int32(x != 0)";
  register_converter(std::move(c));
}

// The ord-norm of x over `axes` (empty: every dim): sum(|x|^ord)^(1/ord); ord 2 as
// sqrt(sum(x*x)), 1 as sum(|x|), inf / -inf as max / min of |x|, 0 as the count of nonzeros.
TensorId vector_norm(ConversionContext& ctx, const KNode& n, TensorId x, double ord,
                     const std::vector<int64_t>& axes, bool keepdim, const std::string& tag = "") {
  const DataType dtype = ctx.net().tensor(x).dtype;
  TensorId a = unary(ctx, n, "abs", x, "abs");
  if (std::isinf(ord)) return reduce(ctx, n, ord > 0 ? "max" : "min", a, axes, keepdim, tag);
  if (ord == 0) {
    TensorId nz = binary(ctx, n, "ne", x, constant_of(ctx, n, 0.0, dtype, "zero"), "nonzero");
    return reduce(ctx, n, "sum", cast_to(ctx, n, nz, dtype, "count"), axes, keepdim, tag);
  }
  if (ord == 1) return reduce(ctx, n, "sum", a, axes, keepdim, tag);
  if (ord == 2)
    return unary(ctx, n, "sqrt",
                 reduce(ctx, n, "sum", binary(ctx, n, "mul", x, x, "square"), axes, keepdim, "sum"), tag);
  TensorId p = binary(ctx, n, "pow", a, constant_of(ctx, n, ord, dtype, "ord"), "pow");
  return binary(ctx, n, "pow", reduce(ctx, n, "sum", p, axes, keepdim, "sum"),
                constant_of(ctx, n, 1.0 / ord, dtype, "inv_ord"), tag);
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  register_accumulate("aten.sum.dim_IntList", "sum", "dim");
  register_accumulate("aten.sum.default", "sum", "");
  register_accumulate("aten.mean.dim", "mean", "dim");
  register_accumulate("aten.mean.default", "mean", "");
  register_accumulate("aten.prod.default", "prod", "");
  register_accumulate("aten.prod.dim_int", "prod", "dim");

  register_extreme("aten.amax.default", "max", true);
  register_extreme("aten.amin.default", "min", true);
  register_extreme("aten.max.default", "max", false);
  register_extreme("aten.min.default", "min", false);
  register_extreme_dim("aten.max.dim", "max");
  register_extreme_dim("aten.min.dim", "min");
  register_arg("aten.argmax.default", "argmax");
  register_arg("aten.argmin.default", "argmin");

  register_variance("aten.var.correction", {"var"});
  register_variance("aten.var.dim", {"var"});
  register_variance("aten.std.correction", {"std"});
  register_variance("aten.std.dim", {"std"});
  register_variance("aten.var_mean.correction", {"var", "mean"});
  register_variance("aten.std_mean.correction", {"std", "mean"});

  register_any_all("aten.any.default", "max", "");
  register_any_all("aten.any.dim", "max", "dim");
  register_any_all("aten.any.dims", "max", "dim");
  register_any_all("aten.all.default", "min", "");
  register_any_all("aten.all.dim", "min", "dim");
  register_any_all("aten.all.dims", "min", "dim");

  // aminmax(self, dim=None, keepdim) -> (min, max).
  Converter aminmax;
  aminmax.target = "aten.aminmax.default";
  aminmax.capability = [](const KGraph& g, const KNode& n) -> std::string {
    reduced_dims(g, n, "dim");
    return extreme_dtype(g, n);
  };
  aminmax.convert = [](ConversionContext& ctx, const KNode& n) {
    const std::vector<int64_t> axes = reduced_dims(ctx.graph(), n, "dim");
    const bool keepdim = !axes.empty() && keepdim_arg(n);
    if (output_used(n, 0)) ctx.set_output(n, 0, extreme(ctx, n, "min", axes, keepdim, "min"));
    if (output_used(n, 1)) ctx.set_output(n, 1, extreme(ctx, n, "max", axes, keepdim, "max"));
  };
  aminmax.limits = "a constant dim or None; floating, integer or bool";
  register_converter(std::move(aminmax));

  // logsumexp = m + log(sum(exp(x - m))) with m = amax(x) (0 where m is ±inf, as torch does, so an
  // all -inf slice gives -inf and a +inf gives +inf rather than NaN).
  Converter logsumexp;
  logsumexp.target = "aten.logsumexp.default";
  logsumexp.capability = [](const KGraph& g, const KNode& n) -> std::string {
    reduced_dims(g, n, "dim");
    return require_floating(value_arg(g, n, "self"), "self");
  };
  logsumexp.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const DataType dtype = ctx.net().tensor(x).dtype;
    const std::vector<int64_t> axes = reduced_dims(ctx.graph(), n, "dim");
    TensorId m = reduce(ctx, n, "max", x, axes, true, "max");
    TensorId inf = constant_of(ctx, n, std::numeric_limits<double>::infinity(), dtype, "inf");
    TensorId infinite = binary(ctx, n, "eq", unary(ctx, n, "abs", m, "abs_max"), inf, "max_is_inf");
    m = ctx.add(n, "where", {infinite, constant_of(ctx, n, 0.0, dtype, "zero"), m}, {}, "shift").outputs[0];
    TensorId e = unary(ctx, n, "exp", binary(ctx, n, "sub", x, m, "centered"), "exp");
    TensorId s = unary(ctx, n, "log", reduce(ctx, n, "sum", e, axes, keepdim_arg(n), "sum"), "log");
    if (!keepdim_arg(n)) {
      const size_t rank = ctx.net().tensor(x).dims.size();
      const std::vector<int64_t> squeezed = axes.empty() ? all_axes(rank) : axes;
      if (!squeezed.empty())
        m = ctx.add(n, "squeeze", {m}, Attributes().set("axes", squeezed), "max_squeezed").outputs[0];
    }
    ctx.set_output(n, 0, binary(ctx, n, "add", s, m, ""));
  };
  logsumexp.limits = "constant dims; floating dtypes";
  register_converter(std::move(logsumexp));

  // linalg_vector_norm(x, ord, dim, keepdim, dtype): sum(|x|^ord)^(1/ord); ord 2 as sqrt(sum(x*x)),
  // 1 as sum(|x|), inf / -inf as max / min of |x|, 0 as the count of nonzeros.
  Converter norm;
  norm.target = "aten.linalg_vector_norm.default";
  norm.capability = [](const KGraph& g, const KNode& n) -> std::string {
    reduced_dims(g, n, "dim");
    if (!n.arg("ord").is_number()) return "ord must be a constant number";
    if (!output_used(n, 0)) return "";
    const DataType out = output_dtype(g, n);
    if (!is_floating(out)) return std::string("result dtype ") + dtype_name(out) + " is not floating";
    return require_floating(value_arg(g, n, "self"), "self");
  };
  norm.convert = [](ConversionContext& ctx, const KNode& n) {
    if (!output_used(n, 0)) return;
    const DataType dtype = output_dtype(ctx.graph(), n);
    TensorId x = cast_to(ctx, n, ctx.tensor(n, "self"), dtype, "cast");
    const std::vector<int64_t> axes = reduced_dims(ctx.graph(), n, "dim");
    ctx.set_output(n, 0, vector_norm(ctx, n, x, n.arg("ord").as_double(), axes, keepdim_arg(n)));
  };
  norm.limits = "a constant ord (2, 1, inf, -inf, 0 or any p); constant dims; floating dtypes";
  register_converter(std::move(norm));

  // _cdist_forward(x1 [.., P, M], x2 [.., R, M], p) -> [.., P, R]: the p-norm over M of
  // x1[.., i, None, :] - x2[.., None, j, :].
  Converter cdist;
  cdist.target = "aten._cdist_forward.default";
  cdist.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& a = value_arg(g, n, "x1");
    const KValue& b = value_arg(g, n, "x2");
    if (a.dims.size() < 2 || a.dims.size() != b.dims.size()) return "x1 and x2 need the same rank ≥ 2";
    if (!n.arg("p").is_number() || n.arg("p").as_double() < 0) return "p must be a number ≥ 0";
    std::string r = require_floating(a, "x1");
    return r.empty() ? require_floating(b, "x2") : r;
  };
  cdist.convert = [](ConversionContext& ctx, const KNode& n) {
    const DataType dtype = result_type(ctx.graph(), n, {"x1", "x2"});
    TensorId a = operand_as(ctx, n, "x1", dtype);
    TensorId b = operand_as(ctx, n, "x2", dtype);
    const int64_t rank = static_cast<int64_t>(ctx.net().tensor(a).dims.size());
    a = ctx.add(n, "unsqueeze", {a}, Attributes().set("axes", std::vector<int64_t>{rank - 1}), "x1_rows")
            .outputs[0];
    b = ctx.add(n, "unsqueeze", {b}, Attributes().set("axes", std::vector<int64_t>{rank - 2}), "x2_cols")
            .outputs[0];
    TensorId diff = binary(ctx, n, "sub", a, b, "diff");
    ctx.set_output(n, 0, vector_norm(ctx, n, diff, n.arg("p").as_double(), {rank}, false));
  };
  cdist.limits = "a number p ≥ 0; floating dtypes (as the norm of the broadcast differences)";
  register_converter(std::move(cdist));

  // _pdist_forward(x [N, M], p) -> [N (N - 1) / 2]: the p-norms of x[i] - x[j] for i < j in
  // row-major order: the [N, N] distance matrix (as cdist), flattened, gathered at the constant
  // positions i * N + j above the diagonal.
  Converter pdist;
  pdist.target = "aten._pdist_forward.default";
  pdist.capability = [](const KGraph& g, const KNode& n) -> std::string {
    const KValue& x = value_arg(g, n, "self");
    if (x.dims.size() != 2 || x.dims[0] == kDynamic) return "self must be [N, M] with a static N";
    if (!n.arg("p").is_number() || n.arg("p").as_double() < 0) return "p must be a number ≥ 0";
    return require_floating(x, "self");
  };
  pdist.convert = [](ConversionContext& ctx, const KNode& n) {
    TensorId x = ctx.tensor(n, "self");
    const int64_t rows = ctx.net().tensor(x).dims[0];
    TensorId a =
        ctx.add(n, "unsqueeze", {x}, Attributes().set("axes", std::vector<int64_t>{1}), "rows").outputs[0];
    TensorId b =
        ctx.add(n, "unsqueeze", {x}, Attributes().set("axes", std::vector<int64_t>{0}), "cols").outputs[0];
    TensorId diff = binary(ctx, n, "sub", a, b, "diff");
    TensorId all = vector_norm(ctx, n, diff, n.arg("p").as_double(), {2}, false, "norms");
    Attributes flat;
    flat.set("start_dim", int64_t{0}).set("end_dim", int64_t{-1});
    all = ctx.add(n, "flatten", {all}, flat, "all_pairs").outputs[0];
    std::vector<int64_t> upper;
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = i + 1; j < rows; ++j) upper.push_back(i * rows + j);
    }
    TensorId index = ctx.constant_i64(n, upper, {static_cast<int64_t>(upper.size())}, "upper");
    ctx.set_output(n, 0, ctx.add(n, "gather", {all, index}, Attributes().set("axis", int64_t{0})).outputs[0]);
  };
  pdist.limits = "self [N, M] with a static N; a number p ≥ 0; floating dtypes";
  register_converter(std::move(pdist));
});

}  // namespace kiln
