// pad_group_widths: a grouped convolution whose groups are w channels wide, w >= 32 and not a
// multiple of 32, gets groups p = w rounded up to 32 wide (when that adds at most 15%), together
// with the convolution that produces its input and the one that reads its output:
//
//   a = conv_A(x; w_A [G w, C, ..], b_A)            groups 1, read only by B
//   b = conv_B(a; w_B [G w, w, kh, kw], b_B)        groups G
//   y = conv_C(b; w_C [K, G w, ..], ...)            groups 1, the only reader of b
// ->
//   a' = conv_A(x; pad_groups(w_A, axis 0), pad_groups(b_A))          [N, G p, ..]
//   b' = conv_B(a'; pad_groups(pad_groups(w_B, axis 0), axis 1, one group), pad_groups(b_B))
//   y  = conv_C(b'; pad_groups(w_C, axis 1), ...)                      unchanged
//
// Each group's p - w new channels have zero weights and zero bias, so they hold act(0) (finite
// for every activation), and every weight that reads them is zero: y is the same sum of the same
// products, the zeros added after each group's own (bitwise the same on the reference backend).
// Why: regnet_x_8gf's 120-wide groups ran through cuDNN's slow grouped path (1.70 ms at FP16
// batch 1 against reduce-overhead's 1.43), while regnet_x_16gf's 128-wide groups took its fast one;
// 6.7% more products in three layers per block buy the fast kernels.
//
// Runs after fuse_conv_epilogue (activations fused: A -> B -> C is then a direct chain) and before
// assign_precision and assign_layouts; CUDA builds with FP16 or BF16 only (the builder decides).
// A and B must carry no residual (it would need the padding too); C may. Convolutions already
// channels last or quantized, and dynamic channel counts, stay as they are.
#include <string>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/weight_transforms.h"
#include "ir/ops/convolution.h"

