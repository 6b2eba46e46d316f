// Ops torch.export would otherwise decompose (or, for hypot / exp2 / fmax / fmin / unfold, leave
// without a decomposition), converted whole from existing engine ops so a graph keeps one node
// per source op: stack, unbind, split, tril / triu, pixel_(un)shuffle, glu, threshold, logit, nan_to_num,
// lerp, addcmul / addcdiv, baddbmm, mv, dot, celu, hypot, atan2, exp2, fmax / fmin, log_sigmoid_forward,
// _prelu_kernel, isposinf / isneginf, sgn, frac, logaddexp, unfold, floor_divide, _safe_softmax. Each accepts
// at least what its decomposition converts (dynamic dims where the decomposition allows them), so keeping it
// whole never turns a converting graph into a fallback.
#include <cmath>
#include <limits>

#include "converters/converter.h"
#include "converters/converter_util.h"

namespace kiln {
namespace {

using Convert = std::function<void(ConversionContext&, const KNode&)>;
using Capability = std::function<std::string(const KGraph&, const KNode&)>;

void add(const std::string& target, Capability capability, Convert convert, const std::string& limits) {
  Converter c;
  c.target = target;
  c.capability = std::move(capability);
  c.convert = std::move(convert);
  c.limits = limits;
  register_converter(std::move(c));
}

std::string floating_self(const KGraph& g, const KNode& n) {
  return require_floating(value_arg(g, n, "self"), "self");
}

// The node's result dtype must be floating; its operands are cast to it.
std::string floating_result(const KGraph& g, const KNode& n) {
  if (!output_used(n, 0)) return "";
  const DataType t = output_dtype(g, n);
  return is_floating(t) ? "" : std::string("result dtype ") + dtype_name(t) + " is not floating";
}

TensorId where(ConversionContext& ctx, const KNode& n, TensorId c, TensorId a, TensorId b,
               const std::string& tag) {
  return ctx.add(n, "where", {c, a, b}, {}, tag).outputs[0];
}

TensorId number(ConversionContext& ctx, const KNode& n, double v, TensorId like, const std::string& tag) {
  return constant_of(ctx, n, v, ctx.net().tensor(like).dtype, tag);
}

TensorId squeeze(ConversionContext& ctx, const KNode& n, TensorId x, int64_t axis, const std::string& tag) {
  return ctx.add(n, "squeeze", {x}, Attributes().set("axes", std::vector<int64_t>{axis}), tag).outputs[0];
}

TensorId unsqueeze(ConversionContext& ctx, const KNode& n, TensorId x, int64_t axis, const std::string& tag) {
  return ctx.add(n, "unsqueeze", {x}, Attributes().set("axes", std::vector<int64_t>{axis}), tag).outputs[0];
}

TensorId transpose(ConversionContext& ctx, const KNode& n, TensorId x, const std::vector<int64_t>& perm,
                   const std::string& tag) {
  return ctx.add(n, "transpose", {x}, Attributes().set("perm", perm), tag).outputs[0];
}

TensorId reshape(ConversionContext& ctx, const KNode& n, TensorId x, const std::vector<int64_t>& shape,
                 const std::string& tag) {
  return ctx.add(n, "reshape", {x}, Attributes().set("shape", shape), tag).outputs[0];
}

// A tensor argument in the node's result dtype.
TensorId as_result(ConversionContext& ctx, const KNode& n, const std::string& name) {
  return operand_as(ctx, n, name, output_dtype(ctx.graph(), n));
}

int64_t static_dim(const KValue& x, int64_t dim, const char* what) {
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  const int64_t a = wrap_axis(dim, static_cast<size_t>(rank));
  KILN_CHECK(a >= 0 && a < rank, what << " " << dim << " is out of range");
  KILN_CHECK(x.dims[a] != kDynamic, what << " " << dim << " must be static");
  return a;
}

// where(mask over the last two dims, x, 0): tril keeps col - row <= k, triu col - row >= k.
void register_triangle(const std::string& target, const std::string& keep) {
  add(
      target,
      [](const KGraph& g, const KNode& n) -> std::string {
        if (value_arg(g, n, "self").dims.size() < 2) return "self must have rank ≥ 2";
        int_arg(n, "diagonal");
        return "";
      },
      [keep](ConversionContext& ctx, const KNode& n) {
        TensorId x = ctx.tensor(n, "self");
        const int64_t rank = static_cast<int64_t>(ctx.net().tensor(x).dims.size());
        TensorId rows =
            ctx.add(n, "arange", {dim_size(ctx, n, x, rank - 2, "rows_n")}, {}, "rows").outputs[0];
        TensorId cols =
            ctx.add(n, "arange", {dim_size(ctx, n, x, rank - 1, "cols_n")}, {}, "cols").outputs[0];
        TensorId diff = binary(ctx, n, "sub", cols, unsqueeze(ctx, n, rows, 1, "rows_col"), "diff");
        TensorId mask =
            binary(ctx, n, keep, diff, ctx.constant_i64(n, {int_arg(n, "diagonal")}, {}, "k"), "mask");
        ctx.set_output(n, 0, where(ctx, n, mask, x, number(ctx, n, 0, x, "zero"), ""));
      },
      "a constant diagonal; dynamic dims");
}

}  // namespace

// Registered when the library loads; no central list names this file.
const ConverterRegistration kRegistered([] {
  add(
      "aten.stack.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        const Arg& tensors = n.arg("tensors");
        if (tensors.kind != Arg::Kind::kList || tensors.list.empty())
          return "tensors must be a non-empty list";
        for (const Arg& t : tensors.list) {
          if (!t.is_value() || g.value(t.value).host_scalar) return "every entry must be a tensor";
        }
        int_arg(n, "dim");
        if (tensors.list.size() > 1024) return "more than 1024 tensors";
        return output_used(n, 0) && output_dtype(g, n) == DataType::kInt8 ? "int8 is not converted" : "";
      },
      [](ConversionContext& ctx, const KNode& n) {
        const auto& list = n.arg("tensors").list;
        const size_t rank = ctx.graph().value(list[0].value).dims.size();
        const int64_t axis = wrap_axis(int_arg(n, "dim"), rank + 1);
        const DataType dtype = output_dtype(ctx.graph(), n);
        std::vector<TensorId> parts;
        for (size_t k = 0; k < list.size(); ++k) {
          TensorId t = cast_to(ctx, n, ctx.tensor(list[k].value), dtype, "cast" + std::to_string(k));
          parts.push_back(unsqueeze(ctx, n, t, axis, "part" + std::to_string(k)));
        }
        ctx.set_output(n, 0, ctx.add(n, "concat", parts, Attributes().set("axis", axis)).outputs[0]);
      },
      "a constant dim; at most 1024 tensors");

  add(
      "aten.unbind.int",
      [](const KGraph& g, const KNode& n) -> std::string {
        static_dim(value_arg(g, n, "self"), int_arg(n, "dim"), "dim");
        return "";
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId x = ctx.tensor(n, "self");
        const int64_t axis = static_dim(ctx.graph().value(n.arg("self").value), int_arg(n, "dim"), "dim");
        for (size_t k = 0; k < n.outputs.size(); ++k) {
          if (!output_used(n, k)) continue;
          Attributes attrs;
          attrs.set("axis", axis).set("wrap", int64_t{0});
          TensorId index = ctx.constant_i64(n, {static_cast<int64_t>(k)}, {}, "index" + std::to_string(k));
          ctx.set_output(n, k,
                         ctx.add(n, "gather", {x, index}, attrs, "item" + std::to_string(k)).outputs[0]);
        }
      },
      "a constant, static dim");

  add(
      "aten.split.Tensor",
      [](const KGraph& g, const KNode& n) -> std::string {
        static_dim(value_arg(g, n, "self"), int_arg(n, "dim"), "dim");
        if (n.arg("split_size").kind != Arg::Kind::kInt || int_arg(n, "split_size") <= 0)
          return "split_size must be a constant int > 0";
        return "";
      },
      [](ConversionContext& ctx, const KNode& n) {
        const KValue& xv = ctx.graph().value(n.arg("self").value);
        const int64_t axis = static_dim(xv, int_arg(n, "dim"), "dim");
        const int64_t size = xv.dims[axis], step = int_arg(n, "split_size");
        std::vector<int64_t> sizes;
        for (int64_t at = 0; at < size || (size == 0 && sizes.empty()); at += step)
          sizes.push_back(std::min(step, size - at));
        Attributes attrs;
        attrs.set("axis", axis).set("sizes", sizes);
        const std::vector<TensorId> outs = ctx.add(n, "split", {ctx.tensor(n, "self")}, attrs).outputs;
        for (size_t k = 0; k < outs.size() && k < n.outputs.size(); ++k) ctx.set_output(n, k, outs[k]);
      },
      "a constant split size over a static dim");

  register_triangle("aten.tril.default", "le");
  register_triangle("aten.triu.default", "ge");

  // pixel_shuffle: [N, C*r*r, H, W] -> [N, C, r, r, H, W] -> [N, C, H, r, W, r] -> [N, C, H*r, W*r].
  for (const bool unshuffle : {false, true}) {
    add(
        unshuffle ? "aten.pixel_unshuffle.default" : "aten.pixel_shuffle.default",
        [unshuffle](const KGraph& g, const KNode& n) -> std::string {
          const KValue& x = value_arg(g, n, "self");
          if (x.dims.size() != 3 && x.dims.size() != 4) return "self must be 3-D or 4-D";
          const size_t r = x.dims.size();
          for (size_t d = r - 3; d < r; ++d) {
            if (x.dims[d] == kDynamic) return "C, H and W must be static";
          }
          const int64_t f = int_arg(n, unshuffle ? "downscale_factor" : "upscale_factor");
          if (f <= 0) return "the factor must be > 0";
          if (!unshuffle && x.dims[r - 3] % (f * f) != 0) return "channels must divide by factor^2";
          if (unshuffle && (x.dims[r - 2] % f != 0 || x.dims[r - 1] % f != 0))
            return "H and W must divide by the factor";
          return "";
        },
        [unshuffle](ConversionContext& ctx, const KNode& n) {
          TensorId x = ctx.tensor(n, "self");
          const Dims dims = ctx.net().tensor(x).dims;
          const bool batched = dims.size() == 4;
          if (!batched) x = unsqueeze(ctx, n, x, 0, "batched");
          const int64_t f = int_arg(n, unshuffle ? "downscale_factor" : "upscale_factor");
          const int64_t c = dims[dims.size() - 3], h = dims[dims.size() - 2], w = dims[dims.size() - 1];
          std::vector<int64_t> out;
          if (!unshuffle) {
            x = reshape(ctx, n, x, {-1, c / (f * f), f, f, h, w}, "split");
            x = transpose(ctx, n, x, {0, 1, 4, 2, 5, 3}, "interleave");
            out = {-1, c / (f * f), h * f, w * f};
          } else {
            x = reshape(ctx, n, x, {-1, c, h / f, f, w / f, f}, "split");
            x = transpose(ctx, n, x, {0, 1, 3, 5, 2, 4}, "gather");
            out = {-1, c * f * f, h / f, w / f};
          }
          x = reshape(ctx, n, x, out, batched ? "" : "merged");
          if (!batched) x = squeeze(ctx, n, x, 0, "");
          ctx.set_output(n, 0, x);
        },
        "3-D or 4-D input with static C, H, W");
  }

  add(
      "aten.glu.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        const KValue& x = value_arg(g, n, "self");
        const int64_t axis = static_dim(x, int_arg(n, "dim"), "dim");
        if (x.dims[axis] % 2 != 0) return "the dim must have an even size";
        return require_floating(x, "self");
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId x = ctx.tensor(n, "self");
        const int64_t axis = static_dim(ctx.graph().value(n.arg("self").value), int_arg(n, "dim"), "dim");
        const int64_t half = ctx.net().tensor(x).dims[axis] / 2;
        TensorId a = slice_axis(ctx, n, x, axis, 0, half, "a");
        TensorId b = slice_axis(ctx, n, x, axis, half, 2 * half, "b");
        TensorId gate =
            ctx.add(n, "activation", {b}, Attributes().set("type", std::string("sigmoid")), "gate")
                .outputs[0];
        ctx.set_output(n, 0, binary(ctx, n, "mul", a, gate, ""));
      },
      "a static dim of even size; floating dtypes");

