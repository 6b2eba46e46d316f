// ONNX shape, layout, indexing and tensor-creation operators.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

constexpr int64_t kToEnd = std::numeric_limits<int64_t>::max();

int64_t rank_of(const NodeContext& ctx, int i) { return static_cast<int64_t>(ctx.desc(i).dims.size()); }

std::vector<int64_t> known_ints(NodeContext& ctx, int i, const char* what) {
  auto v = ctx.int_values(i);
  if (!v)
    ctx.fail(std::string(what) + " (input " + std::to_string(i) +
             ") must be known while parsing: "
             "a constant, or computed from static shapes");
  return *v;
}

// A 1-D int64 shape tensor built from known entries and run-time dims of `x` (ONNX Reshape's 0).
TensorId shape_with_dims_of(NodeContext& ctx, TensorId x, const std::vector<int64_t>& target,
                            const std::vector<bool>& copy_dim) {
  std::vector<TensorId> parts;
  TensorId shape = ctx.add1("shape", {x});
  for (size_t i = 0; i < target.size(); ++i) {
    if (copy_dim[i]) {
      parts.push_back(ctx.add1("gather", {shape, ctx.constant_i64({static_cast<int64_t>(i)})},
                               Attributes().set("axis", int64_t{0})));
    } else {
      parts.push_back(ctx.constant_i64({target[i]}));
    }
  }
  return ctx.add1("concat", parts, Attributes().set("axis", int64_t{0}));
}

void import_reshape(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const bool allowzero = ctx.attr_int("allowzero", 0) != 0;
  auto target = ctx.int_values(1);
  if (!target) {
    // Entries computed at run time (a dynamic batch through Shape -> Gather -> Concat): the
    // shape tensor goes in as is; ONNX's "0 copies the input dim" cannot be told from a value
    // there, so only allowzero models or targets without 0 are exact.
    const TensorDesc s = ctx.desc(1);
    if (!allowzero && s.values) {
      for (int64_t v : *s.values) {
        if (v == 0)
          ctx.fail("a shape computed at run time with a 0 entry (copy the input dim) is not supported");
      }
    }
    ctx.set_output(0, ctx.add1("reshape", {ctx.input(0), ctx.input(1)}));
    return;
  }
  std::vector<int64_t> t = *target;
  std::vector<bool> copy(t.size(), false);
  bool runtime_copy = false;
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] == 0 && !allowzero) {
      if (i >= x.dims.size()) ctx.fail("shape entry 0 at " + std::to_string(i) + " has no input dim to copy");
      if (x.dims[i] >= 0) {
        t[i] = x.dims[i];
      } else {
        copy[i] = true;
        runtime_copy = true;
      }
    }
  }
  if (runtime_copy) {
    ctx.set_output(0, ctx.add1("reshape", {ctx.input(0), shape_with_dims_of(ctx, ctx.input(0), t, copy)}));
    return;
  }
  ctx.set_output(0, ctx.add1("reshape", {ctx.input(0)}, Attributes().set("shape", t)));
}

void import_flatten(NodeContext& ctx) {
  const int64_t rank = rank_of(ctx, 0);
  int64_t axis = ctx.attr_int("axis", 1);
  if (axis < -rank || axis > rank) ctx.fail("axis is out of range");
  if (axis < 0) axis += rank;
  TensorId x = ctx.input(0);
  if (axis == rank) {  // [prod(all), 1]
    x = ctx.add1("flatten", {x}, Attributes().set("start_dim", int64_t{0}).set("end_dim", int64_t{-1}));
    ctx.set_output(0, ctx.add1("unsqueeze", {x}, Attributes().set("axes", std::vector<int64_t>{1})));
    return;
  }
  if (axis == 0) {  // [1, prod(all)]
    x = ctx.add1("flatten", {x}, Attributes().set("start_dim", int64_t{0}).set("end_dim", int64_t{-1}));
    ctx.set_output(0, ctx.add1("unsqueeze", {x}, Attributes().set("axes", std::vector<int64_t>{0})));
    return;
  }
  x = ctx.add1("flatten", {x}, Attributes().set("start_dim", axis).set("end_dim", int64_t{-1}));
  ctx.set_output(
      0, ctx.add1("flatten", {x}, Attributes().set("start_dim", int64_t{0}).set("end_dim", axis - 1)));
}

