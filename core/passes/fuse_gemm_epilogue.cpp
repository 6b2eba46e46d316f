// fuse_gemm_epilogue: folds a GEMM and the pointwise layers that finish it into one
// fully_connected layer whose epilogue does them (cuBLASLt epilogues or one pass of our own):
//
//   matmul(x, W[K,N] constant)          -> fully_connected(x, W^T)       (W^T stored as [N, K])
//   matmul(x, W[N,K] constant, tb=1)    -> fully_connected(x, W)
//   gemm + add(b[N] constant)           -> fully_connected(..., bias=b)   (either operand order)
//   gemm + activation(type)             -> fully_connected(..., activation=type, alpha/beta/threshold)
//   gemm + add(r, same shape as output) -> fully_connected(..., residual=r)
//
// A GEMM between two reshapes that only merge and split the leading dims (what torch's matmul
// decomposition makes of a Linear on [B, S, K]: view -> mm -> view, then the bias add) runs on the
// unreshaped input instead: reshape(x [L..., K] -> [M, K]) -> gemm -> reshape(-> [L..., N]) ->
// fully_connected(x) (fully_connected takes any leading dims; rows are the same rows). When the
// GEMM's input is not such a reshape (static shapes), a reshape of its [M, K] input to
// [L..., K] (a view) is added in front of the fused layer instead.
//
// in that order (the fully_connected semantics: y = act(x W^T + b) + r); each step is optional, and
// a matmul becomes a fully_connected only when at least one step fuses. Safe because every tensor
// inside the chain has exactly one consumer and is no network output, so no one else sees the
// intermediate values. The fused layer takes the place of the chain's last layer (a residual may
// be computed after the GEMM), keeps the GEMM's name, and records the original layers, comma-
// separated, in the string attribute "fused". Numerics: the intermediate values stay in FP32
// inside the epilogue instead of being rounded to the tensor dtype between layers.
#include <algorithm>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/weight_transforms.h"
#include "ir/ops/activation.h"

namespace kiln {
namespace {

// Uses of each tensor by layers and output bindings.
std::vector<int> count_uses(const Network& net) {
  std::vector<int> uses = reader_counts(net);
  for (TensorId t : net.outputs()) ++uses[t];
  return uses;
}

bool is_elementwise_add(const Layer& l) {
  if (l.op != "elementwise" || !l.attrs.has("op")) return false;
  return l.attrs.get_string("op", l.name) == "add";
}

// The GEMM at the head of a chain: a fully_connected without epilogue, or a matmul whose second
// operand is a 2-D constant and whose first is not transposed.
bool is_gemm_head(const Network& net, const Layer& l) {
  if (l.op == "fully_connected") {
    return l.attrs.get_int("residual", int64_t{0}) == 0 && !l.attrs.has("activation");
  }
  if (l.op != "matmul") return false;
  const Tensor& a = net.tensor(l.inputs[0]);
  const Tensor& b = net.tensor(l.inputs[1]);
  const bool ta = a.dims.size() > 1 && l.attrs.get_int("transpose_a", int64_t{0}) != 0;
  return !ta && b.kind == TensorKind::kConstant && b.dims.size() == 2;
}

// A constant holding a vector of n elements along the last dim ([n], [1, n], [1, 1, n], ...).
bool is_bias_vector(const Tensor& t, int64_t n, DataType dtype) {
  if (t.kind != TensorKind::kConstant || t.dtype != dtype || t.dims.empty() || t.dims.back() != n)
    return false;
  return volume(t.dims) == n;
}

// Whether two shapes have equal leading dims (all but the last): equal static dims, and at most one
// dynamic dim, at the same position in both. Given that both hold the same number of rows, that
// one dynamic dim is then equal too.
bool same_leading_dims(const Dims& a, const Dims& b) {
  if (a.size() != b.size() || a.empty()) return false;
  int dynamic = 0;
  for (size_t i = 0; i + 1 < a.size(); ++i) {
    if (a[i] == kDynamic && b[i] == kDynamic) {
      ++dynamic;
    } else if (a[i] != b[i] || a[i] == kDynamic || b[i] == kDynamic) {
      return false;
    }
  }
  return dynamic <= 1;
}

// W [K, N] row-major -> W^T [N, K] as a new constant.
TensorId transposed_constant(Network& net, TensorId w) {
  return add_derived_constant(net, unique_tensor_name(net, net.tensor(w).name + "_transposed"), "transpose2d",
                              Attributes(), {w});
}

}  // namespace

bool fuse_gemm_epilogue(Network& net, const std::set<std::string>& keep) {
  const std::vector<int> uses = count_uses(net);
  std::vector<int> consumer(net.tensors().size(), -1);  // the consumer of single-use tensors
  const auto& layers = net.layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    for (TensorId t : layers[i].inputs) consumer[t] = static_cast<int>(i);
  }
  // The single consumer of t, when t has one and is no output; else -1.
  auto only_consumer = [&](TensorId t) {
    const int c = uses[t] == 1 && !net.is_output(t) ? consumer[t] : -1;
    return c >= 0 && keep.count(layers[c].name) ? -1 : c;
  };

