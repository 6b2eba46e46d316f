// space_to_depth_stems: a stride-2 2-D convolution over few input channels (an image's 3: the 7x7
// stem of ResNet and its kin; 5x5 and wider kernels) becomes a stride-1 convolution over the input folded 2x2
// into channels. The stem's input channels must be padded for tensor cores (to 8 in FP16, 16 in INT8), so a
// 7x7 stem sums 392 (FP16) or 784 (INT8) products per output of which 147 are real; folded, 3 channels padded
// to 4 become 16 channels and a 4x4 kernel: 256 products, and INT8 needs no further padding.
//
//   y = convolution(x [N, C, H, W], w [K, C, kh, kw], bias; stride 2, pads ph, pw)
//     -> s = space_to_depth(x; pads ph before, H' - H - ph after (rows), pw, W' - W - pw (cols),
//                           channels 4 when C < 4) [N, 4C', Hs, Ws]   (channels in (dy, dx, c) order)
//        y = convolution(s, w' [K, 4C', ceil(kh/2), ceil(kw/2)], bias; stride 1, no padding)
// with Hs = H' / 2 = Ho + ceil(kh/2) - 1 (Ho the convolution's output rows; likewise Ws) and
// w'[o, (dy * 2 + dx) * C' + c, a, b] = w[o, c, 2a + dy, 2b + dx] (the space_to_depth weight
// transform; zero past the kernel or past C). Exact: output (i, j) of the stride-2 convolution
// reads padded rows 2i + r, r < kh, which are fold rows i + r / 2, phase r % 2; rows the original
// padding did not reach (H' can exceed H + 2 ph) meet only zero weights. Where the convolution runs
// channels last (FP16, INT8) assign_layouts has the space_to_depth write channels last: the image is
// read once and the folded input written once, by one kernel.
//
// A per-tensor fake_quantize (zero point 0, read only by the convolution) between x and the
// convolution moves after the fold: zero quantizes to zero and the fold only moves values, so
// quantize_int8_layers still finds the INT8 convolution's input. Before fuse_conv_epilogue and
// assign_layouts: NCHW convolutions without a fused epilogue; H and W static, the batch may be
// dynamic.
#include <set>
#include <string>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/weight_transforms.h"
#include "ir/ops/convolution.h"
#include "ir/ops/quantize.h"

