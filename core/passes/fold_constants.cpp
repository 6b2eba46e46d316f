// fold_constants: a layer whose inputs are all constants is evaluated at build time on the
// reference backend and its outputs become constants (f(c1, c2) -> c). Safe for every op with a
// reference kernel, since the reference backend defines each op's result. Outputs that are
// larger than kMaxFoldBytes stay computed at run time, to keep plans small.
#include <memory>

#include "core/passes/passes.h"
#include "kernels/kernel.h"

namespace kiln {
namespace {
constexpr int64_t kMaxFoldBytes = int64_t{64} << 20;
}

bool fold_constants(Network& net) {
  bool changed = false;
  auto& layers = net.mutable_layers();
  std::vector<Layer> kept;
  for (auto& l : layers) {
    bool all_const = !l.inputs.empty();
    for (TensorId t : l.inputs) all_const &= net.tensor(t).kind == TensorKind::kConstant;
    int64_t out_bytes = 0;
    if (all_const) {  // outputs of all-constant layers have static shapes
      for (TensorId t : l.outputs) out_bytes += volume(net.tensor(t).dims) * dtype_size(net.tensor(t).dtype);
    }
    if (!all_const || out_bytes > kMaxFoldBytes || !has_kernel(l.op, Backend::kReference)) {
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
      buffers.push_back(std::make_shared<std::vector<uint8_t>>(volume(o.dims) * dtype_size(o.dtype)));
      out.push_back({buffers.back()->data(), o.dtype, o.dims});
    }
    create_kernel(l, Backend::kReference)->run(in, out, LaunchContext{});
    for (size_t i = 0; i < l.outputs.size(); ++i) {
      Tensor& o = net.tensor(l.outputs[i]);
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
