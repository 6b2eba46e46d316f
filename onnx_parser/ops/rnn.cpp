// ONNX RNN, GRU and LSTM, unrolled over a static sequence length: the input projection of every
// step at once (X W^T + Wb, one matmul per direction), then per step the recurrent projection
// (H R^T + Rb) and the gates as ONNX defines them, forward, reverse or both directions, with
// initial states, LSTM peepholes and input_forget, GRU's linear_before_reset, clip, layout 1 and
// the activation functions of the spec. sequence_lens must equal the sequence length (shorter
// sequences are not supported).
#include <cctype>
#include <optional>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

constexpr int64_t kMaxSteps = 1024;  // layers grow with the sequence: unrolled, not looped

enum class Cell { kRnn, kGru, kLstm };

// One of the spec's activation functions, by name (case-insensitive), with its alpha / beta.
TensorId apply_activation(NodeContext& ctx, const std::string& name, std::optional<double> alpha,
                          std::optional<double> beta, TensorId x) {
  std::string n;
  for (char c : name) n += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const DataType dt = ctx.net().desc(x).dtype;
  auto act = [&](const char* type) {
    return ctx.add1("activation", {x}, Attributes().set("type", std::string(type)));
  };
  auto k = [&](double v) { return ctx.scalar(dt, v); };
  auto mul = [&](TensorId a, TensorId b) { return ctx.elementwise("mul", a, b); };
  auto add = [&](TensorId a, TensorId b) { return ctx.elementwise("add", a, b); };
  if (n == "sigmoid") return act("sigmoid");
  if (n == "tanh") return act("tanh");
  if (n == "relu") return act("relu");
  if (n == "softplus") return act("softplus");
  if (n == "affine") return add(mul(x, k(alpha.value_or(1.0))), k(beta.value_or(0.0)));
  if (n == "leakyrelu") {
    return ctx.add1("activation", {x},
                    Attributes().set("type", std::string("leaky_relu")).set("alpha", alpha.value_or(0.01)));
  }
  if (n == "elu") {
    return ctx.add1("activation", {x},
                    Attributes().set("type", std::string("elu")).set("alpha", alpha.value_or(1.0)));
  }
  if (n == "thresholdedrelu") {
    return ctx.add1("where", {ctx.elementwise("gt", x, k(alpha.value_or(1.0))), x, k(0.0)});
  }
  if (n == "scaledtanh") {
    TensorId t = ctx.add1("activation", {mul(x, k(beta.value_or(1.0)))},
                          Attributes().set("type", std::string("tanh")));
    return mul(t, k(alpha.value_or(1.0)));
  }
  if (n == "hardsigmoid") {
    return ctx.add1("activation", {add(mul(x, k(alpha.value_or(0.2))), k(beta.value_or(0.5)))},
                    Attributes().set("type", std::string("clip")).set("alpha", 0.0).set("beta", 1.0));
  }
  if (n == "softsign") return ctx.elementwise("div", x, add(ctx.unary("abs", x), k(1.0)));
  ctx.fail("activation '" + name + "' is not supported");
}