namespace kiln {
namespace {

constexpr int64_t kMaxStemChannels = 4;  // 4 channels fold to 16

struct Stem {
  int64_t c = 0, cp = 0, h = 0, w = 0;  // input channels, padded channels, rows, cols
  int64_t ah = 0, aw = 0;               // the folded kernel: ceil(kh / 2), ceil(kw / 2)
  int64_t ph = 0, pw = 0;               // the convolution's padding
  int64_t hp = 0, wp = 0;               // padded rows and cols H', W' (even)
};

// The stem geometry when `l` is a convolution this pass folds.
bool stem_of(const Network& net, const Layer& l, Stem* s) {
  if (l.op != "convolution" || l.inputs.size() < 2 || l.inputs.size() > 3 || channels_last(l)) return false;
  if (l.attrs.has("activation") || l.attrs.has("residual") || l.attrs.get_int("quantized", int64_t{0}) != 0)
    return false;
  const Tensor& wt = net.tensor(l.inputs[1]);
  const Dims &x = net.tensor(l.inputs[0]).dims, &w = wt.dims;
  if (x.size() != 4 || w.size() != 4 || wt.kind != TensorKind::kConstant || !wt.data) return false;
  if (!is_floating(wt.dtype) || !is_floating(net.tensor(l.inputs[0]).dtype)) return false;
  const ConvGeometry g = conv_geometry(l, 2);
  if (g.groups != 1 || x[1] == kDynamic || x[1] != w[1] || x[1] > kMaxStemChannels) return false;
  for (int d = 0; d < 2; ++d) {
    // 5x5 and wider (ResNet's 7x7): a 3x3 stem's fold would save little against its transpose
    if (g.strides[d] != 2 || g.dilations[d] != 1 || w[2 + d] < 5 || x[2 + d] == kDynamic) return false;
  }
  s->c = x[1];
  s->cp = kMaxStemChannels;
  s->h = x[2];
  s->w = x[3];
  s->ph = g.pads[0];
  s->pw = g.pads[1];
  s->ah = (w[2] + 1) / 2;
  s->aw = (w[3] + 1) / 2;
  const int64_t ho = conv_output_dim(s->h, w[2], 2, s->ph, 1), wo = conv_output_dim(s->w, w[3], 2, s->pw, 1);
  if (ho <= 0 || wo <= 0) return false;
  s->hp = 2 * (ho + s->ah - 1);
  s->wp = 2 * (wo + s->aw - 1);
  return s->hp >= s->h + s->ph && s->wp >= s->w + s->pw;  // else rows past the input would be cut
}

// The per-tensor fake_quantize (zero point 0) producing `t` when only `reader` reads t; else -1.
int movable_fake_quantize(const Network& net, const std::vector<int>& producer,
                          const std::vector<int>& readers, TensorId t) {
  const int p = producer[static_cast<size_t>(t)];
  if (p < 0 || readers[static_cast<size_t>(t)] != 1 || net.is_output(t)) return -1;
  const Layer& f = net.layers()[static_cast<size_t>(p)];
  if (f.op != "fake_quantize" || f.inputs.size() < 2) return -1;
  const Tensor& scale = net.tensor(f.inputs[1]);
  if (scale.kind != TensorKind::kConstant || volume(scale.dims) != 1) return -1;
  if (f.inputs.size() == 3) {
    const Tensor& zp = net.tensor(f.inputs[2]);
    if (zp.kind != TensorKind::kConstant || !zp.data || volume(zp.dims) != 1) return -1;
    for (uint8_t b : *zp.data)
      if (b != 0) return -1;
  }
  return quant_params(f, net.tensor(f.inputs[0]).dims.size(), 1).per_channel ? -1 : p;
}

}  // namespace

bool space_to_depth_stems(Network& net) {
  std::set<std::string> names = names_in_use(net);
  const std::vector<int> producer = net.producers();
  std::vector<int> readers = reader_counts(net);
  const size_t count = net.layers().size();
  std::vector<std::vector<Layer>> replacement(count);
  std::vector<bool> dropped(count, false);
  bool changed = false;
  for (size_t i = 0; i < count; ++i) {
    const Layer l = net.layers()[i];  // a copy: add_layer below may move the layer list
    Stem s;
    if (!stem_of(net, l, &s)) continue;
    const int fq = movable_fake_quantize(net, producer, readers, l.inputs[0]);
    if (fq >= 0 && replacement[static_cast<size_t>(fq)].size()) continue;
    const Layer fake = fq >= 0 ? net.layers()[static_cast<size_t>(fq)] : Layer{};
    const TensorId src = fq >= 0 ? fake.inputs[0] : l.inputs[0];
    const std::string& base = l.name;
    const size_t first = net.layers().size();
    auto add = [&](const std::string& op, std::vector<TensorId> inputs, Attributes attrs,
                   const std::string& suffix) {
      return net.add_layer(op, inputs, std::move(attrs), unique_name(names, base + "/" + suffix)).outputs[0];
    };
    Attributes fold;
    fold.set("pads", std::vector<int64_t>{s.ph, s.hp - s.h - s.ph, s.pw, s.wp - s.w - s.pw});
    fold.set("channels", s.cp);
    TensorId folded = add("space_to_depth", {src}, std::move(fold), "s2d");
    if (fq >= 0) {  // the fake quantization after the fold
      std::vector<TensorId> in = fake.inputs;
      in[0] = folded;
      folded = add("fake_quantize", in, fake.attrs, "s2d_fake_quantize");
    }
    const TensorId weight =
        add_derived_constant(net, unique_tensor_name(net, base + "/s2d_weight"), "space_to_depth",
                             Attributes().set("channels", s.cp), {l.inputs[1]});
    std::vector<TensorId> inputs = {folded, weight};
    if (l.inputs.size() == 3) inputs.push_back(l.inputs[2]);
    Attributes attrs = l.attrs;
    attrs.set("strides", std::vector<int64_t>{1, 1});
    attrs.set("pads", std::vector<int64_t>{0, 0});
    if (!attrs.has("model_taps")) {  // the cost model counts the stem's own products, not the zeros
      const Dims& w = net.tensor(l.inputs[1]).dims;
      attrs.set("model_taps", volume(w) / w[0]);
    }
    Layer& conv = net.add_layer("convolution", inputs, std::move(attrs), unique_name(names, base + "/s2d"));
    conv.outputs[0] = l.outputs[0];  // the convolution's output tensor, for its readers
    auto& layers = net.mutable_layers();
    replacement[i].assign(std::make_move_iterator(layers.begin() + static_cast<std::ptrdiff_t>(first)),
                          std::make_move_iterator(layers.end()));
    layers.resize(first);
    replacement[i].back().name = l.name;  // the convolution keeps its name (layer precisions, reports)
    if (fq >= 0) dropped[static_cast<size_t>(fq)] = true;
    changed = true;
  }
  if (!changed) return false;
  splice_replacements(net, replacement, dropped);
  return true;
}

}  // namespace kiln