void import_transpose(NodeContext& ctx) {
  const int64_t rank = rank_of(ctx, 0);
  std::vector<int64_t> rev(static_cast<size_t>(rank));
  std::iota(rev.rbegin(), rev.rend(), 0);
  ctx.set_output(0,
                 ctx.add1("transpose", {ctx.input(0)}, Attributes().set("perm", ctx.attr_ints("perm", rev))));
}

std::vector<int64_t> axes_of(NodeContext& ctx, int input, bool* given) {
  // Opset 13+: axes as an input (Squeeze, Unsqueeze, Reduce*); older: the attribute.
  *given = true;
  if (ctx.has_input(input)) return known_ints(ctx, input, "axes");
  if (ctx.has_attr("axes")) return ctx.attr_ints("axes");
  *given = false;
  return {};
}

void import_squeeze(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  bool given;
  std::vector<int64_t> axes = axes_of(ctx, 1, &given);
  if (!given) {
    for (size_t i = 0; i < x.dims.size(); ++i) {
      if (x.dims[i] < 0) ctx.fail("Squeeze without axes needs static dims");
      if (x.dims[i] == 1) axes.push_back(static_cast<int64_t>(i));
    }
  }
  if (axes.empty()) {
    ctx.set_output(0, ctx.add1("identity", {ctx.input(0)}));
    return;
  }
  ctx.set_output(0, ctx.add1("squeeze", {ctx.input(0)}, Attributes().set("axes", axes)));
}

void import_unsqueeze(NodeContext& ctx) {
  bool given;
  std::vector<int64_t> axes = axes_of(ctx, 1, &given);
  if (!given) ctx.fail("needs axes");
  const int64_t out_rank = rank_of(ctx, 0) + static_cast<int64_t>(axes.size());
  for (int64_t& a : axes) a = normalize_axis(a, out_rank, ctx);
  std::sort(axes.begin(), axes.end());
  ctx.set_output(0, ctx.add1("unsqueeze", {ctx.input(0)}, Attributes().set("axes", axes)));
}

void import_concat(NodeContext& ctx) {
  std::vector<TensorId> in;
  for (int i = 0; i < ctx.num_inputs(); ++i) {
    if (ctx.has_input(i)) in.push_back(ctx.input(i));
  }
  ctx.set_output(0, ctx.add1("concat", in, Attributes().set("axis", ctx.attr_int("axis"))));
}

void import_split(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const int64_t axis = normalize_axis(ctx.attr_int("axis", 0), static_cast<int64_t>(x.dims.size()), ctx);
  const int64_t dim = x.dims[axis];
  std::vector<int64_t> sizes;
  if (ctx.has_input(1)) {
    sizes = known_ints(ctx, 1, "split");
  } else if (ctx.has_attr("split")) {
    sizes = ctx.attr_ints("split");
  } else {
    const int64_t n = ctx.has_attr("num_outputs") ? ctx.attr_int("num_outputs") : ctx.num_outputs();
    if (dim < 0) ctx.fail("an even Split needs a static dim on the split axis");
    if (n != ctx.num_outputs() || n < 1) ctx.fail("num_outputs must equal the node's outputs");
    const int64_t chunk = (dim + n - 1) / n;  // ONNX: the last chunk is smaller
    for (int64_t left = dim; left > 0; left -= chunk) sizes.push_back(std::min(chunk, left));
    while (static_cast<int64_t>(sizes.size()) < n) sizes.push_back(0);
  }
  Layer& l = ctx.add("split", {ctx.input(0)}, Attributes().set("axis", axis).set("sizes", sizes));
  const std::vector<TensorId> outs = l.outputs;
  for (size_t i = 0; i < outs.size(); ++i) ctx.set_output(static_cast<int>(i), outs[i]);
}

