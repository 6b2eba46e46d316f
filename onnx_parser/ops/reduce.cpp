// ONNX reductions, arg-reductions, TopK and CumSum.
#include <algorithm>
#include <limits>
#include <numeric>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

// Reduce*: axes from the input (opset 18; ReduceSum from 13) or the attribute; an empty list
// reduces everything unless noop_with_empty_axes.
enum class Pre { kNone, kAbs, kSquare, kExp };
enum class Post { kNone, kSqrt, kLog };

ImportFn reduce(const std::string& op, Pre pre = Pre::kNone, Post post = Post::kNone) {
  return [op, pre, post](NodeContext& ctx) {
    const int64_t keepdims = ctx.attr_int("keepdims", 1);
    const bool noop = ctx.attr_int("noop_with_empty_axes", 0) != 0;
    std::vector<int64_t> axes;
    if (ctx.has_input(1)) {
      auto v = ctx.int_values(1);
      if (!v) ctx.fail("axes must be known while parsing");
      axes = *v;
    } else if (ctx.has_attr("axes")) {
      axes = ctx.attr_ints("axes");
    }
    TensorId x = ctx.input(0);
    if (axes.empty() && noop) {
      ctx.set_output(0, ctx.add1("identity", {x}));
      return;
    }
    const int64_t rank = static_cast<int64_t>(ctx.desc(0).dims.size());
    if (axes.empty()) {
      axes.resize(static_cast<size_t>(rank));
      std::iota(axes.begin(), axes.end(), 0);
    }
    const TensorDesc xd = ctx.desc(0);
    const bool extremum = op == "max" || op == "min" || pre == Pre::kExp;
    std::vector<int64_t> norm_axes;
    for (int64_t a : axes) norm_axes.push_back(normalize_axis(a, rank, ctx));
    bool empty = false;
    for (int64_t a : norm_axes) empty = empty || xd.dims[static_cast<size_t>(a)] == 0;
    if (extremum && empty) {
      // Over an empty set: the identity of max / min (-inf / +inf, bool false / true), log(0).
      Dims out;
      for (int64_t d = 0; d < rank; ++d) {
        const bool reduced = std::find(norm_axes.begin(), norm_axes.end(), d) != norm_axes.end();
        if (!reduced) out.push_back(xd.dims[static_cast<size_t>(d)]);
        if (reduced && keepdims) out.push_back(1);
      }
      if (!is_static(out)) ctx.fail("an empty reduction needs static dims");
      const double inf = std::numeric_limits<double>::infinity();
      double v = op == "min" ? inf : -inf;
      if (xd.dtype == DataType::kBool) v = op == "min" ? 1.0 : 0.0;
      if (is_integral(xd.dtype) && xd.dtype != DataType::kBool) ctx.fail("an empty integer max / min");
      TensorId one = ctx.scalar(xd.dtype, v, static_cast<int>(out.size()));
      ctx.set_output(0, ctx.add1("expand", {one}, Attributes().set("shape", std::vector<int64_t>(out))));
      return;
    }
    if (xd.dtype == DataType::kBool && (op == "max" || op == "min")) {  // any / all
      TensorId y = ctx.add1("reduce", {ctx.cast(x, DataType::kInt32)},
                            Attributes().set("op", op).set("axes", axes).set("keepdim", keepdims));
      ctx.set_output(0, ctx.cast(y, DataType::kBool));
      return;
    }
    if (pre == Pre::kAbs) x = ctx.unary("abs", x);
    if (pre == Pre::kSquare) x = ctx.elementwise("mul", x, x);
    TensorId shift = -1;
    if (pre == Pre::kExp) {  // log(sum(exp(x - max))) + max
      shift =
          ctx.add1("reduce", {x},
                   Attributes().set("op", std::string("max")).set("axes", axes).set("keepdim", int64_t{1}));
      x = ctx.unary("exp", ctx.elementwise("sub", x, shift));
    }
    TensorId y =
        ctx.add1("reduce", {x}, Attributes().set("op", op).set("axes", axes).set("keepdim", keepdims));
    if (post == Post::kSqrt) y = ctx.unary("sqrt", y);
    if (post == Post::kLog) y = ctx.unary("log", y);
    if (shift >= 0) {
      if (!keepdims) {
        std::vector<int64_t> norm;
        for (int64_t a : axes) norm.push_back(normalize_axis(a, rank, ctx));
        shift = ctx.add1("squeeze", {shift}, Attributes().set("axes", norm));
      }
      y = ctx.elementwise("add", y, shift);
    }
    ctx.set_output(0, y);
  };
}

