// ONNX control flow, unrolled while parsing (an engine has no branches or loops):
//   If    the branch its condition picks, when the condition is known while parsing (a constant,
//         or computed from static shapes);
//   Loop  its body once per iteration, when the trip count and every iteration's condition are
//         known while parsing; scan outputs stacked along a new first axis;
//   Scan  its body once per step of the scan inputs' static axis (directions and axes), states
//         carried, scan outputs stacked.
// A condition or trip count known only at run time is refused with what to do.
#include <algorithm>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

constexpr int64_t kMaxIterations = 4096;

bool known_true(NodeContext& ctx, TensorId t, const char* what) {
  auto v = ctx.known_values(t);
  if (!v || v->size() != 1) {
    ctx.fail(std::string(what) +
             " must be known while parsing (a constant, or computed from static shapes): Kiln unrolls "
             "control flow; fix the value (onnx-simplifier with fixed input shapes) or keep the node "
             "outside Kiln");
  }
  return v->at(0) != 0;
}

TensorId scalar_i64(NodeContext& ctx, int64_t v) { return ctx.constant_i64({v}, {}); }

// Slices `t` at index i of `axis` (the axis removed).
TensorId take(NodeContext& ctx, TensorId t, int64_t i, int64_t axis) {
  return ctx.add1("gather", {t, scalar_i64(ctx, i)}, Attributes().set("axis", axis));
}

// Stacks `parts` along a new `axis`.
TensorId stack(NodeContext& ctx, const std::vector<TensorId>& parts, int64_t axis) {
  std::vector<TensorId> u;
  for (TensorId p : parts)
    u.push_back(ctx.add1("unsqueeze", {p}, Attributes().set("axes", std::vector<int64_t>{axis})));
  return u.size() == 1 ? ctx.add1("identity", {u[0]}) : ctx.add1("concat", u, Attributes().set("axis", axis));
}

void import_if(NodeContext& ctx) {
  const bool cond = known_true(ctx, ctx.input(0), "If's condition");
  ctx.graph_inputs(cond ? "else_branch" : "then_branch");  // read: the other branch is not built
  std::vector<TensorId> out = ctx.inline_graph(cond ? "then_branch" : "else_branch", {});
  if (static_cast<int>(out.size()) != ctx.num_outputs())
    ctx.fail("the branch's outputs do not match the node's");
  for (int i = 0; i < ctx.num_outputs(); ++i) {
    if (ctx.wants_output(i)) ctx.set_output(i, ctx.add1("identity", {out[static_cast<size_t>(i)]}));
  }
}

void import_loop(NodeContext& ctx) {
  std::optional<int64_t> trips;
  if (ctx.has_input(0)) {
    auto m = ctx.int_values(0);
    if (!m || m->size() != 1) ctx.fail("the trip count M must be known while parsing (Kiln unrolls loops)");
    trips = m->at(0);
  }
  if (trips && *trips > kMaxIterations) {
    ctx.fail("more than " + std::to_string(kMaxIterations) + " iterations to unroll");
  }
  bool cond = ctx.has_input(1) ? known_true(ctx, ctx.input(1), "Loop's condition") : true;
  if (!trips && !ctx.has_input(1)) ctx.fail("a loop without a trip count or a condition never ends");
  const int carried = ctx.num_inputs() - 2;
  const int body_inputs = ctx.graph_inputs("body");
  if (body_inputs != carried + 2) ctx.fail("the body's inputs do not match the loop-carried values");
  std::vector<TensorId> state;
  for (int i = 0; i < carried; ++i) state.push_back(ctx.input(2 + i));
  std::vector<std::vector<TensorId>> scans;
  int64_t i = 0;
  for (; cond && (!trips || i < *trips); ++i) {
    if (i >= kMaxIterations)
      ctx.fail("more than " + std::to_string(kMaxIterations) + " iterations to unroll");
    std::vector<TensorId> in = {scalar_i64(ctx, i), ctx.scalar(DataType::kBool, 1.0)};
    in.insert(in.end(), state.begin(), state.end());
    std::vector<TensorId> out = ctx.inline_graph("body", in);
    if (static_cast<int>(out.size()) < 1 + carried) ctx.fail("the body gives fewer outputs than it carries");
    cond = known_true(ctx, out[0], "Loop's condition (the body's first output)");
    state.assign(out.begin() + 1, out.begin() + 1 + carried);
    scans.resize(out.size() - 1 - static_cast<size_t>(carried));
    for (size_t k = 0; k < scans.size(); ++k) scans[k].push_back(out[1 + static_cast<size_t>(carried) + k]);
  }
  for (int k = 0; k < carried; ++k) {
    if (ctx.wants_output(k)) ctx.set_output(k, ctx.add1("identity", {state[static_cast<size_t>(k)]}));
  }
  const int num_scans = ctx.num_outputs() - carried;
  for (int k = 0; k < num_scans; ++k) {
    if (!ctx.wants_output(carried + k)) continue;
    if (static_cast<size_t>(k) >= scans.size() || scans[static_cast<size_t>(k)].empty())
      ctx.fail("a loop of zero iterations has scan outputs of unknown shape");
    ctx.set_output(carried + k, stack(ctx, scans[static_cast<size_t>(k)], 0));
  }
}