// Slice of one axis from a known start to an end computed at run time (a dynamic sequence
// length: position_ids[:, :seq]), step 1: a gather of arange(start, end) with ONNX's end rules
// (negative counts from the dim, clamped to it) computed on the tracked end value.
bool dynamic_end_slice(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  auto starts = ctx.int_values(1);
  auto axes = ctx.int_values(3);
  auto steps = ctx.int_values(4);
  if (!starts || starts->size() != 1 || ctx.int_values(2) || !ctx.net().desc(ctx.input(2)).values)
    return false;
  if (ctx.has_input(3) && (!axes || axes->size() != 1)) return false;
  if (ctx.has_input(4) && (!steps || steps->size() != 1 || steps->at(0) != 1)) return false;
  const int64_t axis = normalize_axis(ctx.has_input(3) ? axes->at(0) : 0, rank, ctx);
  const int64_t d = x.dims[axis];
  if (d < 0) return false;
  const int64_t start = std::clamp<int64_t>(starts->at(0) < 0 ? starts->at(0) + d : starts->at(0), 0, d);
  TensorId e = ctx.cast(ctx.input(2), DataType::kInt64);
  TensorId dd = ctx.scalar(DataType::kInt64, static_cast<double>(d), 1);
  TensorId neg = ctx.cast(ctx.elementwise("lt", e, ctx.scalar(DataType::kInt64, 0.0, 1)), DataType::kInt64);
  e = ctx.elementwise("add", e, ctx.elementwise("mul", neg, dd));
  e = ctx.elementwise(
      "min", ctx.elementwise("max", e, ctx.scalar(DataType::kInt64, static_cast<double>(start), 1)), dd);
  TensorId idx = ctx.add1("arange", {e}, Attributes().set("start", static_cast<double>(start)));
  ctx.set_output(0, ctx.add1("gather", {ctx.input(0), idx}, Attributes().set("axis", axis)));
  return true;
}

void import_slice(NodeContext& ctx) {
  if (dynamic_end_slice(ctx)) return;
  const TensorDesc x = ctx.desc(0);
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  std::vector<int64_t> starts = known_ints(ctx, 1, "starts");
  std::vector<int64_t> ends = known_ints(ctx, 2, "ends");
  std::vector<int64_t> axes(starts.size());
  std::iota(axes.begin(), axes.end(), 0);
  if (ctx.has_input(3)) axes = known_ints(ctx, 3, "axes");
  std::vector<int64_t> steps(starts.size(), 1);
  if (ctx.has_input(4)) steps = known_ints(ctx, 4, "steps");
  if (axes.size() != starts.size() || ends.size() != starts.size() || steps.size() != starts.size()) {
    ctx.fail("starts, ends, axes and steps must have one entry per sliced axis");
  }
  TensorId y = ctx.input(0);
  std::vector<int64_t> fwd_axes, fwd_starts, fwd_ends, fwd_steps;
  for (size_t i = 0; i < axes.size(); ++i) {
    const int64_t a = normalize_axis(axes[i], rank, ctx);
    if (steps[i] == 0) ctx.fail("a step of 0");
    if (steps[i] < 0) {
      // A negative step: reverse the axis with a gather (static dim), then slice forward.
      const int64_t d = x.dims[a];
      if (d < 0) ctx.fail("a negative step needs a static dim");
      check_host_elements(d, "a reversed axis", ctx);
      auto clampi = [&](int64_t v, int64_t lo, int64_t hi) { return std::max(lo, std::min(hi, v)); };
      int64_t s = starts[i] < 0 ? starts[i] + d : starts[i];
      int64_t e = ends[i] < 0 ? ends[i] + d : ends[i];
      s = clampi(s, -1, d - 1);
      e = clampi(e, -1, d - 1);
      std::vector<int64_t> idx;
      for (int64_t k = s; k > e; k += steps[i]) idx.push_back(k);
      TensorId ids = ctx.constant_i64(idx);
      y = ctx.add1("gather", {y, ids}, Attributes().set("axis", a));
      continue;
    }
    fwd_axes.push_back(a);
    fwd_starts.push_back(starts[i]);
    fwd_ends.push_back(ends[i]);
    fwd_steps.push_back(steps[i]);
  }
  if (!fwd_axes.empty()) {
    for (int64_t& e : fwd_ends) {
      if (e >= (int64_t{1} << 62)) e = kToEnd;
    }
    y = ctx.add1("slice", {y},
                 Attributes()
                     .set("axes", fwd_axes)
                     .set("starts", fwd_starts)
                     .set("ends", fwd_ends)
                     .set("steps", fwd_steps));
  } else if (y == ctx.input(0)) {
    y = ctx.add1("identity", {y});
  }
  ctx.set_output(0, y);
}