  add(
      "aten.threshold.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        const KValue& x = value_arg(g, n, "self");
        if (!n.arg("threshold").is_number() || !n.arg("value").is_number())
          return "threshold and value must be numbers";
        return is_floating(x.dtype) || is_integer(x.dtype)
                   ? ""
                   : std::string(dtype_name(x.dtype)) + " is not converted";
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId x = ctx.tensor(n, "self");
        TensorId keep =
            binary(ctx, n, "gt", x, number(ctx, n, n.arg("threshold").as_double(), x, "threshold"), "keep");
        ctx.set_output(n, 0,
                       where(ctx, n, keep, x, number(ctx, n, n.arg("value").as_double(), x, "value"), ""));
      },
      "number threshold and value; floating or integer");

  add(
      "aten.logit.default",
      [](const KGraph& g, const KNode& n) -> std::string { return floating_self(g, n); },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId x = ctx.tensor(n, "self");
        if (!n.arg("eps").is_none()) {  // clamp(x, eps, 1 - eps)
          const double eps = n.arg("eps").as_double();
          x = binary(ctx, n, "max", x, number(ctx, n, eps, x, "eps"), "clamp_lo");
          x = binary(ctx, n, "min", x, number(ctx, n, 1 - eps, x, "one_minus_eps"), "clamped");
        }
        TensorId rest = binary(ctx, n, "sub", number(ctx, n, 1, x, "one"), x, "rest");
        ctx.set_output(n, 0, unary(ctx, n, "log", binary(ctx, n, "div", x, rest, "odds"), ""));
      },
      "floating dtypes; eps None or a number");

  add(
      "aten.nan_to_num.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        const KValue& x = value_arg(g, n, "self");
        for (const char* name : {"nan", "posinf", "neginf"}) {
          if (!n.arg(name).is_none() && !n.arg(name).is_number())
            return std::string(name) + " must be a number";
        }
        return is_floating(x.dtype) || is_integer(x.dtype) || x.dtype == DataType::kBool
                   ? ""
                   : "int8 is not converted";
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId x = ctx.tensor(n, "self");
        const DataType dtype = ctx.net().tensor(x).dtype;
        if (!is_floating(dtype)) {  // integers have no NaN or infinity
          ctx.set_output(n, 0, ctx.add(n, "identity", {x}).outputs[0]);
          return;
        }
        const double big = dtype == DataType::kFloat16    ? 65504.0
                           : dtype == DataType::kBFloat16 ? 3.3895313892515355e38
                                                          : std::numeric_limits<float>::max();
        auto value = [&](const char* name, double fallback) {
          return n.arg(name).is_none() ? fallback : n.arg(name).as_double();
        };
        const double inf = std::numeric_limits<double>::infinity();
        TensorId y = where(ctx, n, binary(ctx, n, "eq", x, number(ctx, n, inf, x, "inf"), "is_posinf"),
                           number(ctx, n, value("posinf", big), x, "posinf"), x, "posinf_replaced");
        y = where(ctx, n, binary(ctx, n, "eq", x, number(ctx, n, -inf, x, "neg_inf"), "is_neginf"),
                  number(ctx, n, value("neginf", -big), x, "neginf"), y, "neginf_replaced");
        ctx.set_output(n, 0,
                       where(ctx, n, binary(ctx, n, "ne", x, x, "is_nan"),
                             number(ctx, n, value("nan", 0), x, "nan"), y, ""));
      },
      "numbers (defaults: 0 and the dtype's largest / lowest finite value); integers unchanged");

  // lerp(a, b, w) as torch computes it: |w| < 0.5 ? a + w * (b - a) : b - (b - a) * (1 - w).
  for (const char* target : {"aten.lerp.Scalar", "aten.lerp.Tensor"}) {
    add(
        target,
        [](const KGraph& g, const KNode& n) -> std::string {
          value_arg(g, n, "end");
          std::string r = floating_self(g, n);
          return r.empty() ? floating_result(g, n) : r;
        },
        [](ConversionContext& ctx, const KNode& n) {
          const DataType dtype = output_dtype(ctx.graph(), n);
          TensorId a = as_result(ctx, n, "self"), b = as_result(ctx, n, "end");
          TensorId w = operand_as(ctx, n, "weight", dtype);
          TensorId d = binary(ctx, n, "sub", b, a, "diff");
          TensorId low = binary(ctx, n, "add", a, binary(ctx, n, "mul", w, d, "w_diff"), "from_start");
          TensorId rest = binary(ctx, n, "sub", constant_of(ctx, n, 1, dtype, "one"), w, "one_minus_w");
          TensorId high = binary(ctx, n, "sub", b, binary(ctx, n, "mul", d, rest, "rest_diff"), "from_end");
          TensorId small = binary(ctx, n, "lt", unary(ctx, n, "abs", w, "abs_w"),
                                  constant_of(ctx, n, 0.5, dtype, "half"), "small");
          ctx.set_output(n, 0, where(ctx, n, small, low, high, ""));
        },
        "floating dtypes (torch's two-sided formula)");
  }

  for (const char* op : {"mul", "div"}) {
    add(
        std::string("aten.addc") + op + ".default",
        [](const KGraph& g, const KNode& n) -> std::string {
          value_arg(g, n, "tensor1");
          value_arg(g, n, "tensor2");
          if (!n.arg("value").is_number()) return "value must be a number";
          return floating_result(g, n);
        },
        [op](ConversionContext& ctx, const KNode& n) {
          const DataType dtype = output_dtype(ctx.graph(), n);
          TensorId t =
              binary(ctx, n, op, as_result(ctx, n, "tensor1"), as_result(ctx, n, "tensor2"), "product");
          const double value = n.arg("value").as_double();
          if (value != 1.0)
            t = binary(ctx, n, "mul", t, constant_of(ctx, n, value, dtype, "value"), "scaled");
          ctx.set_output(n, 0, binary(ctx, n, "add", as_result(ctx, n, "self"), t, ""));
        },
        "a number value; floating results");
  }

  add(
      "aten.baddbmm.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        if (!n.arg("beta").is_number() || !n.arg("alpha").is_number())
          return "beta and alpha must be numbers";
        value_arg(g, n, "batch1");
        value_arg(g, n, "batch2");
        return floating_result(g, n);
      },
      [](ConversionContext& ctx, const KNode& n) {
        const DataType dtype = output_dtype(ctx.graph(), n);
        TensorId p =
            ctx.add(n, "matmul", {as_result(ctx, n, "batch1"), as_result(ctx, n, "batch2")}, {}, "bmm")
                .outputs[0];
        const double alpha = n.arg("alpha").as_double(), beta = n.arg("beta").as_double();
        if (alpha != 1.0) p = binary(ctx, n, "mul", p, constant_of(ctx, n, alpha, dtype, "alpha"), "scaled");
        if (beta == 0.0) {  // torch ignores self then (NaN in it does not propagate)
          ctx.set_output(n, 0, ctx.add(n, "identity", {p}).outputs[0]);
          return;
        }
        TensorId s = as_result(ctx, n, "self");
        if (beta != 1.0)
          s = binary(ctx, n, "mul", s, constant_of(ctx, n, beta, dtype, "beta"), "self_scaled");
        ctx.set_output(n, 0, binary(ctx, n, "add", p, s, ""));
      },
      "number beta and alpha; floating dtypes");

  add(
      "aten.mv.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        if (value_arg(g, n, "self").dims.size() != 2 || value_arg(g, n, "vec").dims.size() != 1)
          return "needs a matrix and a vector";
        return floating_result(g, n);
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId v = unsqueeze(ctx, n, as_result(ctx, n, "vec"), 1, "column");
        TensorId p = ctx.add(n, "matmul", {as_result(ctx, n, "self"), v}, {}, "mm").outputs[0];
        ctx.set_output(n, 0, squeeze(ctx, n, p, 1, ""));
      },
      "floating dtypes");

  add(
      "aten.dot.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        if (value_arg(g, n, "self").dims.size() != 1 || value_arg(g, n, "tensor").dims.size() != 1)
          return "needs two vectors";
        const DataType t = output_used(n, 0) ? output_dtype(g, n) : DataType::kFloat32;
        return is_floating(t) || is_integer(t) ? "" : std::string(dtype_name(t)) + " is not converted";
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId p =
            binary(ctx, n, "mul", as_result(ctx, n, "self"), as_result(ctx, n, "tensor"), "products");
        Attributes attrs;
        attrs.set("op", std::string("sum")).set("axes", std::vector<int64_t>{0});
        ctx.set_output(n, 0, ctx.add(n, "reduce", {p}, attrs).outputs[0]);
      },
      "floating or integer vectors");

  // celu(x, a) = a * elu(x / a).
  add(
      "aten.celu.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        if (!n.arg("alpha").is_number() || n.arg("alpha").as_double() == 0)
          return "alpha must be a nonzero number";
        return floating_self(g, n);
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId x = ctx.tensor(n, "self");
        const double a = n.arg("alpha").as_double();
        TensorId y = binary(ctx, n, "mul", x, number(ctx, n, 1 / a, x, "inv_alpha"), "scaled");
        y = ctx.add(n, "activation", {y}, Attributes().set("type", std::string("elu")).set("alpha", 1.0),
                    "elu")
                .outputs[0];
        ctx.set_output(n, 0, binary(ctx, n, "mul", y, number(ctx, n, a, x, "alpha"), ""));
      },
      "a nonzero number alpha; floating dtypes");

  add(
      "aten.hypot.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        value_arg(g, n, "self");
        return floating_result(g, n);
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId a = as_result(ctx, n, "self"), b = as_result(ctx, n, "other");
        TensorId s = binary(ctx, n, "add", binary(ctx, n, "mul", a, a, "a2"),
                            binary(ctx, n, "mul", b, b, "b2"), "sum");
        ctx.set_output(n, 0, unary(ctx, n, "sqrt", s, ""));
      },
      "floating results (sqrt(a*a + b*b): overflows to inf where a*a does)");

  add(
      "aten.atan2.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        value_arg(g, n, "self");
        return floating_result(g, n);
      },
      [](ConversionContext& ctx, const KNode& n) {
        ctx.set_output(n, 0,
                       binary(ctx, n, "atan2", as_result(ctx, n, "self"), as_result(ctx, n, "other"), ""));
      },
      "floating results (integer operands promote)");

  add(
      "aten.exp2.default",
      [](const KGraph& g, const KNode& n) -> std::string { return floating_result(g, n); },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId x = as_result(ctx, n, "self");
        ctx.set_output(n, 0, binary(ctx, n, "pow", number(ctx, n, 2, x, "two"), x, ""));
      },
      "floating results");

  // fmax / fmin: the number where one side is NaN, max / min otherwise.
  for (const char* op : {"max", "min"}) {
    add(
        std::string("aten.f") + op + ".default",
        [](const KGraph& g, const KNode& n) -> std::string {
          value_arg(g, n, "self");
          const DataType t = result_type(g, n, {"self", "other"});
          return is_floating(t) || is_integer(t) ? "" : std::string(dtype_name(t)) + " is not converted";
        },
        [op](ConversionContext& ctx, const KNode& n) {
          const DataType dtype = result_type(ctx.graph(), n, {"self", "other"});
          TensorId a = operand_as(ctx, n, "self", dtype), b = operand_as(ctx, n, "other", dtype);
          TensorId m = binary(ctx, n, op, a, b, "extreme");
          if (!is_floating(dtype)) {
            ctx.set_output(n, 0, m);
            return;
          }
          m = where(ctx, n, binary(ctx, n, "ne", b, b, "b_nan"), a, m, "b_checked");
          ctx.set_output(n, 0, where(ctx, n, binary(ctx, n, "ne", a, a, "a_nan"), b, m, ""));
        },
        "torch type promotion; NaN on one side gives the other");
  }

  // log_sigmoid_forward(x) -> (-softplus(-x), buffer unused).
  add(
      "aten.log_sigmoid_forward.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        std::string r = require_unused_outputs(n, 1, "buffer");
        return r.empty() ? floating_self(g, n) : r;
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId neg = unary(ctx, n, "neg", ctx.tensor(n, "self"), "neg");
        TensorId sp =
            ctx.add(n, "activation", {neg}, Attributes().set("type", std::string("softplus")), "softplus")
                .outputs[0];
        ctx.set_output(n, 0, unary(ctx, n, "neg", sp, ""));
      },
      "floating dtypes; buffer output unused");

  add(
      "aten._prelu_kernel.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        value_arg(g, n, "weight");
        return floating_self(g, n);
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId x = ctx.tensor(n, "self");
        TensorId w = cast_to(ctx, n, ctx.tensor(n, "weight"), ctx.net().tensor(x).dtype, "weight_cast");
        TensorId positive = binary(ctx, n, "gt", x, number(ctx, n, 0, x, "zero"), "positive");
        ctx.set_output(n, 0, where(ctx, n, positive, x, binary(ctx, n, "mul", x, w, "scaled"), ""));
      },
      "floating dtypes (weight broadcast as torch reshaped it)");

  for (const bool positive : {true, false}) {
    add(
        positive ? "aten.isposinf.default" : "aten.isneginf.default",
        [](const KGraph& g, const KNode& n) -> std::string {
          const KValue& x = value_arg(g, n, "self");
          return is_floating(x.dtype) || is_integer(x.dtype) || x.dtype == DataType::kBool
                     ? ""
                     : "int8 is not converted";
        },
        [positive](ConversionContext& ctx, const KNode& n) {
          TensorId x = ctx.tensor(n, "self");
          if (!is_floating(ctx.net().tensor(x).dtype)) {  // integers are never infinite
            TensorId shape = ctx.add(n, "shape", {x}, {}, "shape").outputs[0];
            ctx.set_output(
                n, 0, ctx.add(n, "fill", {shape}, Attributes().set("dtype", std::string("bool"))).outputs[0]);
            return;
          }
          const double inf = std::numeric_limits<double>::infinity();
          ctx.set_output(n, 0, binary(ctx, n, "eq", x, number(ctx, n, positive ? inf : -inf, x, "inf"), ""));
        },
        "any dtype (integers give false)");
  }

  add(
      "aten.sgn.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        const KValue& x = value_arg(g, n, "self");
        return is_floating(x.dtype) || is_integer(x.dtype)
                   ? ""
                   : std::string(dtype_name(x.dtype)) + " is not converted";
      },
      [](ConversionContext& ctx, const KNode& n) {
        ctx.set_output(n, 0, unary(ctx, n, "sign", ctx.tensor(n, "self"), ""));
      },
      "real dtypes (sign)");

  add(
      "aten.frac.default", [](const KGraph& g, const KNode& n) -> std::string { return floating_self(g, n); },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId x = ctx.tensor(n, "self");
        TensorId negative = binary(ctx, n, "lt", x, number(ctx, n, 0, x, "zero"), "negative");
        TensorId trunc = where(ctx, n, negative, unary(ctx, n, "ceil", x, "ceil"),
                               unary(ctx, n, "floor", x, "floor"), "trunc");
        ctx.set_output(n, 0, binary(ctx, n, "sub", x, trunc, ""));
      },
      "floating dtypes (x - trunc(x))");

  // logaddexp(a, b) = max + log(1 + exp(-|a - b|)); equal operands give a + log 2 (also ±inf).
  add(
      "aten.logaddexp.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        value_arg(g, n, "self");
        value_arg(g, n, "other");
        return floating_result(g, n);
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId a = as_result(ctx, n, "self"), b = as_result(ctx, n, "other");
        TensorId m = binary(ctx, n, "max", a, b, "max");
        TensorId d =
            unary(ctx, n, "neg", unary(ctx, n, "abs", binary(ctx, n, "sub", a, b, "diff"), "abs"), "neg");
        TensorId tail = unary(
            ctx, n, "log",
            binary(ctx, n, "add", number(ctx, n, 1, a, "one"), unary(ctx, n, "exp", d, "exp"), "one_plus"),
            "log");
        TensorId general = binary(ctx, n, "add", m, tail, "general");
        TensorId same = binary(ctx, n, "add", a, number(ctx, n, std::log(2.0), a, "log2"), "same");
        ctx.set_output(n, 0, where(ctx, n, binary(ctx, n, "eq", a, b, "equal"), same, general, ""));
      },
      "floating results");

  // unfold(self, dimension, size, step): windows along a static dim, the window as a new last dim.
  add(
      "aten.unfold.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        const KValue& x = value_arg(g, n, "self");
        if (x.dims.empty()) return "self must have rank ≥ 1";
        const int64_t axis = static_dim(x, int_arg(n, "dimension"), "dimension");
        const int64_t size = int_arg(n, "size"), step = int_arg(n, "step");
        if (size < 0 || step <= 0 || size > x.dims[axis]) return "needs 0 ≤ size ≤ the dim and step > 0";
        return "";
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId x = ctx.tensor(n, "self");
        const Dims dims = ctx.net().tensor(x).dims;
        const int64_t axis =
            static_dim(ctx.graph().value(n.arg("self").value), int_arg(n, "dimension"), "dimension");
        const int64_t size = int_arg(n, "size"), step = int_arg(n, "step");
        const int64_t count = (dims[axis] - size) / step + 1;
        std::vector<int64_t> index;
        for (int64_t w = 0; w < count; ++w)
          for (int64_t j = 0; j < size; ++j) index.push_back(w * step + j);
        Attributes attrs;
        attrs.set("axis", axis).set("wrap", int64_t{0});
        TensorId g =
            ctx.add(n, "gather", {x, ctx.constant_i64(n, index, {count, size}, "windows")}, attrs, "gathered")
                .outputs[0];
        // [pre..., count, size, post...] -> [pre..., count, post..., size]
        const int64_t rank = static_cast<int64_t>(dims.size()) + 1;
        std::vector<int64_t> perm;
        for (int64_t d = 0; d < rank; ++d) {
          if (d != axis + 1) perm.push_back(d);
        }
        perm.push_back(axis + 1);
        ctx.set_output(n, 0, transpose(ctx, n, g, perm, ""));
      },
      "a static dim; constant size and step");

  add(
      "aten.floor_divide.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        value_arg(g, n, "self");
        const DataType t = result_type(g, n, {"self", "other"});
        return is_floating(t) || is_integer(t) ? "" : std::string(dtype_name(t)) + " is not converted";
      },
      [](ConversionContext& ctx, const KNode& n) {
        const DataType dtype = result_type(ctx.graph(), n, {"self", "other"});
        TensorId a = operand_as(ctx, n, "self", dtype), b = operand_as(ctx, n, "other", dtype);
        if (is_integer(dtype)) {
          ctx.set_output(n, 0, binary(ctx, n, "floor_div", a, b, ""));
          return;
        }
        ctx.set_output(n, 0, unary(ctx, n, "floor", binary(ctx, n, "div", a, b, "quotient"), ""));
      },
      "floating or integer (integers exact; floats floor(a / b))");

  // _safe_softmax: softmax, with rows that are all -inf giving 0 instead of NaN.
  add(
      "aten._safe_softmax.default",
      [](const KGraph& g, const KNode& n) -> std::string {
        int_arg(n, "dim");
        std::string r = floating_self(g, n);
        return r.empty() ? floating_result(g, n) : r;
      },
      [](ConversionContext& ctx, const KNode& n) {
        TensorId x = as_result(ctx, n, "self");
        const int64_t axis = int_arg(n, "dim");
        TensorId s = ctx.add(n, "softmax", {x}, Attributes().set("axis", axis), "softmax").outputs[0];
        Attributes m;
        m.set("op", std::string("max")).set("axes", std::vector<int64_t>{axis}).set("keepdim", int64_t{1});
        TensorId top = ctx.add(n, "reduce", {x}, m, "max").outputs[0];
        const double inf = std::numeric_limits<double>::infinity();
        TensorId masked = binary(ctx, n, "eq", top, number(ctx, n, -inf, x, "neg_inf"), "all_masked");
        ctx.set_output(n, 0, where(ctx, n, masked, number(ctx, n, 0, x, "zero"), s, ""));
      },
      "floating dtypes");
});

}  // namespace kiln