namespace kiln {
namespace {

constexpr int64_t kGroupAlign = 32;
constexpr int64_t kMaxGrowthPercent = 15;

// A 2-D convolution whose weight (and bias, if any) are constants, not channels last, not
// quantized, with no residual unless `residual_ok`.
bool plain_conv(const Network& net, const Layer& l, bool residual_ok) {
  if (l.op != "convolution" || l.inputs.size() < 2 || channels_last(l)) return false;
  if (l.attrs.get_int("quantized", int64_t{0}) != 0) return false;
  const bool residual = l.attrs.get_int("residual", int64_t{0}) == 1;
  if (residual && !residual_ok) return false;
  const Tensor& w = net.tensor(l.inputs[1]);
  if (w.kind != TensorKind::kConstant || w.dims.size() != 4 || !is_static(w.dims)) return false;
  const size_t bias_inputs = l.inputs.size() - (residual ? 1 : 0);  // x, w, [bias]
  return bias_inputs == 2 || net.tensor(l.inputs[2]).kind == TensorKind::kConstant;
}

struct Chain {
  size_t a = 0, b = 0, c = 0;      // layer indices
  int64_t groups = 0, width = 0, padded = 0;
};

// The chain around grouped convolution `bi`, when this pass pads it.
bool chain_of(const Network& net, const std::vector<int>& producer, const std::vector<int>& readers,
              const std::vector<int>& reader, size_t bi, Chain* ch) {
  const Layer& b = net.layers()[bi];
  if (!plain_conv(net, b, false)) return false;
  const int64_t g = conv_geometry(b, 2).groups;
  const Dims& wb = net.tensor(b.inputs[1]).dims;
  if (g <= 1 || wb[0] % g != 0 || wb[0] / g != wb[1]) return false;  // as many outputs as inputs per group
  const int64_t w = wb[1], p = (w + kGroupAlign - 1) / kGroupAlign * kGroupAlign;
  if (w < kGroupAlign || p == w || (p - w) * 100 > w * kMaxGrowthPercent) return false;
  const TensorId in = b.inputs[0], out = b.outputs[0];
  const Dims& x = net.tensor(in).dims;
  if (x.size() != 4 || x[1] != g * w) return false;
  const int pa = producer[static_cast<size_t>(in)], pc = reader[static_cast<size_t>(out)];
  if (pa < 0 || readers[static_cast<size_t>(in)] != 1 || net.is_output(in)) return false;
  if (pc < 0 || readers[static_cast<size_t>(out)] != 1 || net.is_output(out)) return false;
  const Layer& a = net.layers()[static_cast<size_t>(pa)];
  const Layer& c = net.layers()[static_cast<size_t>(pc)];
  if (!plain_conv(net, a, false) || conv_geometry(a, 2).groups != 1) return false;
  if (!plain_conv(net, c, true) || conv_geometry(c, 2).groups != 1 || c.inputs[0] != out) return false;
  if (net.tensor(c.inputs[1]).dims[1] != g * w) return false;
  *ch = Chain{static_cast<size_t>(pa), bi, static_cast<size_t>(pc), g, w, p};
  return true;
}

// `t` with each of `groups` runs of `from` entries along `axis` followed by to - from zeros.
TensorId padded(Network& net, TensorId t, int64_t axis, int64_t groups, int64_t from, int64_t to,
                const std::string& base) {
  const Attributes attrs =
      Attributes().set("axis", axis).set("groups", groups).set("from", from).set("to", to);
  return add_derived_constant(net, unique_tensor_name(net, base), "pad_groups", attrs, {t});
}

}  // namespace

bool pad_group_widths(Network& net) {
  const std::vector<int> producer = net.producers();
  std::vector<int> readers(net.tensors().size(), 0), reader(net.tensors().size(), -1);
  for (size_t i = 0; i < net.layers().size(); ++i) {
    for (TensorId t : net.layers()[i].inputs) {
      ++readers[static_cast<size_t>(t)];
      reader[static_cast<size_t>(t)] = static_cast<int>(i);
    }
  }
  std::vector<Chain> chains;
  std::vector<bool> taken(net.layers().size(), false);
  for (size_t i = 0; i < net.layers().size(); ++i) {
    Chain ch;
    if (!chain_of(net, producer, readers, reader, i, &ch) || taken[ch.a] || taken[ch.b] || taken[ch.c]) continue;
    taken[ch.a] = taken[ch.b] = taken[ch.c] = true;  // a layer is padded by one chain only
    chains.push_back(ch);
  }
  for (const Chain& ch : chains) {
    const int64_t g = ch.groups, w = ch.width, p = ch.padded;
    auto& layers = net.mutable_layers();
    {  // A: each group's outputs, and their biases
      Layer& a = layers[ch.a];
      a.inputs[1] = padded(net, a.inputs[1], 0, g, w, p, a.name + "/group_padded_weight");
      if (a.inputs.size() == 3) a.inputs[2] = padded(net, a.inputs[2], 0, g, w, p, a.name + "/group_padded_bias");
      net.tensor(a.outputs[0]).dims[1] = g * p;
    }
    {  // B: each group's outputs, then each output's inputs (one group of w)
      Layer& b = layers[ch.b];
      const TensorId rows = padded(net, b.inputs[1], 0, g, w, p, b.name + "/group_padded_rows");
      b.inputs[1] = padded(net, rows, 1, 1, w, p, b.name + "/group_padded_weight");
      if (b.inputs.size() == 3) b.inputs[2] = padded(net, b.inputs[2], 0, g, w, p, b.name + "/group_padded_bias");
      net.tensor(b.outputs[0]).dims[1] = g * p;
    }
    Layer& c = layers[ch.c];  // C: the inputs of every output
    c.inputs[1] = padded(net, c.inputs[1], 1, g, w, p, c.name + "/group_padded_weight");
  }
  if (chains.empty()) return false;
  net.compact();
  net.revalidate();
  return true;
}

}  // namespace kiln