void import_gather(NodeContext& ctx) {
  ctx.set_output(
      0, ctx.add1("gather", {ctx.input(0), ctx.input(1)}, Attributes().set("axis", ctx.attr_int("axis", 0))));
}

// ReverseSequence: along time_axis, the first sequence_lens[b] entries of each batch b reversed
// (lengths known while parsing; static dims): one gather_elements with host-built indices.
void import_reverse_sequence(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const int64_t time_axis = ctx.attr_int("time_axis", 0), batch_axis = ctx.attr_int("batch_axis", 1);
  if (x.dims.size() < 2 || !is_static(x.dims)) ctx.fail("needs a static input of rank >= 2");
  if ((time_axis != 0 && time_axis != 1) || batch_axis != 1 - time_axis)
    ctx.fail("time_axis and batch_axis must be 0 and 1 in some order");
  const std::vector<int64_t> lens = known_ints(ctx, 1, "sequence_lens");
  const int64_t n = volume(x.dims);
  check_host_elements(n, "ReverseSequence's index", ctx);
  const int64_t steps = x.dims[static_cast<size_t>(time_axis)],
                batch = x.dims[static_cast<size_t>(batch_axis)];
  if (static_cast<int64_t>(lens.size()) != batch) ctx.fail("sequence_lens needs one length per batch entry");
  int64_t inner = 1;
  for (size_t d = 2; d < x.dims.size(); ++d) inner *= x.dims[d];
  std::vector<int64_t> index(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t outer = i / inner, a0 = outer / x.dims[1], a1 = outer % x.dims[1];
    const int64_t t = time_axis == 0 ? a0 : a1, b = time_axis == 0 ? a1 : a0;
    const int64_t len = std::clamp<int64_t>(lens[static_cast<size_t>(b)], 0, steps);
    index[static_cast<size_t>(i)] = t < len ? len - 1 - t : t;
  }
  ctx.set_output(0, ctx.add1("gather_elements", {ctx.input(0), ctx.constant_i64(index, x.dims)},
                             Attributes().set("axis", time_axis)));
}

void import_gather_elements(NodeContext& ctx) {
  ctx.set_output(0, ctx.add1("gather_elements", {ctx.input(0), ctx.input(1)},
                             Attributes().set("axis", ctx.attr_int("axis", 0))));
}

// ScatterElements (and opset 9-10's Scatter, the same without reduction): negative indices count
// from the end of the axis.
void import_scatter_elements(NodeContext& ctx) {
  std::string reduction = ctx.attr_string("reduction", std::string("none"));
  const int64_t axis = normalize_axis(ctx.attr_int("axis", 0), rank_of(ctx, 0), ctx);
  TensorId idx = ctx.input(1);
  const DataType it = ctx.desc(1).dtype;
  TensorId size =
      ctx.cast(ctx.add1("gather", {ctx.add1("shape", {ctx.input(0)}), ctx.constant_i64({axis}, {})},
                        Attributes().set("axis", int64_t{0})),
               it);
  idx = ctx.add1("where",
                 {ctx.elementwise("lt", idx, ctx.scalar(it, 0.0)), ctx.elementwise("add", idx, size), idx});
  ctx.set_output(0, ctx.add1("scatter_elements", {ctx.input(0), idx, ctx.input(2)},
                             Attributes().set("axis", axis).set("reduction", reduction)));
}

void import_shape(NodeContext& ctx) {
  TensorId s = ctx.add1("shape", {ctx.input(0)});
  const int64_t rank = rank_of(ctx, 0);
  int64_t start = ctx.attr_int("start", 0), end = ctx.attr_int("end", rank);
  if (start != 0 || end != rank) {
    start = std::clamp<int64_t>(start < 0 ? start + rank : start, 0, rank);
    end = std::clamp<int64_t>(end < 0 ? end + rank : end, 0, rank);
    s = ctx.add1("slice", {s},
                 Attributes()
                     .set("axes", std::vector<int64_t>{0})
                     .set("starts", std::vector<int64_t>{start})
                     .set("ends", std::vector<int64_t>{std::max(start, end)}));
  }
  ctx.set_output(0, s);
}