  const std::vector<int> producer = net.producers();
  std::vector<bool> removed(layers.size(), false);
  std::unordered_map<int, Layer> replacement;  // index of a chain's last layer -> fused layer
  std::unordered_map<int, Layer> before;       // a reshape the fused layer reads, placed before it
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& head = layers[i];
    if (removed[i] || keep.count(head.name) || !is_gemm_head(net, head)) continue;
    const TensorDesc out = net.desc(head.outputs[0]);
    if (out.dims.empty()) continue;  // vector . vector: no rows to broadcast a bias over
    const int64_t n = out.dims.back();
    const bool has_bias = head.op == "fully_connected" && head.inputs.size() == 3;
    std::vector<int> chain;
    TensorId cur = head.outputs[0];
    TensorId x = head.inputs[0];
    TensorId bias = -1, residual = -1;
    Dims x_rows;  // when set, the fused layer reads reshape(x, x_rows)
    const Layer* act = nullptr;
    int c = only_consumer(cur);
    // The steps in their order (bias < activation < residual, the residual ends the chain); the
    // leading-dim reshape may sit between any two of them, since bias and activation act per row
    // and column alike whatever the rows' grouping.
    enum Stage { kBias, kAct, kResidual, kDone } stage = has_bias ? kAct : kBias;
    bool reshaped = false;
    while (c >= 0 && stage != kDone) {
      const Layer& l = layers[c];
      const Dims cur_dims = net.desc(cur).dims;
      const TensorId other = l.inputs.size() == 2 ? (l.inputs[0] == cur ? l.inputs[1] : l.inputs[0]) : -1;
      if (!reshaped && l.op == "reshape" && out.dims.size() == 2) {
        // reshape(x0 [L..., K] -> [M, K]) -> gemm ... -> reshape(-> [L..., N]): read x0 instead.
        const int px = producer[x];
        const Dims y0 = net.desc(l.outputs[0]).dims;
        const int64_t k = net.desc(x).dims.back();
        if (k == kDynamic || y0.empty() || y0.back() != n) break;
        const Dims x0 = px >= 0 && layers[px].op == "reshape" ? net.desc(layers[px].inputs[0]).dims : Dims{};
        if (!x0.empty() && x0.back() == k && same_leading_dims(x0, y0)) {
          x = layers[px].inputs[0];
        } else if (is_static(y0) && is_static(net.desc(x).dims)) {
          // x's rows are not a reshape of [y0's leading dims..., K]: a reshape to that (a view).
          x_rows = Dims(y0.begin(), y0.end() - 1);
          x_rows.push_back(k);
        } else {
          break;
        }
        reshaped = true;
      } else if (stage == kBias && n != kDynamic && is_elementwise_add(l) && other != cur &&
                 is_bias_vector(net.tensor(other), n, out.dtype) && net.desc(l.outputs[0]).dims == cur_dims) {
        bias = other;  // gemm + add(b [.., N] constant)
        stage = kAct;
      } else if (stage <= kAct && l.op == "activation") {
        act = &l;
        stage = kResidual;
      } else if (is_elementwise_add(l) && other != cur && net.desc(other).dtype == out.dtype &&
                 net.desc(other).dims == cur_dims && net.desc(l.outputs[0]).dims == cur_dims) {
        residual = other;  // gemm ... + r (same shape)
        stage = kDone;
      } else {
        break;
      }
      chain.push_back(c);
      cur = l.outputs[0];
      c = only_consumer(cur);
    }
    // A reshape alone is no reason to fuse: something of the epilogue must come with it. A trailing
    // reshape is left in place (nothing after it fused).
    if (!chain.empty() && layers[chain.back()].op == "reshape") {
      chain.pop_back();
      cur = chain.empty() ? head.outputs[0] : layers[chain.back()].outputs[0];
      x = head.inputs[0];
      x_rows.clear();
    }
    if (chain.empty()) continue;

