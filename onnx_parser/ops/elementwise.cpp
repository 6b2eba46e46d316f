// ONNX pointwise operators: arithmetic, comparisons, logic, unary math and activations.
#include <cmath>
#include <limits>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

TensorId activation(NodeContext& ctx, const std::string& type, TensorId x, Attributes attrs = {}) {
  attrs.set("type", type);
  return ctx.add1("activation", {x}, std::move(attrs));
}

ImportFn elementwise(const std::string& op) {
  return [op](NodeContext& ctx) { ctx.set_output(0, ctx.elementwise(op, ctx.input(0), ctx.input(1))); };
}

// Max, Min, Sum, Mean: any number of inputs, broadcast together.
ImportFn variadic(const std::string& op, bool mean = false) {
  return [op, mean](NodeContext& ctx) {
    TensorId acc = ctx.input(0);
    for (int i = 1; i < ctx.num_inputs(); ++i) acc = ctx.elementwise(op, acc, ctx.input(i));
    if (ctx.num_inputs() == 1) acc = ctx.add1("identity", {acc});
    if (mean) {
      const TensorDesc d = ctx.net().desc(acc);
      acc = ctx.elementwise("div", acc, ctx.scalar(d.dtype, ctx.num_inputs()));
    }
    ctx.set_output(0, acc);
  };
}

ImportFn unary_op(const std::string& op) {
  return [op](NodeContext& ctx) { ctx.set_output(0, ctx.unary(op, ctx.input(0))); };
}

ImportFn activation_op(const std::string& type) {
  return [type](NodeContext& ctx) { ctx.set_output(0, activation(ctx, type, ctx.input(0))); };
}

void import_pow(NodeContext& ctx) {
  const TensorId a = ctx.input(0);
  const TensorId b = ctx.cast(ctx.input(1), ctx.desc(0).dtype);  // ONNX allows another exponent type
  ctx.set_output(0, ctx.elementwise("pow", a, b));
}

void import_mod(NodeContext& ctx) {
  const TensorId a = ctx.input(0), b = ctx.input(1);
  const bool fmod = ctx.attr_int("fmod", 0) != 0;
  const DataType dt = ctx.desc(0).dtype;
  if (!is_floating(dt)) {
    TensorId q = ctx.elementwise(fmod ? "div" : "floor_div", a, b);  // C remainder, or Python's
    ctx.set_output(0, ctx.elementwise("sub", a, ctx.elementwise("mul", q, b)));
    return;
  }
  // C's fmod: a - trunc(a / b) * b, and a itself for a finite a over an infinite b; without fmod,
  // numpy's mod: fmod's remainder moved to the divisor's sign (r + b when their signs differ),
  // a zero remainder signed as b.
  TensorId d = ctx.elementwise("div", a, b);
  TensorId q = ctx.elementwise("mul", ctx.unary("sign", d), ctx.unary("floor", ctx.unary("abs", d)));
  TensorId r = ctx.elementwise("sub", a, ctx.elementwise("mul", q, b));
  TensorId inf = ctx.scalar(dt, std::numeric_limits<double>::infinity());
  TensorId b_inf = ctx.elementwise("eq", ctx.unary("abs", b), inf);
  TensorId a_finite = ctx.elementwise("lt", ctx.unary("abs", a), inf);
  r = ctx.add1("where", {ctx.elementwise("and", b_inf, a_finite), a, r});
  if (!fmod) {
    TensorId zero = ctx.scalar(dt, 0.0);
    TensorId r_neg = ctx.elementwise("lt", r, zero), b_neg = ctx.elementwise("lt", b, zero);
    TensorId differ =
        ctx.elementwise("and", ctx.elementwise("ne", r, zero), ctx.elementwise("ne", r_neg, b_neg));
    r = ctx.add1("where", {differ, ctx.elementwise("add", r, b), r});
    r = ctx.add1("where",
                 {ctx.elementwise("eq", r, zero), ctx.elementwise("mul", zero, ctx.unary("sign", b)), r});
  }
  ctx.set_output(0, r);
}