void import_size(NodeContext& ctx) {
  TensorId s = ctx.add1("shape", {ctx.input(0)});
  ctx.set_output(0, ctx.add1("reduce", {s},
                             Attributes()
                                 .set("op", std::string("prod"))
                                 .set("axes", std::vector<int64_t>{0})
                                 .set("keepdim", int64_t{0})));
}

void import_expand(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  auto shape = ctx.int_values(1);
  if (!shape) {
    ctx.set_output(0, ctx.add1("expand", {ctx.input(0), ctx.input(1)}));
    return;
  }
  // ONNX broadcasts both ways: a 1 in the shape keeps the input's dim.
  std::vector<int64_t> s = *shape;
  const size_t rank = std::max(s.size(), x.dims.size());
  std::vector<int64_t> out(rank);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t a = i + x.dims.size() >= rank ? x.dims[i + x.dims.size() - rank] : 1;
    const int64_t b = i + s.size() >= rank ? s[i + s.size() - rank] : 1;
    if (b == 1)
      out[i] = a < 0 ? -1 : a;
    else if (a == 1 || a == b || a < 0)
      out[i] = b;
    else
      ctx.fail("shape " + to_string(s) + " does not broadcast with the input " + to_string(x.dims));
  }
  ctx.set_output(0, ctx.add1("expand", {ctx.input(0)}, Attributes().set("shape", out)));
}

void import_tile(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  std::vector<int64_t> reps = known_ints(ctx, 1, "repeats");
  if (reps.size() != x.dims.size()) ctx.fail("repeats needs one entry per dim");
  if (!is_static(x.dims)) ctx.fail("Tile needs static input dims");
  for (int64_t r : reps) {
    if (r < 0) ctx.fail("repeats must be >= 0");
  }
  Dims all(x.dims);
  all.insert(all.end(), reps.begin(), reps.end());
  volume(all);  // refuses sizes past 2^62
  // [d0, d1] -> [1, d0, 1, d1] -> expand [r0, d0, r1, d1] -> reshape [r0 d0, r1 d1]
  std::vector<int64_t> inter, expanded, out;
  for (size_t i = 0; i < reps.size(); ++i) {
    inter.push_back(1);
    inter.push_back(x.dims[i]);
    expanded.push_back(reps[i]);
    expanded.push_back(x.dims[i]);
    out.push_back(reps[i] * x.dims[i]);
  }
  TensorId y = ctx.add1("reshape", {ctx.input(0)}, Attributes().set("shape", inter));
  y = ctx.add1("expand", {y}, Attributes().set("shape", expanded));
  ctx.set_output(0, ctx.add1("reshape", {y}, Attributes().set("shape", out)));
}

void import_constant(NodeContext& ctx) {
  if (ctx.has_attr("value")) {
    ctx.set_output(0, ctx.attr_tensor("value"));
    return;
  }
  Network& net = ctx.net();
  const std::string name = ctx.name();
  if (ctx.has_attr("value_float")) {
    float v = static_cast<float>(ctx.attr_float("value_float"));
    ctx.set_output(0, net.add_constant(name, DataType::kFloat32, {}, &v, 4));
  } else if (ctx.has_attr("value_floats")) {
    std::vector<float> v;
    for (double d : ctx.attr_floats("value_floats")) v.push_back(static_cast<float>(d));
    ctx.set_output(0, net.add_constant(name, DataType::kFloat32, {static_cast<int64_t>(v.size())}, v.data(),
                                       4 * v.size()));
  } else if (ctx.has_attr("value_int")) {
    int64_t v = ctx.attr_int("value_int");
    ctx.set_output(0, net.add_constant(name, DataType::kInt64, {}, &v, 8));
  } else if (ctx.has_attr("value_ints")) {
    std::vector<int64_t> v = ctx.attr_ints("value_ints");
    ctx.set_output(0, net.add_constant(name, DataType::kInt64, {static_cast<int64_t>(v.size())}, v.data(),
                                       8 * v.size()));
  } else {
    ctx.fail("needs value, value_float(s) or value_int(s) (string and sparse constants are not supported)");
  }
}

