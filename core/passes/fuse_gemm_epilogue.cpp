// fuse_gemm_epilogue: folds a GEMM and the pointwise layers that finish it into one
// fully_connected layer whose epilogue does them (cuBLASLt epilogues or one pass of our own):
//
//   matmul(x, W[K,N] constant)          -> fully_connected(x, W^T)       (W^T stored as [N, K])
//   matmul(x, W[N,K] constant, tb=1)    -> fully_connected(x, W)
//   gemm + add(b[N] constant)           -> fully_connected(..., bias=b)   (either operand order)
//   gemm + activation(type)             -> fully_connected(..., activation=type, alpha/beta/threshold)
//   gemm + add(r, same shape as output) -> fully_connected(..., residual=r)
//
// in that order (the fully_connected semantics: y = act(x W^T + b) + r); each step is optional, and
// a matmul becomes a fully_connected only when at least one step fuses. Safe because every tensor
// inside the chain has exactly one consumer and is no network output, so no one else sees the
// intermediate values. The fused layer takes the place of the chain's last layer (a residual may
// be computed after the GEMM), keeps the GEMM's name, and records the original layers, comma-
// separated, in the string attribute "fused". Numerics: the intermediate values stay in FP32
// inside the epilogue instead of being rounded to the tensor dtype between layers.
#include <algorithm>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/ops/activation.h"
#include "core/passes/passes.h"

namespace kiln {
namespace {

// Uses of each tensor by layers and output bindings.
std::vector<int> count_uses(const Network& net) {
  std::vector<int> uses(net.tensors().size(), 0);
  for (const auto& l : net.layers()) {
    for (TensorId t : l.inputs) ++uses[t];
  }
  for (TensorId t : net.outputs()) ++uses[t];
  return uses;
}

std::string unique_tensor_name(const Network& net, const std::string& base) {
  std::string name = base;
  for (int i = 1; net.find_tensor(name) >= 0; ++i) name = base + "_" + std::to_string(i);
  return name;
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
  if (t.kind != TensorKind::kConstant || t.dtype != dtype || t.dims.empty() || t.dims.back() != n) return false;
  return volume(t.dims) == n;
}

// W [K, N] row-major -> W^T [N, K] as a new constant.
TensorId transposed_constant(Network& net, TensorId w) {
  const Tensor& t = net.tensor(w);
  const int64_t k = t.dims[0], n = t.dims[1];
  const size_t es = dtype_size(t.dtype);
  auto bytes = std::make_shared<std::vector<uint8_t>>(t.data->size());
  const uint8_t* src = t.data->data();
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      std::copy_n(src + (i * n + j) * es, es, bytes->data() + (j * k + i) * es);
    }
  }
  std::string name = unique_tensor_name(net, t.name + "_transposed");
  DataType dtype = t.dtype;
  return net.add_constant(name, dtype, {n, k}, std::move(bytes));
}

}  // namespace

bool fuse_gemm_epilogue(Network& net) {
  const std::vector<int> uses = count_uses(net);
  std::vector<int> consumer(net.tensors().size(), -1);  // the consumer of single-use tensors
  const auto& layers = net.layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    for (TensorId t : layers[i].inputs) consumer[t] = static_cast<int>(i);
  }
  // The single consumer of t, when t has one and is no output; else -1.
  auto only_consumer = [&](TensorId t) { return uses[t] == 1 && !net.is_output(t) ? consumer[t] : -1; };

  std::vector<bool> removed(layers.size(), false);
  std::unordered_map<int, Layer> replacement;  // index of a chain's last layer -> fused layer
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& head = layers[i];
    if (removed[i] || !is_gemm_head(net, head)) continue;
    const TensorDesc out = net.desc(head.outputs[0]);
    if (out.dims.empty()) continue;  // vector . vector: no rows to broadcast a bias over
    const int64_t n = out.dims.back();
    const bool has_bias = head.op == "fully_connected" && head.inputs.size() == 3;
    std::vector<int> chain;
    TensorId cur = head.outputs[0];
    TensorId bias = -1, residual = -1;
    const Layer* act = nullptr;

    // gemm + add(b): only onto a GEMM without a bias yet, and only a constant vector [.., N].
    int c = only_consumer(cur);
    if (c >= 0 && !has_bias && n != kDynamic && is_elementwise_add(layers[c])) {
      const Layer& add = layers[c];
      TensorId other = add.inputs[0] == cur ? add.inputs[1] : add.inputs[0];
      const TensorDesc sum = net.desc(add.outputs[0]);
      if (other != cur && is_bias_vector(net.tensor(other), n, out.dtype) && sum.dims == out.dims) {
        bias = other;
        chain.push_back(c);
        cur = add.outputs[0];
        c = only_consumer(cur);
      }
    }
    if (c >= 0 && layers[c].op == "activation") {
      act = &layers[c];
      chain.push_back(c);
      cur = layers[c].outputs[0];
      c = only_consumer(cur);
    }
    if (c >= 0 && is_elementwise_add(layers[c])) {
      const Layer& add = layers[c];
      TensorId other = add.inputs[0] == cur ? add.inputs[1] : add.inputs[0];
      const TensorDesc r = net.desc(other);
      const TensorDesc sum = net.desc(add.outputs[0]);
      if (other != cur && r.dtype == out.dtype && r.dims == out.dims && sum.dims == out.dims) {
        residual = other;
        chain.push_back(c);
        cur = add.outputs[0];
      }
    }
    if (chain.empty()) continue;

    Layer fused;
    fused.name = head.name;
    fused.op = "fully_connected";
    // A head that is itself a fusion result (fuse_parallel_gemms) keeps its list of originals.
    std::string names = head.attrs.has("fused") ? head.attrs.get_string("fused", head.name) : head.name;
    for (int idx : chain) names += "," + layers[idx].name;
    if (head.op == "matmul") {  // matmul's transpose attributes do not apply to fully_connected
      const bool tb = head.attrs.get_int("transpose_b", int64_t{0}) != 0;
      TensorId w = tb ? head.inputs[1] : transposed_constant(net, head.inputs[1]);
      fused.inputs = {head.inputs[0], w};
      if (head.attrs.has("allow_tf32")) fused.attrs.set("allow_tf32", head.attrs.get_int("allow_tf32", head.name));
    } else {
      fused.attrs = head.attrs;
      fused.inputs = head.inputs;
    }
    fused.attrs.set("fused", names);
    if (bias >= 0) {
      const Tensor& b = net.tensor(bias);
      if (b.dims.size() != 1) {  // [1, .., N] -> [N]
        std::shared_ptr<const std::vector<uint8_t>> data = b.data;
        std::string name = unique_tensor_name(net, b.name + "_vector");
        DataType dtype = b.dtype;
        bias = net.add_constant(name, dtype, {n}, data);
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
    removed[i] = true;
    for (int idx : chain) removed[idx] = true;
    replacement[chain.back()] = std::move(fused);
  }
  if (replacement.empty()) return false;

  std::vector<Layer> kept;
  auto& all = net.mutable_layers();
  for (size_t i = 0; i < all.size(); ++i) {
    auto it = replacement.find(static_cast<int>(i));
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