void import_leaky_relu(NodeContext& ctx) {
  ctx.set_output(0, activation(ctx, "leaky_relu", ctx.input(0),
                               Attributes().set("alpha", ctx.attr_float("alpha", 0.01))));
}

void import_elu(NodeContext& ctx) {
  ctx.set_output(
      0, activation(ctx, "elu", ctx.input(0), Attributes().set("alpha", ctx.attr_float("alpha", 1.0))));
}

void import_selu(NodeContext& ctx) {
  const double alpha = ctx.attr_float("alpha", 1.67326319217681884765625);
  const double gamma = ctx.attr_float("gamma", 1.05070102214813232421875);
  const TensorId x = ctx.input(0);
  const DataType dt = ctx.desc(0).dtype;
  // gamma * (x > 0 ? x : alpha * (exp(x) - 1)) = gamma * elu_alpha(x)
  TensorId e = activation(ctx, "elu", x, Attributes().set("alpha", alpha));
  ctx.set_output(0, ctx.elementwise("mul", e, ctx.scalar(dt, gamma)));
}

void import_celu(NodeContext& ctx) {
  const double alpha = ctx.attr_float("alpha", 1.0);
  const TensorId x = ctx.input(0);
  const DataType dt = ctx.desc(0).dtype;
  // max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) = alpha * elu_1(x / alpha)
  TensorId s = ctx.elementwise("div", x, ctx.scalar(dt, alpha));
  TensorId e = activation(ctx, "elu", s, Attributes().set("alpha", 1.0));
  ctx.set_output(0, ctx.elementwise("mul", e, ctx.scalar(dt, alpha)));
}

void import_hard_sigmoid(NodeContext& ctx) {
  const double alpha = ctx.attr_float("alpha", 0.2), beta = ctx.attr_float("beta", 0.5);
  const TensorId x = ctx.input(0);
  const DataType dt = ctx.desc(0).dtype;
  TensorId y = ctx.elementwise("add", ctx.elementwise("mul", x, ctx.scalar(dt, alpha)), ctx.scalar(dt, beta));
  ctx.set_output(0, activation(ctx, "clip", y, Attributes().set("alpha", 0.0).set("beta", 1.0)));
}

void import_softsign(NodeContext& ctx) {
  const TensorId x = ctx.input(0);
  const DataType dt = ctx.desc(0).dtype;
  TensorId d = ctx.elementwise("add", ctx.unary("abs", x), ctx.scalar(dt, 1.0));
  ctx.set_output(0, ctx.elementwise("div", x, d));
}

void import_softplus(NodeContext& ctx) {
  // log(exp(x) + 1) without a threshold (torch's softplus switches to x past 20: the difference
  // is below float32's resolution there).
  ctx.set_output(
      0, activation(ctx, "softplus", ctx.input(0), Attributes().set("beta", 1.0).set("threshold", 20.0)));
}

void import_thresholded_relu(NodeContext& ctx) {
  const double alpha = ctx.attr_float("alpha", 1.0);
  const TensorId x = ctx.input(0);
  const DataType dt = ctx.desc(0).dtype;
  TensorId keep = ctx.elementwise("gt", x, ctx.scalar(dt, alpha));
  ctx.set_output(0, ctx.add1("where", {keep, x, ctx.scalar(dt, 0.0)}));
}

void import_prelu(NodeContext& ctx) {
  const TensorId x = ctx.input(0), slope = ctx.input(1);
  const DataType dt = ctx.desc(0).dtype;
  TensorId neg = ctx.elementwise("lt", x, ctx.scalar(dt, 0.0));
  ctx.set_output(0, ctx.add1("where", {neg, ctx.elementwise("mul", x, slope), x}));
}