void import_constant_of_shape(NodeContext& ctx) {
  DataType dt = DataType::kFloat32;
  double value = 0.0;
  if (ctx.has_attr("value")) {
    TensorId v = ctx.attr_tensor("value");
    dt = ctx.net().desc(v).dtype;
    const Tensor& t = ctx.net().tensor(v);
    if (!t.data || t.data->size() != dtype_size(dt)) ctx.fail("value must hold one element");
    if (dt == DataType::kFloat32) {
      float f;
      std::memcpy(&f, t.data->data(), 4);
      value = f;
    } else if (dt == DataType::kInt64) {
      int64_t i;
      std::memcpy(&i, t.data->data(), 8);
      value = static_cast<double>(i);
    } else if (dt == DataType::kInt32) {
      int32_t i;
      std::memcpy(&i, t.data->data(), 4);
      value = i;
    } else if (dt == DataType::kBool || dt == DataType::kInt8)
      value = static_cast<int8_t>((*t.data)[0]);
    else
      ctx.fail("a float16/bfloat16/float8 value is not supported");
  }
  auto shape = ctx.int_values(0);
  Attributes attrs;
  attrs.set("dtype", std::string(dtype_name(dt))).set("value", value);
  if (shape) {
    attrs.set("shape", *shape);
    ctx.set_output(0, ctx.add1("fill", {}, attrs));
  } else {
    ctx.set_output(0, ctx.add1("fill", {ctx.input(0)}, attrs));
  }
}

void import_identity(NodeContext& ctx) { ctx.set_output(0, ctx.add1("identity", {ctx.input(0)})); }

void import_range(NodeContext& ctx) {
  const DataType dt = ctx.desc(0).dtype;
  auto start = ctx.float_values(0), limit = ctx.float_values(1), delta = ctx.float_values(2);
  for (const auto* v : {&start, &limit, &delta}) {
    if (*v && (*v)->size() != 1) ctx.fail("start, limit and delta must be scalars");
  }
  if (start && delta && !limit && is_integral(dt) && ctx.desc(1).values) {
    // A limit computed from a dynamic dim (arange(seq_len)): arange's end input.
    TensorId end = ctx.add1("reshape", {ctx.cast(ctx.input(1), DataType::kInt64)},
                            Attributes().set("shape", std::vector<int64_t>{1}));
    ctx.set_output(0, ctx.add1("arange", {end},
                               Attributes()
                                   .set("start", start->at(0))
                                   .set("step", delta->at(0))
                                   .set("dtype", std::string(dtype_name(dt)))));
    return;
  }
  if (!start || !limit || !delta) ctx.fail("start, limit and delta must be known while parsing");
  ctx.set_output(0, ctx.add1("arange", {},
                             Attributes()
                                 .set("start", start->at(0))
                                 .set("end", limit->at(0))
                                 .set("step", delta->at(0))
                                 .set("dtype", std::string(dtype_name(dt)))));
}