ImportFn arg_reduce(const std::string& op) {
  return [op](NodeContext& ctx) {
    const TensorDesc x = ctx.desc(0);
    const int64_t axis = normalize_axis(ctx.attr_int("axis", 0), static_cast<int64_t>(x.dims.size()), ctx);
    Attributes attrs;
    attrs.set("op", op).set("axis", axis).set("keepdim", ctx.attr_int("keepdims", 1));
    if (ctx.attr_int("select_last_index", 0) == 0) {
      ctx.set_output(0, ctx.add1("arg_reduce", {ctx.input(0)}, attrs));
      return;
    }
    // The last index among ties: the first one of the reversed axis, mapped back.
    const int64_t d = x.dims[axis];
    if (d < 0) ctx.fail("select_last_index needs a static dim on the axis");
    check_host_elements(d, "a reversed axis", ctx);
    std::vector<int64_t> rev(static_cast<size_t>(d));
    for (int64_t i = 0; i < d; ++i) rev[i] = d - 1 - i;
    TensorId flipped =
        ctx.add1("gather", {ctx.input(0), ctx.constant_i64(rev)}, Attributes().set("axis", axis));
    TensorId idx = ctx.add1("arg_reduce", {flipped}, attrs);
    ctx.set_output(0, ctx.elementwise("sub", ctx.scalar(DataType::kInt64, static_cast<double>(d - 1)), idx));
  };
}

void import_topk(NodeContext& ctx) {
  auto k = ctx.int_values(1);
  if (!k || k->size() != 1) ctx.fail("K must be a known one-element tensor");
  Layer& l = ctx.add("topk", {ctx.input(0)},
                     Attributes()
                         .set("k", k->at(0))
                         .set("axis", ctx.attr_int("axis", -1))
                         .set("largest", ctx.attr_int("largest", 1))
                         .set("sorted", ctx.attr_int("sorted", 1)));
  const std::vector<TensorId> outs = l.outputs;
  ctx.set_output(0, outs[0]);
  ctx.set_output(1, outs[1]);
}

void import_cumsum(NodeContext& ctx) {
  auto axis = ctx.int_values(1);
  if (!axis || axis->size() != 1) ctx.fail("axis must be a known one-element tensor");
  ctx.set_output(0, ctx.add1("cumsum", {ctx.input(0)},
                             Attributes()
                                 .set("axis", axis->at(0))
                                 .set("exclusive", ctx.attr_int("exclusive", 0))
                                 .set("reverse", ctx.attr_int("reverse", 0))));
}

// CumProd: a log-step scan (y *= y shifted by 1, 2, 4, ... along the axis, ones shifted in), for a
// static axis; exclusive shifts the result by one, reverse flips before and after (gathers).
void import_cumprod(NodeContext& ctx) {
  auto axis_v = ctx.int_values(1);
  if (!axis_v || axis_v->size() != 1) ctx.fail("axis must be a known one-element tensor");
  const TensorDesc x = ctx.desc(0);
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  const int64_t axis = normalize_axis(axis_v->at(0), rank, ctx);
  const int64_t n = x.dims[static_cast<size_t>(axis)];
  if (n == kDynamic) ctx.fail("the axis must have a static size");
  check_host_elements(n, "CumProd's axis", ctx);
  std::vector<int64_t> reversed(static_cast<size_t>(n));
  std::iota(reversed.rbegin(), reversed.rend(), 0);
  auto flip = [&](TensorId t) {
    return ctx.add1("gather", {t, ctx.constant_i64(reversed)}, Attributes().set("axis", axis));
  };
  // t shifted by k along the axis: its first n - k entries after k ones
  auto shift = [&](TensorId t, int64_t k) {
    TensorId head = ctx.add1("slice", {t},
                             Attributes()
                                 .set("axes", std::vector<int64_t>{axis})
                                 .set("starts", std::vector<int64_t>{0})
                                 .set("ends", std::vector<int64_t>{n - k}));
    std::vector<int64_t> pads(static_cast<size_t>(2 * (rank - axis)), 0);
    pads[static_cast<size_t>(2 * (rank - 1 - axis))] = k;
    return ctx.add1("pad", {head}, Attributes().set("pads", pads).set("value", 1.0));
  };
  const bool reverse = ctx.attr_int("reverse", 0) != 0, exclusive = ctx.attr_int("exclusive", 0) != 0;
  TensorId y = reverse ? flip(ctx.input(0)) : ctx.input(0);
  for (int64_t k = 1; k < n; k *= 2) y = ctx.elementwise("mul", y, shift(y, k));
  if (exclusive && n > 0) y = shift(y, 1);
  if (reverse) y = flip(y);
  ctx.set_output(0, y == ctx.input(0) ? ctx.add1("identity", {y}) : y);
}

const ImporterRegistration kRegistered{
    {"ReduceSum", reduce("sum")},
    {"ReduceMean", reduce("mean")},
    {"ReduceMax", reduce("max")},
    {"ReduceMin", reduce("min")},
    {"ReduceProd", reduce("prod")},
    {"ReduceL1", reduce("sum", Pre::kAbs)},
    {"ReduceL2", reduce("sum", Pre::kSquare, Post::kSqrt)},
    {"ReduceSumSquare", reduce("sum", Pre::kSquare)},
    {"ReduceLogSum", reduce("sum", Pre::kNone, Post::kLog)},
    {"ReduceLogSumExp", reduce("sum", Pre::kExp, Post::kLog)},
    {"ArgMax", arg_reduce("argmax")},
    {"ArgMin", arg_reduce("argmin")},
    {"TopK", import_topk},
    {"CumSum", import_cumsum},
    {"CumProd", import_cumprod},
};

}  // namespace
}  // namespace kiln::onnx