void import_recurrent(NodeContext& ctx, Cell cell) {
  const int64_t gates = cell == Cell::kRnn ? 1 : cell == Cell::kGru ? 3 : 4;
  const int64_t acts_per_dir = cell == Cell::kRnn ? 1 : cell == Cell::kGru ? 2 : 3;
  const std::string direction = ctx.attr_string("direction", std::string("forward"));
  if (direction != "forward" && direction != "reverse" && direction != "bidirectional")
    ctx.fail("direction must be forward, reverse or bidirectional");
  const int64_t dirs = direction == "bidirectional" ? 2 : 1;
  const int64_t layout = ctx.attr_int("layout", 0);
  const bool lbr = cell == Cell::kGru && ctx.attr_int("linear_before_reset", 0) != 0;
  const bool input_forget = cell == Cell::kLstm && ctx.attr_int("input_forget", 0) != 0;
  const std::optional<double> clip =
      ctx.has_attr("clip") ? std::optional<double>(ctx.attr_float("clip")) : std::nullopt;
  const std::vector<double> alphas = ctx.attr_floats("activation_alpha", std::vector<double>{});
  const std::vector<double> betas = ctx.attr_floats("activation_beta", std::vector<double>{});
  const std::vector<std::string> defaults = cell == Cell::kRnn ? std::vector<std::string>{"Tanh"}
                                            : cell == Cell::kGru
                                                ? std::vector<std::string>{"Sigmoid", "Tanh"}
                                                : std::vector<std::string>{"Sigmoid", "Tanh", "Tanh"};
  std::vector<std::string> acts = ctx.attr_strings("activations", std::vector<std::string>{});
  if (acts.empty()) {
    for (int64_t d = 0; d < dirs; ++d) acts.insert(acts.end(), defaults.begin(), defaults.end());
  }
  if (static_cast<int64_t>(acts.size()) == acts_per_dir && dirs == 2)
    acts.insert(acts.end(), acts.begin(), acts.end());
  if (static_cast<int64_t>(acts.size()) != acts_per_dir * dirs)
    ctx.fail("activations must name " + std::to_string(acts_per_dir) + " functions per direction");

  // activation_alpha / activation_beta are consumed in the order of the functions that take them
  // (ONNX Runtime's reading of the spec)
  std::vector<std::optional<double>> alpha_of(acts.size()), beta_of(acts.size());
  size_t next_alpha = 0, next_beta = 0;
  for (size_t i = 0; i < acts.size(); ++i) {
    std::string n;
    for (char c : acts[i]) n += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const bool takes_alpha = n == "affine" || n == "leakyrelu" || n == "thresholdedrelu" ||
                             n == "scaledtanh" || n == "hardsigmoid" || n == "elu";
    const bool takes_beta = n == "affine" || n == "scaledtanh" || n == "hardsigmoid";
    if (takes_alpha && next_alpha < alphas.size()) alpha_of[i] = alphas[next_alpha++];
    if (takes_beta && next_beta < betas.size()) beta_of[i] = betas[next_beta++];
  }
  TensorId x = ctx.input(0);
  if (layout != 0) x = ctx.add1("transpose", {x}, Attributes().set("perm", std::vector<int64_t>{1, 0, 2}));
  const Dims xd = ctx.net().desc(x).dims;  // [T, B, I]
  if (xd.size() != 3) ctx.fail("X must be 3-D");
  const int64_t steps = xd[0];
  if (steps == kDynamic) ctx.fail("the sequence length must be static (the layers are unrolled)");
  if (steps > kMaxSteps)
    ctx.fail("sequences longer than " + std::to_string(kMaxSteps) + " steps are not supported");
  const Dims rd = ctx.desc(2).dims;  // [D, G*H, H]
  if (rd.size() != 3 || rd[2] == kDynamic) ctx.fail("R must be 3-D with a static hidden size");
  const int64_t hidden = ctx.attr_int("hidden_size", rd[2]);
  if (hidden != rd[2] || rd[1] != gates * hidden || rd[0] != dirs)
    ctx.fail("W / R do not match hidden_size and the direction");
  if (ctx.has_input(4)) {
    auto lens = ctx.int_values(4);
    if (!lens) ctx.fail("sequence_lens must be known while parsing");
    for (int64_t l : *lens) {
      if (l != steps) ctx.fail("sequence_lens shorter than the sequence are not supported");
    }
  }
  const DataType dt = ctx.net().desc(x).dtype;
  auto pick = [&](TensorId t, int64_t i, int64_t axis) {  // index i of `axis`, the axis removed
    return ctx.add1("gather", {t, ctx.constant_i64({i}, {})}, Attributes().set("axis", axis));
  };
  auto cols = [&](TensorId t, int64_t g) {  // gate g's block of the last axis
    return ctx.add1("slice", {t},
                    Attributes()
                        .set("axes", std::vector<int64_t>{-1})
                        .set("starts", std::vector<int64_t>{g * hidden})
                        .set("ends", std::vector<int64_t>{(g + 1) * hidden}));
  };
  auto transposed = [&](TensorId t) {
    return ctx.add1("transpose", {t}, Attributes().set("perm", std::vector<int64_t>{1, 0}));
  };
  auto mm = [&](TensorId a, TensorId b) { return ctx.add1("matmul", {a, b}); };
  auto add = [&](TensorId a, TensorId b) { return ctx.elementwise("add", a, b); };
  auto mul = [&](TensorId a, TensorId b) { return ctx.elementwise("mul", a, b); };
  // an initial state [D, B, H] (layout 1: [B, D, H]) for direction d, or zeros
  auto initial = [&](int input, int64_t d) -> std::optional<TensorId> {
    if (!ctx.has_input(input)) return std::nullopt;
    return pick(ctx.input(input), d, layout != 0 ? 1 : 0);
  };
  std::vector<TensorId> y_dirs, h_last, c_last;
  for (int64_t d = 0; d < dirs; ++d) {
    const bool reverse = direction == "reverse" || d == 1;
    auto activation = [&](int64_t k, TensorId v) {
      const size_t i = static_cast<size_t>(d * acts_per_dir + k);
      std::optional<double> a = alpha_of[i], b = beta_of[i];
      const bool cell_output = cell == Cell::kLstm && k == 2;  // h(C): ONNX Runtime clips gate inputs only
      if (clip && !cell_output) {
        v = ctx.add1("activation", {v},
                     Attributes().set("type", std::string("clip")).set("alpha", -*clip).set("beta", *clip));
      }
      return apply_activation(ctx, acts[i], a, b, v);
    };
    TensorId w = pick(ctx.input(1), d, 0), r = pick(ctx.input(2), d, 0);  // [G*H, I], [G*H, H]
    TensorId xw = mm(x, transposed(w));                                   // [T, B, G*H]
    std::optional<TensorId> rb;
    if (ctx.has_input(3)) {
      TensorId b = pick(ctx.input(3), d, 0);  // [2*G*H]: Wb then Rb
      auto half = [&](int64_t k) {
        return ctx.add1("slice", {b},
                        Attributes()
                            .set("axes", std::vector<int64_t>{0})
                            .set("starts", std::vector<int64_t>{k * gates * hidden})
                            .set("ends", std::vector<int64_t>{(k + 1) * gates * hidden}));
      };
      xw = add(xw, half(0));
      rb = half(1);
    }
    TensorId rt = transposed(r);  // [H, G*H]
    std::optional<TensorId> h = initial(5, d), c = cell == Cell::kLstm ? initial(6, d) : std::nullopt;
    std::optional<TensorId> peep;
    if (cell == Cell::kLstm && ctx.has_input(7)) peep = pick(ctx.input(7), d, 0);  // [3H]: i, o, f
    auto peephole = [&](int64_t k) {                                               // P_i, P_o or P_f
      return ctx.add1("slice", {*peep},
                      Attributes()
                          .set("axes", std::vector<int64_t>{0})
                          .set("starts", std::vector<int64_t>{k * hidden})
                          .set("ends", std::vector<int64_t>{(k + 1) * hidden}));
    };
    std::vector<TensorId> ys(static_cast<size_t>(steps));
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t t = reverse ? steps - 1 - s : s;
      TensorId xt = pick(xw, t, 0);  // [B, G*H]
      // the recurrent projection H R^T + Rb ([B, G*H]); none for a zero initial state
      std::optional<TensorId> hr;
      if (h) hr = mm(*h, rt);
      if (rb) hr = hr ? add(*hr, *rb) : *rb;
      auto gate = [&](int64_t g) { return hr ? add(cols(xt, g), cols(*hr, g)) : cols(xt, g); };
      TensorId h_new;
      if (cell == Cell::kRnn) {
        h_new = activation(0, gate(0));
      } else if (cell == Cell::kGru) {  // gates z, r, h
        TensorId z = activation(0, gate(0)), rg = activation(0, gate(1));
        TensorId cand;
        if (lbr) {
          cand = hr ? add(cols(xt, 2), mul(rg, cols(*hr, 2))) : cols(xt, 2);
        } else {
          TensorId rec = h ? mm(mul(rg, *h), cols(rt, 2)) : TensorId{-1};
          if (rb) rec = rec >= 0 ? add(rec, cols(*rb, 2)) : cols(*rb, 2);
          cand = rec >= 0 ? add(cols(xt, 2), rec) : cols(xt, 2);
        }
        TensorId hh = activation(1, cand);
        // H = (1 - z) * hh + z * H_prev
        TensorId one_minus = ctx.elementwise("sub", ctx.scalar(dt, 1.0), z);
        h_new = mul(one_minus, hh);
        if (h) h_new = add(h_new, mul(z, *h));
      } else {  // LSTM: gates i, o, f, c
        TensorId pre_i = gate(0), pre_f = gate(2);
        if (peep && c) {
          pre_i = add(pre_i, mul(peephole(0), *c));
          pre_f = add(pre_f, mul(peephole(2), *c));
        }
        TensorId ig = activation(0, pre_i);
        TensorId fg = input_forget ? ctx.elementwise("sub", ctx.scalar(dt, 1.0), ig) : activation(0, pre_f);
        TensorId cc = activation(1, gate(3));
        TensorId c_new = mul(ig, cc);
        if (c) c_new = add(mul(fg, *c), c_new);
        TensorId pre_o = gate(1);
        if (peep) pre_o = add(pre_o, mul(peephole(1), c_new));
        TensorId og = activation(0, pre_o);
        h_new = mul(og, activation(2, c_new));
        c = c_new;
      }
      h = h_new;
      ys[static_cast<size_t>(t)] =
          ctx.add1("unsqueeze", {h_new}, Attributes().set("axes", std::vector<int64_t>{0}));
    }
    y_dirs.push_back(steps == 1 ? ys[0] : ctx.add1("concat", ys, Attributes().set("axis", int64_t{0})));
    h_last.push_back(*h);
    if (c) c_last.push_back(*c);
  }
  // Y [T, D, B, H] (layout 1: [B, T, D, H]); Y_h, Y_c [D, B, H] (layout 1: [B, D, H])
  auto stack = [&](const std::vector<TensorId>& parts, int64_t axis) {
    std::vector<TensorId> u;
    for (TensorId p : parts)
      u.push_back(ctx.add1("unsqueeze", {p}, Attributes().set("axes", std::vector<int64_t>{axis})));
    return u.size() == 1 ? u[0] : ctx.add1("concat", u, Attributes().set("axis", axis));
  };
  if (ctx.wants_output(0)) {
    TensorId y = stack(y_dirs, 1);  // [T, D, B, H]
    if (layout != 0)
      y = ctx.add1("transpose", {y}, Attributes().set("perm", std::vector<int64_t>{2, 0, 1, 3}));
    ctx.set_output(0, y);
  }
  auto state = [&](const std::vector<TensorId>& parts) {
    TensorId s = stack(parts, 0);  // [D, B, H]
    return layout != 0 ? ctx.add1("transpose", {s}, Attributes().set("perm", std::vector<int64_t>{1, 0, 2}))
                       : s;
  };
  if (ctx.num_outputs() > 1 && ctx.wants_output(1)) ctx.set_output(1, state(h_last));
  if (cell == Cell::kLstm && ctx.num_outputs() > 2 && ctx.wants_output(2)) ctx.set_output(2, state(c_last));
}

const ImporterRegistration kRegistered{
    {"RNN", [](NodeContext& c) { import_recurrent(c, Cell::kRnn); }},
    {"GRU", [](NodeContext& c) { import_recurrent(c, Cell::kGru); }},
    {"LSTM", [](NodeContext& c) { import_recurrent(c, Cell::kLstm); }},
};

}  // namespace
}  // namespace kiln::onnx
