// rotate_half_to_gather: rotary embeddings' rotate_half in one kernel.
//
//   y = concat(neg(slice(x, [h, d))), slice(x, [0, h)); axis -1)     (d = x's last dim, h = d / 2)
//     -> y = gather(x, [h, .., d - 1, 0, .., h - 1]; axis -1) * [-1 x h, +1 x h]
//
// transformers' rotate_half (Llama, Mistral, Qwen2, Gemma, GPT-NeoX, Phi) is two slices, a
// negation and a concat: four kernels, each a pass over q or k. The gather reads x once in the
// rotated order; the sign is a constant multiply, which fuse_pointwise then joins to the rotary
// embedding's own q * cos + rotate_half(q) * sin. Exact: negation and a product with -1 are the
// same operation on floats. Static last dim, float32/float16/bfloat16; the slices and the
// negation are left to eliminate_dead_layers (they stay where something else reads them).
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/passes/pattern_match.h"

namespace kiln {
namespace {

// The range [start, end) that slice layer `l` takes of the last dim (size d) of its input with
// step 1, or {-1, -1} when it slices anything else.
std::pair<int64_t, int64_t> last_dim_range(const Network& net, const Layer& l, int64_t d) {
  if (l.op != "slice" || l.inputs.size() != 1) return {-1, -1};
  const int64_t rank = static_cast<int64_t>(net.tensor(l.inputs[0]).dims.size());
  const auto axes = l.attrs.get_ints("axes", l.name);
  if (axes.size() != 1 || (axes[0] != -1 && axes[0] != rank - 1)) return {-1, -1};
  if (l.attrs.has("steps") && l.attrs.get_ints("steps", l.name) != std::vector<int64_t>{1}) return {-1, -1};
  auto clamp = [&](int64_t v) {
    if (v < 0) v += d;
    return v < 0 ? int64_t{0} : v > d ? d : v;
  };
  return {clamp(l.attrs.get_ints("starts", l.name)[0]), clamp(l.attrs.get_ints("ends", l.name)[0])};
}

// `count` copies of +-1 in `dtype`'s bytes, the first `negative` of them -1.
std::vector<uint8_t> signs(DataType dtype, int64_t count, int64_t negative) {
  const size_t size = dtype_size(dtype);
  std::vector<uint8_t> out(static_cast<size_t>(count) * size);
  for (int64_t i = 0; i < count; ++i) {
    const bool neg = i < negative;
    uint8_t* at = out.data() + static_cast<size_t>(i) * size;
    if (dtype == DataType::kFloat32) {
      const float v = neg ? -1.0f : 1.0f;
      std::memcpy(at, &v, 4);
    } else {
      const uint16_t v = dtype == DataType::kFloat16 ? (neg ? 0xbc00 : 0x3c00) : (neg ? 0xbf80 : 0x3f80);
      std::memcpy(at, &v, 2);
    }
  }
  return out;
}

}  // namespace

bool rotate_half_to_gather(Network& net) {
  const PatternMatcher match(net);                // of the layers as they are: the tensors looked up are old
  std::map<int, std::vector<Layer>> replacement;  // concat index -> gather, mul
  std::set<std::string> names;
  for (const auto& l : net.layers()) names.insert(l.name);
  const size_t count = net.layers().size();
  for (size_t i = 0; i < count; ++i) {
    const Layer c = net.layers()[i];  // a copy: adding constants below may move the layer list
    if (c.op != "concat" || c.inputs.size() != 2 || c.outputs.size() != 1) continue;
    const Dims dims = net.tensor(c.outputs[0]).dims;
    const DataType dtype = net.tensor(c.outputs[0]).dtype;
    const int64_t rank = static_cast<int64_t>(dims.size()), axis = c.attrs.get_int("axis", int64_t{0});
    if (rank == 0 || (axis != -1 && axis != rank - 1)) continue;
    if (dtype != DataType::kFloat32 && dtype != DataType::kFloat16 && dtype != DataType::kBFloat16) continue;
    const int64_t d = dims.back();
    if (d == kDynamic || d < 2 || d % 2 != 0) continue;
    const Layer* neg = match.producer(c.inputs[0]);
    if (!neg || neg->op != "unary" || neg->attrs.get_string("op", neg->name) != "neg") continue;
    const Layer* upper = match.producer(neg->inputs[0]);
    const Layer* lower = match.producer(c.inputs[1]);
    if (!upper || !lower || upper->inputs.empty() || lower->inputs.empty() ||
        upper->inputs[0] != lower->inputs[0])
      continue;
    const TensorId x = upper->inputs[0];
    if (net.tensor(x).dims != dims || net.tensor(x).dtype != dtype) continue;
    const std::string absorbed = fused_names(c) + "," + neg->name;  // before add_layer moves layers
    const int64_t h = d / 2;
    if (last_dim_range(net, *upper, d) != std::pair<int64_t, int64_t>{h, d} ||
        last_dim_range(net, *lower, d) != std::pair<int64_t, int64_t>{0, h})
      continue;
    std::vector<int64_t> order(static_cast<size_t>(d));
    for (int64_t k = 0; k < d; ++k) order[static_cast<size_t>(k)] = (k + h) % d;
    const std::string base = unique_name(names, c.name + "/rotate");
    const TensorId index = net.add_constant(unique_tensor_name(net, base + ".index"), DataType::kInt64, {d},
                                            order.data(), order.size() * sizeof(int64_t));
    const std::vector<uint8_t> sign_bytes = signs(dtype, d, h);
    const TensorId sign = net.add_constant(unique_tensor_name(net, base + ".sign"), dtype, {d},
                                           sign_bytes.data(), sign_bytes.size());
    Layer gather =
        net.add_layer("gather", {x, index}, Attributes().set("axis", rank - 1).set("wrap", int64_t{0}), base);
    net.mutable_layers().pop_back();  // placed where the concat was, below
    Layer mul;
    mul.name = unique_name(names, c.name + "/sign");
    mul.op = "elementwise";
    mul.attrs.set("op", std::string("mul")).set("fused", absorbed);
    mul.inputs = {gather.outputs[0], sign};
    mul.outputs = c.outputs;  // the concat's readers read the same tensor
    replacement[static_cast<int>(i)] = {std::move(gather), std::move(mul)};
  }
  if (replacement.empty()) return false;
  std::vector<Layer> kept;
  auto& all = net.mutable_layers();
  for (size_t i = 0; i < all.size(); ++i) {
    auto it = replacement.find(static_cast<int>(i));
    if (it == replacement.end()) {
      kept.push_back(std::move(all[i]));
    } else {
      for (auto& l : it->second) kept.push_back(std::move(l));
    }
  }
  all = std::move(kept);
  net.compact();
  return true;
}

}  // namespace kiln