    Layer fused;
    fused.name = head.name;
    fused.op = "fully_connected";
    // A head that is itself a fusion result (fuse_parallel_gemms) keeps its list of originals.
    std::string names = fused_names(head);
    for (int idx : chain) names += "," + layers[idx].name;
    if (head.op == "matmul") {  // matmul's transpose attributes do not apply to fully_connected
      const bool tb = head.attrs.get_int("transpose_b", int64_t{0}) != 0;
      TensorId w = tb ? head.inputs[1] : transposed_constant(net, head.inputs[1]);
      fused.inputs = {x, w};
      if (head.attrs.has("allow_tf32"))
        fused.attrs.set("allow_tf32", head.attrs.get_int("allow_tf32", head.name));
    } else {
      fused.attrs = head.attrs;
      fused.inputs = head.inputs;
      fused.inputs[0] = x;
    }
    fused.attrs.set("fused", names);
    if (bias >= 0) {
      const Tensor& b = net.tensor(bias);
      if (b.dims.size() != 1) {  // [1, .., N] -> [N]
        std::string name = unique_tensor_name(net, b.name + "_vector");
        bias = add_derived_constant(net, name, "reshape", Attributes().set("dims", Dims{n}), {bias});
      }
      fused.inputs.push_back(bias);
    }
    if (act) {
      fused.attrs.set("activation", act->attrs.get_string("type", act->name));
      for (const char* a : {"alpha", "beta", "threshold"}) {
        if (act->attrs.has(a)) fused.attrs.set(a, act->attrs.get_float(a, 0.0));
      }
    }
    if (residual >= 0) {
      fused.inputs.push_back(residual);
      fused.attrs.set("residual", int64_t{1});
    }
    fused.outputs = {cur};
    if (!x_rows.empty()) {
      std::set<std::string> taken;
      for (const auto& other : layers) taken.insert(other.name);
      const std::string name = unique_name(taken, head.name + "/rows");
      Layer rows = net.add_layer("reshape", {fused.inputs[0]}, Attributes().set("shape", x_rows), name);
      net.mutable_layers().pop_back();  // placed before the fused layer below
      fused.inputs[0] = rows.outputs[0];
      before[chain.back()] = std::move(rows);
    }
    removed[i] = true;
    for (int idx : chain) removed[idx] = true;
    replacement[chain.back()] = std::move(fused);
  }
  if (replacement.empty()) return false;

  std::vector<Layer> kept;
  auto& all = net.mutable_layers();
  for (size_t i = 0; i < all.size(); ++i) {
    auto it = replacement.find(static_cast<int>(i));
    auto rows = before.find(static_cast<int>(i));
    if (rows != before.end()) kept.push_back(std::move(rows->second));
    if (it != replacement.end()) {
      kept.push_back(std::move(it->second));
    } else if (!removed[i]) {
      kept.push_back(std::move(all[i]));
    }
  }
  all = std::move(kept);
  net.compact();
  return true;
}

}  // namespace kiln