void import_gelu(NodeContext& ctx) {
  const std::string approx = ctx.attr_string("approximate", std::string("none"));
  if (approx != "none" && approx != "tanh") ctx.fail("approximate must be none or tanh, not " + approx);
  ctx.set_output(0, activation(ctx, approx == "tanh" ? "gelu_tanh" : "gelu", ctx.input(0)));
}

void import_swish(NodeContext& ctx) {  // opset 24: x * sigmoid(alpha * x)
  const double alpha = ctx.attr_float("alpha", 1.0);
  const TensorId x = ctx.input(0);
  if (alpha == 1.0) {
    ctx.set_output(0, activation(ctx, "silu", x));
    return;
  }
  const DataType dt = ctx.desc(0).dtype;
  TensorId s = activation(ctx, "sigmoid", ctx.elementwise("mul", x, ctx.scalar(dt, alpha)));
  ctx.set_output(0, ctx.elementwise("mul", x, s));
}

void import_shrink(NodeContext& ctx) {
  const double bias = ctx.attr_float("bias", 0.0), lambd = ctx.attr_float("lambd", 0.5);
  const TensorId x = ctx.input(0);
  const DataType dt = ctx.desc(0).dtype;
  TensorId lo = ctx.elementwise("lt", x, ctx.scalar(dt, -lambd));
  TensorId hi = ctx.elementwise("gt", x, ctx.scalar(dt, lambd));
  TensorId zero = ctx.scalar(dt, 0.0);
  TensorId y = ctx.add1("where", {hi, ctx.elementwise("sub", x, ctx.scalar(dt, bias)), zero});
  ctx.set_output(0, ctx.add1("where", {lo, ctx.elementwise("add", x, ctx.scalar(dt, bias)), y}));
}

void import_clip(NodeContext& ctx) {
  const TensorId x = ctx.input(0);
  const DataType dt = ctx.desc(0).dtype;
  if (!is_floating(dt)) {  // integer Clip: max/min against the bounds
    TensorId y = x;
    if (ctx.has_input(1)) y = ctx.elementwise("max", y, ctx.input(1));
    if (ctx.has_input(2)) y = ctx.elementwise("min", y, ctx.input(2));
    ctx.set_output(0, ctx.has_input(1) || ctx.has_input(2) ? y : ctx.add1("identity", {x}));
    return;
  }
  auto lo = ctx.float_values(1), hi = ctx.float_values(2);
  const double inf = std::numeric_limits<double>::infinity();
  if ((ctx.has_input(1) && !lo) || (ctx.has_input(2) && !hi)) {  // bounds computed at run time
    TensorId y = x;
    if (ctx.has_input(1)) y = ctx.elementwise("max", y, ctx.input(1));
    if (ctx.has_input(2)) y = ctx.elementwise("min", y, ctx.input(2));
    ctx.set_output(0, y);
    return;
  }
  const double a = lo && !lo->empty() ? lo->at(0) : -inf;
  const double b = hi && !hi->empty() ? hi->at(0) : inf;
  if (a > b) {  // ONNX (numpy.clip): every value becomes max
    ctx.set_output(0,
                   ctx.elementwise("add", ctx.elementwise("mul", x, ctx.scalar(dt, 0.0)), ctx.scalar(dt, b)));
    return;
  }
  ctx.set_output(0, activation(ctx, "clip", x, Attributes().set("alpha", a).set("beta", b)));
}

void import_is_nan(NodeContext& ctx) {
  const TensorId x = ctx.input(0);
  ctx.set_output(0, ctx.elementwise("ne", x, x));
}