void import_pad(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  std::string mode = ctx.attr_string("mode", std::string("constant"));
  std::vector<int64_t> pads = known_ints(ctx, 1, "pads");
  double value = 0.0;
  TensorId runtime_value = -1;  // a constant_value computed at run time
  if (ctx.has_input(2)) {
    auto v = ctx.float_values(2);
    if (v && !v->empty()) value = v->at(0);
    if (!v) runtime_value = ctx.input(2);
  }
  std::vector<int64_t> axes(static_cast<size_t>(rank));
  std::iota(axes.begin(), axes.end(), 0);
  if (ctx.has_input(3)) {
    axes = known_ints(ctx, 3, "axes");
    for (int64_t& a : axes) a = normalize_axis(a, rank, ctx);
  }
  const size_t n = axes.size();
  if (pads.size() != 2 * n) ctx.fail("pads needs two entries per padded axis");
  std::vector<int64_t> begin(static_cast<size_t>(rank), 0), end(static_cast<size_t>(rank), 0);
  for (size_t i = 0; i < n; ++i) {
    begin[axes[i]] = pads[i];
    end[axes[i]] = pads[n + i];
  }
  if (mode == "edge") mode = "replicate";
  if (mode == "wrap") {  // per axis: the last `begin` entries, x, the first `end` entries
    TensorId y = ctx.input(0);
    for (int64_t a = 0; a < rank; ++a) {
      const int64_t b = begin[a], e = end[a], len = x.dims[static_cast<size_t>(a)];
      if (b == 0 && e == 0) continue;
      if (b < 0 || e < 0 || len == kDynamic || b > len || e > len)
        ctx.fail("mode wrap needs non-negative pads no larger than a static axis");
      auto part = [&](int64_t start, int64_t stop) {
        return ctx.add1("slice", {y},
                        Attributes()
                            .set("axes", std::vector<int64_t>{a})
                            .set("starts", std::vector<int64_t>{start})
                            .set("ends", std::vector<int64_t>{stop}));
      };
      std::vector<TensorId> pieces;
      if (b > 0) pieces.push_back(part(len - b, len));
      pieces.push_back(y);
      if (e > 0) pieces.push_back(part(0, e));
      y = ctx.add1("concat", pieces, Attributes().set("axis", a));
    }
    ctx.set_output(0, y == ctx.input(0) ? ctx.add1("identity", {y}) : y);
    return;
  }
  if (mode != "constant" && mode != "reflect" && mode != "replicate")
    ctx.fail("mode " + mode + " is not supported");
  std::vector<int64_t> torch_pads;  // last dim first
  for (int64_t a = rank; a-- > 0;) {
    torch_pads.push_back(begin[a]);
    torch_pads.push_back(end[a]);
  }
  Attributes attrs;
  attrs.set("pads", torch_pads).set("mode", mode).set("value", value);
  TensorId y = ctx.add1("pad", {ctx.input(0)}, attrs);
  if (runtime_value >= 0 && mode == "constant") {
    // The value is data: pad a mask of ones the same way, then select the value outside it.
    TensorId ones = ctx.add1("fill", {ctx.add1("shape", {ctx.input(0)})},
                             Attributes().set("dtype", std::string("bool")).set("value", 1.0));
    TensorId inside = ctx.add1("pad", {ones}, Attributes(attrs).set("value", 0.0));
    TensorId v = ctx.add1("reshape", {ctx.cast(runtime_value, x.dtype)},
                          Attributes().set("shape", std::vector<int64_t>{}));
    y = ctx.add1("where", {inside, y, v});
  }
  ctx.set_output(0, y);
}

// CenterCropPad: per axis, a centred slice (crop) or a zero pad to the target size.
void import_center_crop_pad(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  const std::vector<int64_t> shape = known_ints(ctx, 1, "shape");
  std::vector<int64_t> axes(static_cast<size_t>(rank));
  std::iota(axes.begin(), axes.end(), 0);
  if (ctx.has_attr("axes")) axes = ctx.attr_ints("axes");
  if (axes.size() != shape.size()) ctx.fail("shape needs one entry per axis");
  TensorId y = ctx.input(0);
  for (size_t i = 0; i < axes.size(); ++i) {
    const int64_t a = normalize_axis(axes[i], rank, ctx);
    const int64_t in = x.dims[a], want = shape[i];
    if (in < 0 || want < 0) ctx.fail("needs static dims and sizes");
    if (want < in) {  // crop: the start rounds down, as onnx's reference
      const int64_t start = (in - want) / 2;
      y = ctx.add1("slice", {y},
                   Attributes()
                       .set("axes", std::vector<int64_t>{a})
                       .set("starts", std::vector<int64_t>{start})
                       .set("ends", std::vector<int64_t>{start + want}));
    } else if (want > in) {  // pad: the smaller half first
      const int64_t before = (want - in) / 2;
      std::vector<int64_t> pads(static_cast<size_t>(2 * (rank - a)), 0);  // torch order, last dim first
      pads[pads.size() - 2] = before;
      pads[pads.size() - 1] = want - in - before;
      y = ctx.add1("pad", {y},
                   Attributes().set("pads", pads).set("mode", std::string("constant")).set("value", 0.0));
    }
  }
  ctx.set_output(0, y == ctx.input(0) ? ctx.add1("identity", {y}) : y);
}