void import_scan(NodeContext& ctx) {
  const int64_t m = ctx.attr_int("num_scan_inputs");
  const int n = ctx.num_inputs() - static_cast<int>(m);  // states
  if (m < 1 || n < 0) ctx.fail("num_scan_inputs must be between 1 and the number of inputs");
  const std::vector<int64_t> in_axes = ctx.attr_ints("scan_input_axes", std::vector<int64_t>(m, 0));
  const std::vector<int64_t> in_dirs = ctx.attr_ints("scan_input_directions", std::vector<int64_t>(m, 0));
  const int k_out = ctx.num_outputs() - n;
  if (k_out < 0) ctx.fail("Scan has fewer outputs than loop-carried states");
  const std::vector<int64_t> out_axes = ctx.attr_ints("scan_output_axes", std::vector<int64_t>(k_out, 0));
  const std::vector<int64_t> out_dirs =
      ctx.attr_ints("scan_output_directions", std::vector<int64_t>(k_out, 0));
  if (static_cast<int64_t>(in_axes.size()) != m || static_cast<int64_t>(in_dirs.size()) != m ||
      static_cast<int>(out_axes.size()) != k_out || static_cast<int>(out_dirs.size()) != k_out) {
    ctx.fail("scan axes / directions need one entry per scan input and output");
  }
  int64_t steps = -1;
  std::vector<int64_t> axes;
  for (int64_t j = 0; j < m; ++j) {
    const TensorDesc d = ctx.desc(n + static_cast<int>(j));
    const int64_t axis =
        normalize_axis(in_axes[static_cast<size_t>(j)], static_cast<int64_t>(d.dims.size()), ctx);
    const int64_t len = d.dims[static_cast<size_t>(axis)];
    if (len == kDynamic) ctx.fail("the scanned axis must have a static length (Kiln unrolls Scan)");
    if (steps >= 0 && len != steps) ctx.fail("the scan inputs differ in length");
    steps = len;
    axes.push_back(axis);
  }
  if (steps < 1) ctx.fail("a scan of zero steps has outputs of unknown shape");
  if (steps > kMaxIterations) ctx.fail("more than " + std::to_string(kMaxIterations) + " steps to unroll");
  std::vector<TensorId> state;
  for (int i = 0; i < n; ++i) state.push_back(ctx.input(i));
  std::vector<std::vector<TensorId>> scans(static_cast<size_t>(k_out));
  for (int64_t t = 0; t < steps; ++t) {
    std::vector<TensorId> in = state;
    for (int64_t j = 0; j < m; ++j) {
      const int64_t at = in_dirs[static_cast<size_t>(j)] ? steps - 1 - t : t;
      in.push_back(take(ctx, ctx.input(n + static_cast<int>(j)), at, axes[static_cast<size_t>(j)]));
    }
    std::vector<TensorId> out = ctx.inline_graph("body", in);
    if (static_cast<int>(out.size()) != n + k_out) ctx.fail("the body's outputs do not match the node's");
    state.assign(out.begin(), out.begin() + n);
    for (int k = 0; k < k_out; ++k) scans[static_cast<size_t>(k)].push_back(out[static_cast<size_t>(n + k)]);
  }
  for (int i = 0; i < n; ++i) {
    if (ctx.wants_output(i)) ctx.set_output(i, ctx.add1("identity", {state[static_cast<size_t>(i)]}));
  }
  for (int k = 0; k < k_out; ++k) {
    if (!ctx.wants_output(n + k)) continue;
    std::vector<TensorId> parts = scans[static_cast<size_t>(k)];
    if (out_dirs[static_cast<size_t>(k)]) std::reverse(parts.begin(), parts.end());
    const int64_t rank = static_cast<int64_t>(ctx.net().desc(parts[0]).dims.size()) + 1;
    ctx.set_output(n + k, stack(ctx, parts, normalize_axis(out_axes[static_cast<size_t>(k)], rank, ctx)));
  }
}

const ImporterRegistration kRegistered{
    {"If", import_if},
    {"Loop", import_loop, 11},
    {"Scan", import_scan, 9},
};

}  // namespace
}  // namespace kiln::onnx