void import_is_inf(NodeContext& ctx) {
  const TensorId x = ctx.input(0);
  const DataType dt = ctx.desc(0).dtype;
  const bool pos = ctx.attr_int("detect_positive", 1) != 0, neg = ctx.attr_int("detect_negative", 1) != 0;
  const double inf = std::numeric_limits<double>::infinity();
  TensorId p = ctx.elementwise("eq", x, ctx.scalar(dt, inf));
  TensorId n = ctx.elementwise("eq", x, ctx.scalar(dt, -inf));
  if (pos && neg)
    ctx.set_output(0, ctx.elementwise("or", p, n));
  else if (pos)
    ctx.set_output(0, p);
  else if (neg)
    ctx.set_output(0, n);
  else
    ctx.set_output(0, ctx.elementwise("and", p, n));  // neither: all false
}

void import_where(NodeContext& ctx) {
  ctx.set_output(0, ctx.add1("where", {ctx.input(0), ctx.input(1), ctx.input(2)}));
}

void import_bitwise_not(NodeContext& ctx) {  // integers: ~x = -x - 1
  const TensorId x = ctx.input(0);
  const DataType dt = ctx.desc(0).dtype;
  if (dt == DataType::kBool) {
    ctx.set_output(0, ctx.unary("not", x));
    return;
  }
  if (!is_integral(dt)) ctx.fail("BitwiseNot takes integers");
  ctx.set_output(0, ctx.elementwise("sub", ctx.unary("neg", x), ctx.scalar(dt, 1.0)));
}

const ImporterRegistration kRegistered{
    {"Add", elementwise("add")},
    {"Sub", elementwise("sub")},
    {"Mul", elementwise("mul")},
    {"Div", elementwise("div")},
    {"Pow", import_pow},
    {"Mod", import_mod},
    {"Max", variadic("max")},
    {"Min", variadic("min")},
    {"Sum", variadic("add")},
    {"Mean", variadic("add", true)},
    {"Equal", elementwise("eq")},
    {"Less", elementwise("lt")},
    {"LessOrEqual", elementwise("le")},
    {"Greater", elementwise("gt")},
    {"GreaterOrEqual", elementwise("ge")},
    {"And", elementwise("and")},
    {"Or", elementwise("or")},
    {"Xor", elementwise("xor")},
    {"Not", unary_op("not")},
    {"BitwiseNot", import_bitwise_not},
    {"Where", import_where},
    {"Abs", unary_op("abs")},
    {"Neg", unary_op("neg")},
    {"Exp", unary_op("exp")},
    {"Log", unary_op("log")},
    {"Sqrt", unary_op("sqrt")},
    {"Reciprocal", unary_op("reciprocal")},
    {"Floor", unary_op("floor")},
    {"Ceil", unary_op("ceil")},
    {"Round", unary_op("round")},
    {"Sign", unary_op("sign")},
    {"Erf", unary_op("erf")},
    {"Sin", unary_op("sin")},
    {"Cos", unary_op("cos")},
    {"Tan", unary_op("tan")},
    {"Asin", unary_op("asin")},
    {"Acos", unary_op("acos")},
    {"Atan", unary_op("atan")},
    {"Sinh", unary_op("sinh")},
    {"Cosh", unary_op("cosh")},
    {"Asinh", unary_op("asinh")},
    {"Acosh", unary_op("acosh")},
    {"Atanh", unary_op("atanh")},
    {"IsNaN", import_is_nan},
    {"IsInf", import_is_inf},
    {"Relu", activation_op("relu")},
    {"Sigmoid", activation_op("sigmoid")},
    {"Tanh", activation_op("tanh")},
    {"HardSwish", activation_op("hardswish")},
    {"Mish", activation_op("mish")},
    {"LeakyRelu", import_leaky_relu},
    {"Elu", import_elu},
    {"Selu", import_selu},
    {"Celu", import_celu},
    {"HardSigmoid", import_hard_sigmoid},
    {"Softsign", import_softsign},
    {"Softplus", import_softplus},
    {"ThresholdedRelu", import_thresholded_relu},
    {"PRelu", import_prelu},
    {"Gelu", import_gelu},
    {"Swish", import_swish},
    {"Shrink", import_shrink},
    {"Clip", import_clip},
};

}  // namespace
}  // namespace kiln::onnx
