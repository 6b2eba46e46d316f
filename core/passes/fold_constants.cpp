// fold_constants: a layer whose inputs are all constants (or that has none) is evaluated at build
// time on the reference backend and its outputs become constants (f(c1, c2) -> c). Safe for every
// op with a reference kernel, since the reference backend defines each op's result. Outputs that
// are larger than the limit (BuilderConfig::max_folded_constant_bytes) stay computed at run time,
// to keep plans small. Layers whose reference evaluation would take long (a large contraction:
// matmul, convolution, attention, windows) stay computed at run time too (kMaxFoldWork), so that a
// build never spends minutes on the CPU folding what the GPU computes in microseconds.
// Shape arithmetic whose values are fully known at build time (shape-of a static tensor, and what
// is computed from it) becomes constants too, whatever its inputs.
#include <algorithm>
#include <cstring>
#include <memory>

#include "core/passes/passes.h"
#include "core/weight_transforms.h"
#include "kernels/kernel.h"

namespace kiln {
namespace {

// About 2^26 multiply-adds: a tenth of a second on the reference backend.
constexpr int64_t kMaxFoldWork = int64_t{1} << 26;

// An upper bound of the element reads a layer's reference kernel makes: each output element of a
// contraction reads its reduction length (K of a matmul, C/groups x kernel of a convolution);
// attention, pooling windows and topk at most all their inputs; every other op a bounded number.
// Saturates at kMaxFoldWork + 1.
int64_t fold_work(const Network& net, const Layer& l) {
  const int64_t out = volume(net.tensor(l.outputs.at(0)).dims);
  auto dims = [&](size_t i) -> const Dims& { return net.tensor(l.inputs.at(i)).dims; };
  int64_t per_output = 1;
  if (l.op == "matmul" || l.op == "fully_connected") {
    const Dims& a = dims(0);  // K is one of its last two dims
    for (size_t d = a.size() > 2 ? a.size() - 2 : 0; d < a.size(); ++d)
      per_output = std::max(per_output, a[d]);
  } else if (l.op == "convolution" || l.op == "deconvolution") {
    const Dims& w = dims(1);  // per output element at most all weights of one output channel
    const int64_t channels = w.size() > 1 ? std::max<int64_t>(std::min(w[0], w[1]), 1) : 1;
    per_output = volume(w) / channels;
  } else if (l.op == "attention" || l.op == "packed_attention" || l.op == "pooling" || l.op == "topk") {
    per_output = 0;
    for (size_t i = 0; i < l.inputs.size(); ++i) per_output += volume(dims(i));
  }
  if (out == 0 || per_output == 0) return 0;
  return per_output > kMaxFoldWork / out ? kMaxFoldWork + 1 : out * per_output;
}

bool outputs_known(const Network& net, const Layer& l) {
  for (TensorId t : l.outputs) {
    if (!fully_known(net.tensor(t).values)) return false;
  }
  return !l.outputs.empty();
}

std::shared_ptr<std::vector<uint8_t>> encode_values(DataType dtype, const std::vector<int64_t>& v) {
  auto bytes = std::make_shared<std::vector<uint8_t>>(v.size() * dtype_size(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    uint8_t* p = bytes->data() + i * dtype_size(dtype);
    switch (dtype) {
      case DataType::kInt64:
        std::memcpy(p, &v[i], 8);
        break;
      case DataType::kInt32: {
        int32_t x = static_cast<int32_t>(v[i]);
        std::memcpy(p, &x, 4);
        break;
      }
      case DataType::kInt8:
        *p = static_cast<uint8_t>(static_cast<int8_t>(v[i]));
        break;
      default:
        *p = v[i] != 0;
        break;  // bool
    }
  }
  return bytes;
}

}  // namespace

bool fold_constants(Network& net, int64_t max_bytes) {
  bool changed = false;
  auto& layers = net.mutable_layers();
  std::vector<Layer> kept;
  for (auto& l : layers) {
    if (outputs_known(net, l)) {
      for (TensorId t : l.outputs) {
        Tensor& o = net.tensor(t);
        o.kind = TensorKind::kConstant;
        o.data = encode_values(o.dtype, *o.values);
      }
      changed = true;
      continue;
    }
    bool all_const = true;
    for (TensorId t : l.inputs) all_const &= net.tensor(t).kind == TensorKind::kConstant;
    int64_t out_bytes = 0;
    for (TensorId t : l.outputs) all_const &= is_static(net.tensor(t).dims);
    if (all_const) {
      for (TensorId t : l.outputs) {  // each term capped: the sum of huge outputs must not wrap
        out_bytes += std::min<int64_t>(tensor_bytes(net.tensor(t).dims, dtype_size(net.tensor(t).dtype)),
                                       max_bytes + 1);
      }
    }
    if (!all_const || out_bytes > max_bytes || !has_kernel(l.op, Backend::kReference) ||
        fold_work(net, l) > kMaxFoldWork) {
      kept.push_back(std::move(l));
      continue;
    }
    std::vector<TensorView> in, out;
    for (TensorId t : l.inputs) {
      const Tensor& c = net.tensor(t);
      in.push_back({const_cast<uint8_t*>(c.data->data()), c.dtype, c.dims});
    }
    std::vector<std::shared_ptr<std::vector<uint8_t>>> buffers;
    for (TensorId t : l.outputs) {
      const Tensor& o = net.tensor(t);
      buffers.push_back(std::make_shared<std::vector<uint8_t>>(tensor_bytes(o.dims, dtype_size(o.dtype))));
      out.push_back({buffers.back()->data(), o.dtype, o.dims});
    }
    if (!all_outputs_empty(out)) create_kernel(l, Backend::kReference)->run(in, out, LaunchContext{});
    for (size_t i = 0; i < l.outputs.size(); ++i) {
      Tensor& o = net.tensor(l.outputs[i]);
      o.lineage =
          derived_lineage(net, "layer", l.op, l.attrs, static_cast<int64_t>(i), l.inputs, o.dtype, o.dims);
      o.kind = TensorKind::kConstant;
      o.data = buffers[i];
    }
    changed = true;
  }
  layers = std::move(kept);
  if (changed) net.compact();
  return changed;
}

}  // namespace kiln
