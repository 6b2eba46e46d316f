// fuse_attention: recognizes scaled dot-product attention written out as layers (ONNX exports,
// hand-built networks) and replaces it by one attention layer:
//   s = matmul(q, kᵀ)             kᵀ a transpose of k's last two dims, or transpose_b = 1
//   s = s * c  or  s / c           optional, c a one-element constant (> 0 as a scale)
//   s = s + mask                   optional, an additive mask
//   p = softmax(s, axis = -1)
//   y = matmul(p, v)
// -> attention(q, k, v[, mask]) with scale c (1/c; 1 without). q and k may each carry a
// constant factor (q * a) · (k * b)ᵀ, folded into the scale (torch.onnx's SDPA decomposition).
// Every intermediate must be single-use; the attention layer must accept the shapes and dtypes
// (checked with its schema before anything changes). The later attention passes (transposes into
// the bshd layout, packed QKV) then apply as to converted attention. torch.onnx's guard
// where(isnan(p), 0, p) between the softmax and the last matmul is absorbed: attention gives fully
// masked rows 0 as the guard does (a NaN already in q, k or v stays NaN, where the guard would
// have zeroed its row).
#include <algorithm>
#include <cmath>
#include <memory>

#include "core/passes/passes.h"
#include "core/passes/pattern_match.h"
#include "ir/dims.h"
#include "ir/error.h"
#include "ir/logging.h"
#include "ir/op_schema.h"