// DepthToSpace / SpaceToDepth: reshape, transpose, reshape (static dims).
void import_depth_space(NodeContext& ctx, bool to_space) {
  const TensorDesc x = ctx.desc(0);
  if (x.dims.size() != 4 || !is_static(x.dims)) ctx.fail("needs a static 4-D input");
  const int64_t b = ctx.attr_int("blocksize");
  if (b < 1 || b > x.dims[1] * 4096) ctx.fail("blocksize must be >= 1 and fit the tensor");
  volume({x.dims[0], x.dims[1], x.dims[2], x.dims[3], b, b});  // refuses sizes past 2^62
  const int64_t n = x.dims[0], c = x.dims[1], h = x.dims[2], w = x.dims[3];
  TensorId y;
  if (to_space) {
    const std::string mode = ctx.attr_string("mode", std::string("DCR"));
    if (c % (b * b) != 0) ctx.fail("channels must be a multiple of blocksize^2");
    const int64_t co = c / (b * b);
    if (mode == "DCR") {
      y = ctx.add1("reshape", {ctx.input(0)},
                   Attributes().set("shape", std::vector<int64_t>{n, b, b, co, h, w}));
      y = ctx.add1("transpose", {y}, Attributes().set("perm", std::vector<int64_t>{0, 3, 4, 1, 5, 2}));
    } else if (mode == "CRD") {
      y = ctx.add1("reshape", {ctx.input(0)},
                   Attributes().set("shape", std::vector<int64_t>{n, co, b, b, h, w}));
      y = ctx.add1("transpose", {y}, Attributes().set("perm", std::vector<int64_t>{0, 1, 4, 2, 5, 3}));
    } else {
      ctx.fail("mode must be DCR or CRD");
    }
    y = ctx.add1("reshape", {y}, Attributes().set("shape", std::vector<int64_t>{n, co, h * b, w * b}));
  } else {
    if (h % b != 0 || w % b != 0) ctx.fail("height and width must be multiples of blocksize");
    y = ctx.add1("reshape", {ctx.input(0)},
                 Attributes().set("shape", std::vector<int64_t>{n, c, h / b, b, w / b, b}));
    const std::string mode = ctx.attr_string("mode", std::string("DCR"));
    if (mode != "DCR" && mode != "CRD") ctx.fail("mode must be DCR or CRD");
    const std::vector<int64_t> perm =
        mode == "DCR" ? std::vector<int64_t>{0, 3, 5, 1, 2, 4} : std::vector<int64_t>{0, 1, 3, 5, 2, 4};
    y = ctx.add1("transpose", {y}, Attributes().set("perm", perm));
    y = ctx.add1("reshape", {y}, Attributes().set("shape", std::vector<int64_t>{n, c * b * b, h / b, w / b}));
  }
  ctx.set_output(0, y);
}

const ImporterRegistration kRegistered{
    {"Reshape", import_reshape},
    {"Flatten", import_flatten},
    {"Transpose", import_transpose},
    {"Squeeze", import_squeeze},
    {"Unsqueeze", import_unsqueeze},
    {"Concat", import_concat},
    {"Split", import_split},
    {"Slice", import_slice},
    {"Gather", import_gather},
    {"GatherElements", import_gather_elements},
    {"ReverseSequence", import_reverse_sequence},
    {"ScatterElements", import_scatter_elements},
    {"Scatter", import_scatter_elements},
    {"Shape", import_shape},
    {"Size", import_size},
    {"Expand", import_expand},
    {"Tile", import_tile},
    {"Constant", import_constant},
    {"ConstantOfShape", import_constant_of_shape},
    {"Identity", import_identity},
    {"Range", import_range},
    {"Pad", import_pad},
    {"CenterCropPad", import_center_crop_pad},
    {"DepthToSpace", [](NodeContext& c) { import_depth_space(c, true); }},
    {"SpaceToDepth", [](NodeContext& c) { import_depth_space(c, false); }},
};

}  // namespace
}  // namespace kiln::onnx
