// fuse_rms_norm: recognizes RMS norm as T5 (and LLaMA) write it and replaces it by rms_norm:
//   xf = x or cast(x, float32)
//   y  = weight * [cast(] xf * rsqrt(mean(pow(xf, 2), axes=[-1], keepdim=1) + eps) [, dtype)]
// -> rms_norm(x, weight) with `eps` = the constant added (its stored value), normalized_ndim 1.
// Products match in either order; pow(xf, 2) may also be xf * xf. The result must have x's dtype
// and shape, weight must be [D] (D = x's last dim) of x's dtype or float32, and every intermediate
// must have no other use; otherwise nothing changes. rms_norm computes the statistics in float32,
// as the cast in the pattern asks for.
#include "core/passes/passes.h"
#include "core/passes/pattern_match.h"
#include "ir/op_schema.h"

namespace kiln {
namespace {

// t = xf * rsqrt(mean(xf^2) + eps) (either order); sets xf and eps.
bool normalized(const PatternMatcher& m, const Network& net, TensorId t, TensorId* xf, double* eps) {
  const Layer* mul = m.elementwise(t, "mul");
  if (!mul) return false;
  for (int side = 0; side < 2; ++side) {
    TensorId cand = mul->inputs[side];
    const Layer* rsqrt = m.layer_with(mul->inputs[1 - side], "unary", "op", "rsqrt");
    if (!rsqrt) continue;
    const Layer* add = m.elementwise(rsqrt->inputs[0], "add");
    if (!add) continue;
    for (int a = 0; a < 2; ++a) {
      double e = 0;
      if (!m.constant_value(add->inputs[1 - a], &e) || !(e >= 0)) continue;
      const Layer* mean = m.layer_with(add->inputs[a], "reduce", "op", "mean");
      if (!mean || mean->attrs.get_int("keepdim", int64_t{0}) != 1) continue;
      std::vector<int64_t> axes =
          mean->attrs.has("axes") ? mean->attrs.get_ints("axes", describe(*mean)) : std::vector<int64_t>{};
      const int64_t rank = static_cast<int64_t>(net.tensor(cand).dims.size());
      if (axes.size() != 1 || (axes[0] != -1 && axes[0] != rank - 1)) continue;
      TensorId sq = mean->inputs[0], base;
      const Layer* square = m.elementwise(sq, "mul");
      bool squared = (square && square->inputs[0] == cand && square->inputs[1] == cand) ||
                     (m.with_constant(sq, "pow", 2.0, &base) && base == cand);
      if (!squared) continue;
      *xf = cand;
      *eps = e;
      return true;
    }
  }
  return false;
}

}  // namespace

bool fuse_rms_norm(Network& net) {
  bool changed = false;
  for (int i = 0; i < static_cast<int>(net.layers().size()); ++i) {
    const Layer& l = net.layers()[i];
    if (l.op != "elementwise" || l.attrs.get_string("op", describe(l)) != "mul") continue;
    PatternMatcher m(net);
    for (int side = 0; side < 2; ++side) {
      TensorId w = l.inputs[side], h = l.inputs[1 - side], xf;
      double eps = 0;
      if (const Layer* back = m.producer(h); back && back->op == "cast" && m.single_use(h))
        h = back->inputs[0];
      if (!normalized(m, net, h, &xf, &eps)) continue;
      TensorId x = xf;
      if (const Layer* up = m.producer(xf);
          up && up->op == "cast" && up->attrs.get_string("to", describe(*up)) == "float32") {
        x = up->inputs[0];  // the cast has other uses (pow and mul): it becomes dead with them
      }
      const Tensor& xt = net.tensor(x);
      const Tensor& wt = net.tensor(w);
      const Tensor& y = net.tensor(l.outputs[0]);
      if (!is_floating(xt.dtype) || xt.dims.empty() || xt.dims.back() == kDynamic) continue;
      if (y.dtype != xt.dtype || y.dims != xt.dims) continue;
      if (wt.dims != Dims{xt.dims.back()} || (wt.dtype != xt.dtype && wt.dtype != DataType::kFloat32))
        continue;
      replace_layer(net, i, "rms_norm", {x, w},
                    Attributes().set("eps", eps).set("normalized_ndim", int64_t{1}));
      changed = true;
      break;
    }
  }
  if (changed) {
    eliminate_dead_layers(net);
    net.revalidate();
  }
  return changed;
}

}  // namespace kiln