namespace kiln {
namespace {

// t = x * constant (either order, single use): sets x and the factor.
bool scaled_by_constant(const PatternMatcher& m, TensorId t, TensorId* x, double* factor) {
  const Layer* mul = m.elementwise(t, "mul");
  if (!mul) return false;
  for (int side = 0; side < 2; ++side) {
    double c = 0;
    if (m.constant_value(mul->inputs[1 - side], &c)) {
      *x = mul->inputs[side];
      *factor = c;
      return true;
    }
  }
  return false;
}

bool last_two_swapped(const std::vector<int64_t>& perm, std::vector<int64_t>* swapped) {
  const size_t r = perm.size();
  if (r < 2) return false;
  *swapped = perm;
  std::swap((*swapped)[r - 1], (*swapped)[r - 2]);
  return true;
}

bool identity_perm(const std::vector<int64_t>& perm) {
  for (size_t i = 0; i < perm.size(); ++i) {
    if (perm[i] != static_cast<int64_t>(i) &&
        perm[i] != static_cast<int64_t>(i) - static_cast<int64_t>(perm.size()))
      return false;
  }
  return true;
}

// One step of the chain between the scores and the softmax, from the softmax back: a reshape (its
// attributes) or an addition of `addend`.
struct ChainStep {
  bool reshape;
  Attributes attrs;
  TensorId addend;
};

// `t` is computed from a matmul through reshapes, additions and multiplications or divisions
// (the scores, possibly scaled, biased or viewed), looking at most `depth` layers up.
bool leads_to_scores(const PatternMatcher& m, TensorId t, int depth) {
  const Layer* l = m.producer(t);
  if (!l || depth == 0) return false;
  if (l->op == "matmul") return true;
  if (l->op == "reshape") return leads_to_scores(m, l->inputs[0], depth - 1);
  if (l->op != "elementwise") return false;
  const std::string op = l->attrs.get_string("op", "");
  if (op != "add" && op != "mul" && op != "div") return false;
  return leads_to_scores(m, l->inputs[0], depth - 1) ||
         (op != "div" && leads_to_scores(m, l->inputs[1], depth - 1));
}

// The chain's layers again, on a zero tensor of `like`'s dtype and dims, placed before layer
// `at`: their output is what the chain adds to the scores.
TensorId add_chain_on_zeros(Network& net, int at, TensorId like, const std::vector<ChainStep>& chain,
                            const std::string& name) {
  const Tensor& t = net.tensor(like);
  auto zeros = std::make_shared<std::vector<uint8_t>>(
      static_cast<size_t>(volume(t.dims)) * dtype_size(t.dtype), uint8_t{0});
  TensorId cur = net.add_constant(name + "/zeros", t.dtype, t.dims, zeros);
  const size_t first = net.layers().size();
  for (size_t n = chain.size(); n-- > 0;) {
    const ChainStep& step = chain[n];
    const std::string layer_name = name + "/" + std::to_string(chain.size() - n);
    cur = step.reshape ? net.add_layer("reshape", {cur}, step.attrs, layer_name).outputs[0]
                       : net.add_layer("elementwise", {cur, step.addend}, step.attrs, layer_name).outputs[0];
  }
  auto& layers = net.mutable_layers();
  std::rotate(layers.begin() + at, layers.begin() + static_cast<std::ptrdiff_t>(first), layers.end());
  return cur;
}

}  // namespace

bool fuse_attention(Network& net, int64_t max_folded_bytes) {
  bool changed = false, folds = false;
  for (int i = 0; i < static_cast<int>(net.layers().size()); ++i) {
    const Layer out = net.layers()[i];  // a copy: layers may be added below
    if (out.op != "matmul" || out.inputs.size() != 2) continue;
    if (out.attrs.get_int("transpose_a", int64_t{0}) || out.attrs.get_int("transpose_b", int64_t{0}))
      continue;
    PatternMatcher m(net);
    TensorId probs = out.inputs[0];
    // torch.onnx's guard for fully masked rows, where(isnan(p), 0, p): attention gives those
    // rows 0 itself.
    if (const Layer* guard = m.producer(probs); guard && guard->op == "where" && m.single_use(probs)) {
      const Layer* isnan = m.elementwise(guard->inputs[0], "ne");
      if (isnan && isnan->inputs[0] == isnan->inputs[1] && isnan->inputs[0] == guard->inputs[2] &&
          m.is_constant(guard->inputs[1], 0.0)) {
        probs = guard->inputs[2];
      }
    }
    const Layer* softmax = m.producer(probs);
    const int uses_allowed = probs == out.inputs[0] ? 1 : 3;  // the guard reads p three times
    if (!softmax || softmax->op != "softmax" || net.is_output(probs)) continue;
    int uses = 0;
    for (const Layer& l : net.layers()) {
      for (TensorId t : l.inputs) uses += t == probs;
    }
    if (uses != uses_allowed) continue;
    const int64_t rank = static_cast<int64_t>(net.tensor(softmax->inputs[0]).dims.size());
    const int64_t axis = softmax->attrs.get_int("axis", int64_t{-1});
    if (softmax->attrs.get_int("log", int64_t{0}) != 0 || (axis != -1 && axis != rank - 1) || rank < 3)
      continue;
    TensorId s = softmax->inputs[0];
    if (!m.single_use(s)) continue;
    // Between the scores and the softmax: additions (the mask) and reshapes. One addition is the
    // mask itself; a longer chain (Swin's relative bias, a view to [B, windows, H, S, S], the
    // shifted-window mask, a view back) adds chain(0) when it ends in the scores' dims, and that
    // mask is computed by a copy of the chain on zeros (constant-folded when its addends are).
    TensorId mask = -1;
    std::vector<ChainStep> chain;
    const TensorId scores_end = s;
    for (TensorId t = s;;) {
      const Layer* l = m.producer(t);
      if (!l || (t != scores_end && !m.single_use(t))) break;
      if (l->op == "reshape" && l->inputs.size() == 1) {
        chain.push_back({true, l->attrs, -1});
        t = s = l->inputs[0];
        continue;
      }
      if (l->op != "elementwise" || l->attrs.get_string("op", "") != "add") break;
      const bool a = leads_to_scores(m, l->inputs[0], 8), b = leads_to_scores(m, l->inputs[1], 8);
      if (a == b || net.tensor(l->inputs[a ? 0 : 1]).dims != net.tensor(t).dims) break;
      chain.push_back({false, l->attrs, l->inputs[a ? 1 : 0]});
      t = s = l->inputs[a ? 0 : 1];
    }
    size_t adds = 0;
    for (const ChainStep& step : chain) adds += !step.reshape;
    const bool cloned_mask = adds > 0 && chain.size() > 1;
    if (adds == 1 && chain.size() == 1) mask = chain[0].addend;
    if (adds < chain.size() &&
        (net.tensor(s).dims != net.tensor(scores_end).dims || !is_static(net.tensor(s).dims)))
      continue;
    double scale = 1.0, c = 0;
    TensorId inner = -1;
    if (const Layer* div = m.elementwise(s, "div"); div && m.constant_value(div->inputs[1], &c) && c != 0) {
      scale = 1.0 / c;
      s = div->inputs[0];
    } else if (scaled_by_constant(m, s, &inner, &c)) {
      scale = c;
      s = inner;
    }
    // A scale per head (Swin V2's learned logit scale, [H, 1, 1]): scores * t == (q * t) · kᵀ when
    // t's last two dims are 1; q takes it.
    TensorId q_factor = -1;
    if (const Layer* mul = m.elementwise(s, "mul"); mul && scale == 1.0) {
      for (int side = 0; side < 2 && q_factor < 0; ++side) {
        const Layer* p = m.producer(mul->inputs[side]);
        const Dims& t = net.tensor(mul->inputs[1 - side]).dims;
        if (p && p->op == "matmul" && t.size() >= 2 && t[t.size() - 1] == 1 && t[t.size() - 2] == 1 &&
            net.tensor(mul->inputs[1 - side]).dtype == net.tensor(s).dtype) {
          q_factor = mul->inputs[1 - side];
          s = mul->inputs[side];
        }
      }
    }
    const Layer* qk = m.producer(s);
    if (!qk || qk->op != "matmul" || !m.single_use(s) || qk->attrs.get_int("transpose_a", int64_t{0}))
      continue;
    TensorId q = qk->inputs[0], kt = qk->inputs[1], k = -1;
    if (q_factor >= 0) {
      Dims scaled;
      if (!broadcast_shapes(net.tensor(q).dims, net.tensor(q_factor).dims, &scaled) ||
          scaled != net.tensor(q).dims)
        continue;
    }
    if (scaled_by_constant(m, q, &inner, &c)) {
      q = inner;
      scale *= c;
    }
    bool k_is_transposed = qk->attrs.get_int("transpose_b", int64_t{0}) != 0;
    if (scaled_by_constant(m, kt, &inner, &c)) {
      kt = inner;
      scale *= c;
    }
    if (!(scale > 0) || !std::isfinite(scale)) continue;
    // k from kᵀ: the transpose's source under the perm with its last two entries swapped.
    const Layer* tr = k_is_transposed ? nullptr : m.producer(kt);
    std::vector<int64_t> k_perm;
    if (k_is_transposed) {
      k = kt;
    } else if (tr && tr->op == "transpose" && m.single_use(kt) &&
               last_two_swapped(tr->attrs.get_ints("perm", describe(*tr)), &k_perm)) {
      k = tr->inputs[0];
    } else {
      k_perm.resize(static_cast<size_t>(net.tensor(kt).dims.size()));
      for (size_t d = 0; d < k_perm.size(); ++d) k_perm[d] = static_cast<int64_t>(d);
      if (!last_two_swapped(std::vector<int64_t>(k_perm), &k_perm)) continue;
      k = kt;
    }
    const TensorId v = out.inputs[1];
    // Check the attention layer accepts these before changing anything.
    std::vector<TensorDesc> descs;
    Dims k_dims = net.tensor(k).dims;
    if (!k_perm.empty() && !identity_perm(k_perm)) {
      Dims permuted;
      for (int64_t p : k_perm)
        permuted.push_back(k_dims[static_cast<size_t>(p < 0 ? p + static_cast<int64_t>(k_dims.size()) : p)]);
      k_dims = permuted;
    }
    descs.push_back(net.desc(q));
    descs.push_back({net.tensor(k).dtype, k_dims});
    descs.push_back(net.desc(v));
    if (mask >= 0) descs.push_back(net.desc(mask));
    if (cloned_mask) descs.push_back(net.desc(s));
    Layer probe;
    probe.name = out.name;
    probe.op = "attention";
    probe.attrs.set("scale", scale);
    try {
      const std::vector<TensorDesc> got = find_schema("attention")->infer(probe, descs);
      if (got.at(0).dims != net.tensor(out.outputs[0]).dims ||
          got.at(0).dtype != net.tensor(out.outputs[0]).dtype) {
        KILN_LOG(kVerbose, "fuse_attention: " << out.name << " stays: attention gives "
                                              << to_string(got.at(0).dims) << ", the pattern "
                                              << to_string(net.tensor(out.outputs[0]).dims));
        continue;
      }
    } catch (const Error& e) {
      KILN_LOG(kVerbose, "fuse_attention: " << out.name << " stays: " << e.what());
      continue;
    }
    if (!k_perm.empty() && !identity_perm(k_perm)) {
      // A transpose layer for k, placed where the pattern's kᵀ transpose (or the matmul) was.
      Layer t;
      t.name = out.name + "/k";
      t.op = "transpose";
      t.inputs = {k};
      t.attrs.set("perm", k_perm);
      Tensor kt_new;
      kt_new.name = out.name + "/k";
      for (int n = 1; net.find_tensor(kt_new.name) >= 0; ++n)
        kt_new.name = out.name + "/k" + std::to_string(n);
      kt_new.dtype = net.tensor(k).dtype;
      kt_new.dims = k_dims;
      TensorId id = net.restore_tensor(kt_new);
      t.outputs = {id};
      net.mutable_layers().insert(net.mutable_layers().begin() + i, t);
      ++i;
      k = id;
    }
    if (cloned_mask) {
      mask = add_chain_on_zeros(net, i, s, chain, out.name + "/mask");
      i += static_cast<int>(chain.size());
    }
    if (q_factor >= 0) {
      const size_t first = net.layers().size();
      q = net.add_elementwise(q, q_factor, "mul", out.name + "/q_scaled").outputs[0];
      auto& layers = net.mutable_layers();
      std::rotate(layers.begin() + i, layers.begin() + static_cast<std::ptrdiff_t>(first), layers.end());
      ++i;
    }
    std::vector<TensorId> in = {q, k, v};
    if (mask >= 0) in.push_back(mask);
    replace_layer(net, i, "attention", in, Attributes().set("scale", scale));
    changed = true;
    folds |= cloned_mask;
  }
  if (changed) {
    net.reindex();
    eliminate_dead_layers(net);
    if (folds) fold_constants(net, max_folded_bytes);
    net.revalidate();
  }
  return changed;
}

}  // namespace kiln
