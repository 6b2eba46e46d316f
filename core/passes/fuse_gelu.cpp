// fuse_gelu: recognizes GELU written out in pointwise ops and replaces it by one activation.
//   exact (BERT, torch's decomposition):  x * 0.5 * (1 + erf(x / sqrt(2)))   -> gelu
//       (x / sqrt(2) may also be written x * (1/sqrt(2)); the product grouped as
//       (x * 0.5) * (1 + erf(..)) or, as torch.onnx's TorchScript exporter writes it,
//       (x * (1 + erf(..))) * 0.5)
//   tanh (GPT-2's NewGELU):  0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3)))) -> gelu_tanh
// Products and sums match in either operand order; every constant must equal the formula's value
// as stored in its dtype, every intermediate must have no other use, and the result must keep
// x's dtype and shape, otherwise nothing changes. The activation computes the same formula in
// one kernel (float math for float16/bfloat16, with one rounding instead of one per step).
#include <cmath>

#include "core/passes/passes.h"
#include "core/passes/pattern_match.h"
#include "ir/op_schema.h"

namespace kiln {
namespace {

constexpr double kSqrt2 = 1.4142135623730951;
constexpr double kSqrtHalf = 0.70710678118654752;
constexpr double kSqrt2OverPi = 0.79788456080286536;

// t = x * 0.5 (either order), for a given or yet unknown x.
bool half_of(const PatternMatcher& m, TensorId t, TensorId* x) { return m.with_constant(t, "mul", 0.5, x); }

// erf branch: t = 1 + erf(x / sqrt(2)); returns x.
bool erf_branch(const PatternMatcher& m, TensorId t, TensorId* x) {
  TensorId e;
  if (!m.with_constant(t, "add", 1.0, &e)) return false;
  const Layer* erf = m.layer_with(e, "unary", "op", "erf");
  if (!erf) return false;
  TensorId d = erf->inputs[0];
  return m.with_constant(d, "div", kSqrt2, x) || m.with_constant(d, "mul", kSqrtHalf, x);
}

// tanh branch: t = 1 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3))); returns x.
bool tanh_branch(const PatternMatcher& m, TensorId t, TensorId* x) {
  TensorId th, u, cube, p;
  if (!m.with_constant(t, "add", 1.0, &th)) return false;
  const Layer* tanh = m.layer_with(th, "activation", "type", "tanh");
  if (!tanh || !m.with_constant(tanh->inputs[0], "mul", kSqrt2OverPi, &u)) return false;
  const Layer* sum = m.elementwise(u, "add");
  if (!sum) return false;
  for (int side = 0; side < 2; ++side) {
    TensorId cand = sum->inputs[side];
    if (!m.with_constant(sum->inputs[1 - side], "mul", 0.044715, &cube)) continue;
    if (!m.with_constant(cube, "pow", 3.0, &p) || p != cand) continue;
    *x = cand;
    return true;
  }
  return false;
}

}  // namespace

bool fuse_gelu(Network& net) {
  bool changed = false;
  for (int i = 0; i < static_cast<int>(net.layers().size()); ++i) {
    const Layer& l = net.layers()[i];
    if (l.op != "elementwise" || l.attrs.get_string("op", describe(l)) != "mul") continue;
    PatternMatcher m(net);
    std::string type;
    TensorId x = -1;
    for (int side = 0; side < 2 && type.empty(); ++side) {
      TensorId h = l.inputs[side], b = l.inputs[1 - side], xh, xb;
      if (!half_of(m, h, &xh)) continue;
      if (erf_branch(m, b, &xb) && xb == xh) {
        type = "gelu";
      } else if (tanh_branch(m, b, &xb) && xb == xh) {
        type = "gelu_tanh";
      }
      x = xh;
    }
    // (x * branch) * 0.5
    for (int side = 0; side < 2 && type.empty(); ++side) {
      if (!m.is_constant(l.inputs[side], 0.5)) continue;
      const Layer* product = m.elementwise(l.inputs[1 - side], "mul");
      for (int s = 0; product && s < 2 && type.empty(); ++s) {
        const TensorId xs = product->inputs[s];
        TensorId xb;
        if (erf_branch(m, product->inputs[1 - s], &xb) && xb == xs) {
          type = "gelu";
        } else if (tanh_branch(m, product->inputs[1 - s], &xb) && xb == xs) {
          type = "gelu_tanh";
        }
        x = xs;
      }
    }
    if (type.empty()) continue;
    const Tensor& xt = net.tensor(x);
    const Tensor& y = net.tensor(l.outputs[0]);
    if (!is_floating(xt.dtype) || xt.dtype != y.dtype || xt.dims != y.dims) continue;
    replace_layer(net, i, "activation", {x}, Attributes().set("type", type));
    changed = true;
  }
  if (changed) {
    eliminate_dead_layers(net);
    net.revalidate();
  }
  return changed;
}

}  // namespace kiln
