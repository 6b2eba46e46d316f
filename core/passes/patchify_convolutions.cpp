// patchify_convolutions: a 2-D convolution whose stride equals its kernel (no padding, dilation
// or groups, the input's spatial dims multiples of the kernel) cuts the image into disjoint
// patches: it is one GEMM over the patches (ViT's patch embedding, 16x16 stride 16). A 1x1
// convolution of a 1x1 image (squeeze-and-excitation's) is the degenerate case: a GEMM over the
// batch, its transposes move only unit dims (views).
//
//   y = convolution(x [N, C, H, W], w [K, C, kh, kw], bias)
//     -> p = transpose(reshape(x, [N, C, Ho, kh, Wo, kw]), [0, 2, 4, 1, 3, 5])   [N, Ho, Wo, C, kh, kw]
//        g = fully_connected(reshape(p, [N * Ho * Wo, C * kh * kw]), w' [K, C * kh * kw], bias)
//        y = transpose(reshape(g, [N, Ho, Wo, K]), [0, 3, 1, 2])
//
// Exact: output pixel (n, k, i, j) is the dot product of w[k] with the patch x[n, :, i*kh..,
// j*kw..], both in (c, dh, dw) order, which is row (n, i, j) of the patch matrix; w' is w's bytes.
// cuDNN runs such a convolution as a small-channel implicit GEMM (C = 3) after layout changes; the
// GEMM reads the patches once. The transpose after it usually cancels against the model's own
// flatten(2).transpose(1, 2) (collapse_transposes). Before fuse_conv_epilogue and assign_layouts:
// only convolutions without a fused epilogue, in NCHW. The batch may be dynamic.
#include <set>
#include <string>
#include <vector>

#include "core/passes/fused_names.h"
#include "core/passes/passes.h"
#include "core/weight_transforms.h"
#include "ir/ops/convolution.h"

namespace kiln {
namespace {

bool is_patch_convolution(const Network& net, const Layer& l) {
  if (l.op != "convolution" || l.inputs.size() < 2 || l.inputs.size() > 3 || channels_last(l)) return false;
  if (l.attrs.has("activation") || l.attrs.has("residual")) return false;
  const Dims &x = net.tensor(l.inputs[0]).dims, &w = net.tensor(l.inputs[1]).dims;
  if (x.size() != 4 || w.size() != 4 || net.tensor(l.inputs[1]).kind != TensorKind::kConstant) return false;
  if (!net.tensor(l.inputs[1]).data) return false;
  const ConvGeometry g = conv_geometry(l, 2);
  if (g.groups != 1) return false;
  for (int d = 0; d < 2; ++d) {
    const int64_t k = w[2 + d], in = x[2 + d];
    // 1x1 only on a 1x1 image (squeeze-and-excitation): elsewhere cuDNN's pointwise convolution
    // needs no layout change and the GEMM would.
    if ((k <= 1 && !(k == 1 && in == 1)) || g.strides[d] != k || g.pads[d] != 0 || g.dilations[d] != 1) {
      return false;
    }
    if (in == kDynamic || in % k != 0) return false;
  }
  return x[1] == w[1] && x[1] != kDynamic;
}

}  // namespace

bool patchify_convolutions(Network& net) {
  std::set<std::string> names;
  for (const auto& l : net.layers()) names.insert(l.name);
  bool changed = false;
  const size_t count = net.layers().size();
  std::vector<std::vector<Layer>> replacement(count);
  for (size_t i = 0; i < count; ++i) {
    const Layer l = net.layers()[i];  // a copy: add_layer below may move the layer list
    if (!is_patch_convolution(net, l)) continue;
    const Dims x = net.tensor(l.inputs[0]).dims;
    const Tensor w = net.tensor(l.inputs[1]);  // a copy: adding layers may move the tensor list
    const int64_t c = x[1], k = w.dims[0], kh = w.dims[2], kw = w.dims[3];
    const int64_t ho = x[2] / kh, wo = x[3] / kw;
    const std::string& base = l.name;
    const size_t first = net.layers().size();
    auto add = [&](const std::string& op, std::vector<TensorId> inputs, Attributes attrs,
                   const std::string& suffix) {
      return net.add_layer(op, inputs, std::move(attrs), unique_name(names, base + "/" + suffix)).outputs[0];
    };
    const TensorId split =
        add("reshape", {l.inputs[0]}, Attributes().set("shape", Dims{-1, c, ho, kh, wo, kw}), "patches");
    const TensorId patches =
        add("transpose", {split}, Attributes().set("perm", std::vector<int64_t>{0, 2, 4, 1, 3, 5}),
            "patch_order");
    const TensorId rows = add("reshape", {patches}, Attributes().set("shape", Dims{-1, c * kh * kw}), "rows");
    std::string wname = l.name + "/weight_matrix";
    for (int n = 1; net.find_tensor(wname) >= 0; ++n) wname = l.name + "/weight_matrix_" + std::to_string(n);
    const TensorId weight = add_derived_constant(
        net, wname, "reshape", Attributes().set("dims", Dims{k, c * kh * kw}), {l.inputs[1]});
    std::vector<TensorId> fc_inputs = {rows, weight};
    if (l.inputs.size() == 3) fc_inputs.push_back(l.inputs[2]);
    Attributes fc_attrs;
    if (l.attrs.has("allow_tf32")) fc_attrs.set("allow_tf32", l.attrs.get_int("allow_tf32", l.name));
    fc_attrs.set("fused", fused_names(l));  // keeps what the convolution absorbed (batch norm)
    const TensorId gemm = add("fully_connected", fc_inputs, fc_attrs, "gemm");
    const TensorId nhwc = add("reshape", {gemm}, Attributes().set("shape", Dims{-1, ho, wo, k}), "nhwc");
    Layer& back =
        net.add_layer("transpose", {nhwc}, Attributes().set("perm", std::vector<int64_t>{0, 3, 1, 2}),
                      unique_name(names, base + "/to_nchw"));
    back.outputs[0] = l.outputs[0];  // the convolution's output tensor, for its readers
    auto& layers = net.mutable_layers();
    replacement[i].assign(std::make_move_iterator(layers.begin() + static_cast<std::ptrdiff_t>(first)),
                          std::make_move_iterator(layers.end()));
    layers.resize(first);
    changed = true;
  }
  if (!changed) return false;
  splice_replacements(net, replacement, std::vector<bool>(count, false));
  return true;
}

}  // namespace kiln
