// ONNX neural-network operators: GEMMs, convolutions, pooling, normalizations, softmax.
#include <algorithm>
#include <cmath>
#include <limits>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

void import_matmul(NodeContext& ctx) {
  if (!is_floating(ctx.desc(0).dtype)) ctx.fail("MatMul of integer tensors is not supported");
  ctx.set_output(0, ctx.add1("matmul", {ctx.input(0), ctx.input(1)}));
}

void import_gemm(NodeContext& ctx) {
  const double alpha = ctx.attr_float("alpha", 1.0), beta = ctx.attr_float("beta", 1.0);
  const bool ta = ctx.attr_int("transA", 0) != 0, tb = ctx.attr_int("transB", 0) != 0;
  const DataType dt = ctx.desc(0).dtype;
  if (!is_floating(dt)) ctx.fail("Gemm of integer tensors is not supported");
  TensorId y = ctx.add1("matmul", {ctx.input(0), ctx.input(1)},
                        Attributes().set("transpose_a", int64_t{ta}).set("transpose_b", int64_t{tb}));
  if (alpha != 1.0) y = ctx.elementwise("mul", y, ctx.scalar(dt, alpha));
  if (ctx.has_input(2) && beta != 0.0) {
    TensorId c = ctx.input(2);
    if (beta != 1.0) c = ctx.elementwise("mul", c, ctx.scalar(dt, beta));
    y = ctx.elementwise("add", y, c);
  }
  ctx.set_output(0, y);
}

// The spatial padding of a convolution or pooling node: ONNX pads [begin..., end...] or auto_pad.
struct Padding {
  std::vector<int64_t> begin, end;
  bool symmetric() const { return begin == end; }
};

Padding node_padding(NodeContext& ctx, const Dims& x, const std::vector<int64_t>& kernel,
                     const std::vector<int64_t>& strides, const std::vector<int64_t>& dilations) {
  const size_t n = kernel.size();
  if (strides.size() != n || dilations.size() != n || x.size() != n + 2) {
    ctx.fail("kernel_shape, strides and dilations need one value per spatial dim");
  }
  Padding p{std::vector<int64_t>(n, 0), std::vector<int64_t>(n, 0)};
  const std::string auto_pad = ctx.attr_string("auto_pad", std::string("NOTSET"));
  if (auto_pad == "NOTSET") {
    std::vector<int64_t> pads = ctx.attr_ints("pads", std::vector<int64_t>(2 * n, 0));
    if (pads.size() != 2 * n) ctx.fail("pads needs " + std::to_string(2 * n) + " values");
    for (size_t i = 0; i < n; ++i) {
      p.begin[i] = pads[i];
      p.end[i] = pads[n + i];
      if (pads[i] < 0 || pads[n + i] < 0) ctx.fail("negative pads are not supported");
    }
  } else if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
    for (size_t i = 0; i < n; ++i) {
      const int64_t in = x[2 + i];
      if (in < 0) ctx.fail("auto_pad " + auto_pad + " needs static spatial dims");
      const int64_t out = (in + strides[i] - 1) / strides[i];
      const int64_t total =
          std::max<int64_t>(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in);
      const int64_t small = total / 2;
      p.begin[i] = auto_pad == "SAME_UPPER" ? small : total - small;
      p.end[i] = total - p.begin[i];
    }
    ctx.attr_ints("pads", std::vector<int64_t>{});
  } else if (auto_pad != "VALID") {
    ctx.fail("auto_pad " + auto_pad + " is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID");
  }
  return p;
}

// An explicit pad layer for padding the engine op cannot express (asymmetric).
TensorId pad_explicitly(NodeContext& ctx, TensorId x, const Padding& p, double value) {
  std::vector<int64_t> pads;  // torch order: last dim first
  for (size_t i = p.begin.size(); i-- > 0;) {
    pads.push_back(p.begin[i]);
    pads.push_back(p.end[i]);
  }
  return ctx.add1("pad", {x},
                  Attributes().set("pads", pads).set("mode", std::string("constant")).set("value", value));
}

std::vector<int64_t> ones(size_t n) { return std::vector<int64_t>(n, 1); }

void import_conv(NodeContext& ctx, bool transposed) {
  const TensorDesc x = ctx.desc(0), w = ctx.desc(1);
  if (x.dims.size() < 3 || x.dims.size() > 5) ctx.fail("input must be 3-D to 5-D (1 to 3 spatial dims)");
  const size_t n = x.dims.size() - 2;
  if (w.dims.size() != x.dims.size()) ctx.fail("the weight's rank must equal the input's");
  const std::vector<int64_t> kernel =
      ctx.attr_ints("kernel_shape", std::vector<int64_t>(w.dims.begin() + 2, w.dims.end()));
  if (kernel.size() != n) ctx.fail("kernel_shape needs one value per spatial dim");
  const std::vector<int64_t> strides = ctx.attr_ints("strides", ones(n));
  const std::vector<int64_t> dilations = ctx.attr_ints("dilations", ones(n));
  const int64_t group = ctx.attr_int("group", 1);
  Attributes attrs;
  attrs.set("strides", strides).set("dilations", dilations).set("groups", group);
  TensorId in = ctx.input(0);
  std::vector<TensorId> inputs;
  if (!transposed) {
    Padding p = node_padding(ctx, x.dims, kernel, strides, dilations);
    if (!p.symmetric()) {
      in = pad_explicitly(ctx, in, p, 0.0);
      p.begin.assign(n, 0);
    }
    attrs.set("pads", p.begin);
  } else {
    std::vector<int64_t> pads = ctx.attr_ints("pads", std::vector<int64_t>(2 * n, 0));
    std::vector<int64_t> out_pad = ctx.attr_ints("output_padding", std::vector<int64_t>(n, 0));
    if (out_pad.size() != n || strides.size() != n || dilations.size() != n) {
      ctx.fail("output_padding, strides and dilations need one value per spatial dim");
    }
    const std::string auto_pad = ctx.attr_string("auto_pad", std::string("NOTSET"));
    if (ctx.has_attr("output_shape")) {
      // Total padding from the requested output size (ONNX's formula), split as auto_pad says.
      std::vector<int64_t> out_shape = ctx.attr_ints("output_shape");
      if (out_shape.size() != n) ctx.fail("output_shape needs one value per spatial dim");
      for (size_t i = 0; i < n; ++i) {
        if (x.dims[2 + i] < 0) ctx.fail("output_shape needs static spatial dims");
        const int64_t total = strides[i] * (x.dims[2 + i] - 1) + out_pad[i] +
                              ((kernel[i] - 1) * dilations[i] + 1) - out_shape[i];
        if (total < 0) {
          out_pad[i] -= total;  // a larger output: padding at the end
          pads[i] = pads[n + i] = 0;
        } else {
          pads[i] = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
          pads[n + i] = total - pads[i];
        }
      }
    } else if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      for (size_t i = 0; i < n; ++i) {
        const int64_t total =
            std::max<int64_t>(0, (kernel[i] - 1) * dilations[i] + 1 + out_pad[i] - strides[i]);
        pads[i] = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
        pads[n + i] = total - pads[i];
      }
    } else if (auto_pad != "NOTSET" && auto_pad != "VALID") {
      ctx.fail("auto_pad " + auto_pad + " is not supported");
    }
    if (pads.size() != 2 * n) ctx.fail("pads needs " + std::to_string(2 * n) + " values");
    // Asymmetric: pad by the smaller side, then crop the extra from the output's other side.
    std::vector<int64_t> sym(n), crop_begin(n, 0), crop_end(n, 0);
    bool crop = false;
    for (size_t i = 0; i < n; ++i) {
      sym[i] = std::min(pads[i], pads[n + i]);
      crop_begin[i] = pads[i] - sym[i];
      crop_end[i] = pads[n + i] - sym[i];
      crop |= crop_begin[i] != 0 || crop_end[i] != 0;
    }
    attrs.set("pads", sym).set("output_padding", out_pad);
    inputs = {in, ctx.input(1)};
    if (ctx.has_input(2)) inputs.push_back(ctx.input(2));
    TensorId y = ctx.add1("deconvolution", inputs, attrs);
    if (crop) {
      std::vector<int64_t> axes, starts, ends;
      for (size_t i = 0; i < n; ++i) {
        axes.push_back(static_cast<int64_t>(2 + i));
        starts.push_back(crop_begin[i]);
        ends.push_back(-crop_end[i] == 0 ? std::numeric_limits<int64_t>::max() : -crop_end[i]);
      }
      y = ctx.add1("slice", {y}, Attributes().set("axes", axes).set("starts", starts).set("ends", ends));
    }
    ctx.set_output(0, y);
    return;
  }
  inputs = {in, ctx.input(1)};
  if (ctx.has_input(2)) inputs.push_back(ctx.input(2));
  ctx.set_output(0, ctx.add1("convolution", inputs, attrs));
}

}  // namespace

TensorId convolution(NodeContext& ctx, TensorId x, TensorId w) {
  const TensorDesc xd = ctx.net().desc(x), wd = ctx.net().desc(w);
  if (xd.dims.size() < 3 || xd.dims.size() > 5 || wd.dims.size() != xd.dims.size())
    ctx.fail("input and weight must be 3-D to 5-D, of one rank");
  const size_t n = xd.dims.size() - 2;
  const std::vector<int64_t> kernel =
      ctx.attr_ints("kernel_shape", std::vector<int64_t>(wd.dims.begin() + 2, wd.dims.end()));
  if (kernel.size() != n) ctx.fail("kernel_shape needs one value per spatial dim");
  const std::vector<int64_t> strides = ctx.attr_ints("strides", ones(n));
  const std::vector<int64_t> dilations = ctx.attr_ints("dilations", ones(n));
  Attributes attrs;
  attrs.set("strides", strides).set("dilations", dilations).set("groups", ctx.attr_int("group", 1));
  Padding p = node_padding(ctx, xd.dims, kernel, strides, dilations);
  if (!p.symmetric()) {
    x = pad_explicitly(ctx, x, p, 0.0);
    p.begin.assign(n, 0);
  }
  attrs.set("pads", p.begin);
  return ctx.add1("convolution", {x, w}, attrs);
}

namespace {

void import_pool(NodeContext& ctx, const std::string& type) {
  const TensorDesc x = ctx.desc(0);
  if (x.dims.size() < 3 || x.dims.size() > 5) ctx.fail("input must be 3-D to 5-D (1 to 3 spatial dims)");
  if (type == "max" && ctx.wants_output(1)) ctx.fail("the Indices output of MaxPool is not supported");
  const size_t n = x.dims.size() - 2;
  const std::vector<int64_t> kernel = ctx.attr_ints("kernel_shape");
  const std::vector<int64_t> strides = ctx.attr_ints("strides", ones(n));
  const std::vector<int64_t> dilations = ctx.attr_ints("dilations", ones(n));
  const int64_t ceil_mode = ctx.attr_int("ceil_mode", 0);
  if (kernel.size() != n) ctx.fail("kernel_shape needs one value per spatial dim");
  Attributes attrs;
  attrs.set("type", type).set("kernel", kernel).set("strides", strides).set("ceil_mode", ceil_mode);
  if (type == "max") {
    ctx.attr_int("storage_order", 0);  // only the Indices output depends on it
    attrs.set("dilations", dilations);
  } else {
    if (dilations != ones(n)) ctx.fail("AveragePool with dilations is not supported");
    attrs.set("count_include_pad", ctx.attr_int("count_include_pad", 0));
  }
  Padding p = node_padding(ctx, x.dims, kernel, strides, dilations);
  TensorId in = ctx.input(0);
  // Integer max pooling of 8- and 16-bit values (uint8 / int16 / uint16 held in int32, int8):
  // in float32, where every such value is exact, and back.
  const int32_t held = ctx.held_type(in);
  const bool small_ints = held == 2 || held == 4 || held == 5 || x.dtype == DataType::kInt8;
  if (is_integral(x.dtype) && (type != "max" || !small_ints)) {
    ctx.fail("integer pooling is max pooling of 8- or 16-bit values only");
  }
  if (small_ints) in = ctx.cast(in, DataType::kFloat32);
  bool fits = p.symmetric();
  for (size_t i = 0; i < n && fits; ++i) fits = p.begin[i] <= kernel[i] / 2;
  if (!fits) {
    if (type == "avg" && attrs.get_int("count_include_pad", int64_t{0}) == 0) {
      ctx.fail("AveragePool with asymmetric padding and count_include_pad = 0 is not supported");
    }
    const double fill = type == "max" ? -std::numeric_limits<double>::infinity() : 0.0;
    in = pad_explicitly(ctx, in, p, fill);
    p.begin.assign(n, 0);
  }
  attrs.set("pads", p.begin);
  TensorId y = ctx.add1("pooling", {in}, attrs);
  if (small_ints) {
    y = ctx.cast(y, x.dtype);
    if (held) ctx.set_held_type(y, held);
  }
  ctx.set_output(0, y);
}

// LpPool: (sum over the window of |x|^p)^(1/p), as an average pool of |x|^p (padding counted)
// times the window size.
void import_lp_pool(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  if (x.dims.size() < 3 || x.dims.size() > 5) ctx.fail("input must be 3-D to 5-D (1 to 3 spatial dims)");
  const size_t n = x.dims.size() - 2;
  const int64_t p = ctx.attr_int("p", 2);
  const std::vector<int64_t> kernel = ctx.attr_ints("kernel_shape");
  const std::vector<int64_t> strides = ctx.attr_ints("strides", ones(n));
  const std::vector<int64_t> dilations = ctx.attr_ints("dilations", ones(n));
  const int64_t ceil_mode = ctx.attr_int("ceil_mode", 0);
  if (kernel.size() != n || dilations != ones(n))
    ctx.fail("kernel_shape needs one value per spatial dim, dilations 1");
  if (p < 1) ctx.fail("p must be >= 1");
  const DataType dt = x.dtype;
  TensorId a = ctx.unary("abs", ctx.input(0));
  TensorId ap = p == 1 ? a : ctx.elementwise("pow", a, ctx.scalar(dt, static_cast<double>(p)));
  Padding pad = node_padding(ctx, x.dims, kernel, strides, dilations);
  bool fits = pad.symmetric();
  for (size_t i = 0; i < n && fits; ++i) fits = pad.begin[i] <= kernel[i] / 2;
  if (!fits) {
    ap = pad_explicitly(ctx, ap, pad, 0.0);
    pad.begin.assign(n, 0);
  }
  int64_t window = 1;
  for (int64_t k : kernel) window *= k;
  TensorId avg = ctx.add1("pooling", {ap},
                          Attributes()
                              .set("type", std::string("avg"))
                              .set("kernel", kernel)
                              .set("strides", strides)
                              .set("pads", pad.begin)
                              .set("ceil_mode", ceil_mode)
                              .set("count_include_pad", int64_t{1}));
  TensorId sum = ctx.elementwise("mul", avg, ctx.scalar(dt, static_cast<double>(window)));
  ctx.set_output(0, p == 1 ? sum : ctx.elementwise("pow", sum, ctx.scalar(dt, 1.0 / static_cast<double>(p))));
}

void import_global_pool(NodeContext& ctx, const std::string& op) {
  const int64_t rank = static_cast<int64_t>(ctx.desc(0).dims.size());
  std::vector<int64_t> axes;
  for (int64_t a = 2; a < rank; ++a) axes.push_back(a);
  ctx.set_output(0, ctx.add1("reduce", {ctx.input(0)},
                             Attributes().set("op", op).set("axes", axes).set("keepdim", int64_t{1})));
}

// BatchNormalization in training mode: the batch's statistics (mean and population variance over
// every axis but the channels) normalize x, and the running statistics come out updated,
// running * momentum + batch * (1 - momentum), as ONNX's reference computes them.
void import_batch_norm_training(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  if (rank < 2) ctx.fail("needs an input of rank >= 2");
  std::vector<int64_t> axes = {0};
  for (int64_t a = 2; a < rank; ++a) axes.push_back(a);
  auto stat = [&](const char* op, bool keep) {
    Attributes a = Attributes().set("op", std::string(op)).set("axes", axes).set("keepdim", int64_t{keep});
    if (std::string(op) == "var") a.set("correction", int64_t{0});
    return ctx.add1("reduce", {ctx.input(0)}, a);
  };
  const DataType dt = x.dtype;
  const double momentum = ctx.attr_float("momentum", 0.9), eps = ctx.attr_float("epsilon", 1e-5);
  TensorId mean = stat("mean", false), var = stat("var", false);
  ctx.set_output(0, ctx.add1("batch_norm", {ctx.input(0), ctx.input(1), ctx.input(2), mean, var},
                             Attributes().set("eps", eps)));
  auto running = [&](int input, TensorId batch) {
    return ctx.elementwise("add", ctx.elementwise("mul", ctx.input(input), ctx.scalar(dt, momentum)),
                           ctx.elementwise("mul", batch, ctx.scalar(dt, 1.0 - momentum)));
  };
  if (ctx.wants_output(1)) ctx.set_output(1, running(3, mean));
  if (ctx.wants_output(2)) ctx.set_output(2, running(4, var));
}

// MaxUnpool: x's values scattered to their (flat, whole-tensor) MaxPool indices in a zero tensor
// of the output shape (given, or the inverse of the pooling's), static dims.
void import_max_unpool(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  if (x.dims.size() < 3 || !is_static(x.dims)) ctx.fail("needs a static input of rank >= 3");
  const size_t n = x.dims.size() - 2;
  const std::vector<int64_t> kernel = ctx.attr_ints("kernel_shape");
  const std::vector<int64_t> strides = ctx.attr_ints("strides", ones(n));
  const std::vector<int64_t> pads = ctx.attr_ints("pads", std::vector<int64_t>(2 * n, 0));
  if (kernel.size() != n || strides.size() != n || pads.size() != 2 * n)
    ctx.fail("kernel_shape, strides and pads need one value per spatial dim (pads two)");
  Dims out(x.dims.begin(), x.dims.begin() + 2);
  for (size_t i = 0; i < n; ++i)
    out.push_back((x.dims[2 + i] - 1) * strides[i] - pads[i] - pads[n + i] + kernel[i]);
  auto flat = [&](TensorId t) {
    return ctx.add1("reshape", {t}, Attributes().set("shape", std::vector<int64_t>{-1}));
  };
  TensorId index = flat(ctx.cast(ctx.input(1), DataType::kInt64));
  if (ctx.has_input(2)) {  // the indices address the pooling's input shape: re-flattened for this one
    auto shape = ctx.int_values(2);
    if (!shape || shape->size() != out.size())
      ctx.fail("output_shape must be known while parsing, one value per dim");
    auto k = [&](int64_t v) { return ctx.scalar(DataType::kInt64, static_cast<double>(v)); };
    TensorId rem = index, moved = k(0);
    int64_t stride = 1;
    for (size_t d = out.size(); d-- > 0;) {
      TensorId q = ctx.elementwise("floor_div", rem, k(out[d]));
      TensorId coord = ctx.elementwise("sub", rem, ctx.elementwise("mul", q, k(out[d])));
      moved = ctx.elementwise("add", moved, ctx.elementwise("mul", coord, k(stride)));
      stride *= (*shape)[d];
      rem = q;
    }
    index = moved;
    out = *shape;
  }
  const int64_t total = volume(out);
  TensorId zeros = ctx.add1("expand", {ctx.scalar(x.dtype, 0.0, 1)},
                            Attributes().set("shape", std::vector<int64_t>{total}));
  TensorId y =
      ctx.add1("scatter_elements", {zeros, index, flat(ctx.input(0))}, Attributes().set("axis", int64_t{0}));
  ctx.set_output(0, ctx.add1("reshape", {y}, Attributes().set("shape", std::vector<int64_t>(out))));
}

// Col2Im: input [N, C * prod(block), L] summed back into images [N, C, image...]: a grouped
// deconvolution (groups = C) whose weight puts block position j of channel c at its offset (one-hot
// kernels), with no padding, padded at the end to the padded image size, then cropped by pads.
void import_col2im(NodeContext& ctx) {
  const std::vector<int64_t> image = [&] {
    auto v = ctx.int_values(1);
    if (!v) ctx.fail("image_shape must be known while parsing");
    return *v;
  }();
  const std::vector<int64_t> block = [&] {
    auto v = ctx.int_values(2);
    if (!v) ctx.fail("block_shape must be known while parsing");
    return *v;
  }();
  const size_t n = image.size();
  const TensorDesc x = ctx.desc(0);
  if (n < 1 || n > 3 || block.size() != n || x.dims.size() != 3 || !is_static(x.dims))
    ctx.fail("needs a static 3-D input and 1 to 3 image dims");
  const std::vector<int64_t> strides = ctx.attr_ints("strides", ones(n)),
                             dilations = ctx.attr_ints("dilations", ones(n));
  const std::vector<int64_t> pads = ctx.attr_ints("pads", std::vector<int64_t>(2 * n, 0));
  if (strides.size() != n || dilations.size() != n || pads.size() != 2 * n)
    ctx.fail("strides, dilations and pads need one value per image dim (pads two)");
  int64_t kprod = 1;
  for (int64_t b : block) kprod *= b;
  if (kprod < 1 || x.dims[1] % kprod != 0)
    ctx.fail("the input's second dim must be a multiple of prod(block_shape)");
  const int64_t c = x.dims[1] / kprod;
  Dims blocks_shape = {x.dims[0], x.dims[1]}, weight_shape = {x.dims[1], 1};
  int64_t l = 1;
  for (size_t i = 0; i < n; ++i) {
    const int64_t full = image[i] + pads[i] + pads[n + i];
    const int64_t count = (full - (dilations[i] * (block[i] - 1) + 1)) / strides[i] + 1;
    if (count < 1) ctx.fail("the block does not fit the padded image");
    blocks_shape.push_back(count);
    weight_shape.push_back(block[i]);
    l *= count;
  }
  if (l != x.dims[2]) ctx.fail("the input's last dim does not match the number of blocks");
  check_host_elements(volume(weight_shape), "Col2Im's kernels", ctx);
  // one-hot kernels: output channel c's input channel c * kprod + j puts its value at offset j
  std::vector<float> w(static_cast<size_t>(volume(weight_shape)), 0.f);
  for (int64_t ch = 0; ch < c * kprod; ++ch) w[static_cast<size_t>(ch * kprod + ch % kprod)] = 1.f;
  const DataType dt = x.dtype;
  TensorId weight = ctx.net().add_constant(ctx.name() + "/col2im_kernels", DataType::kFloat32, weight_shape,
                                           w.data(), w.size() * sizeof(float));
  weight = ctx.cast(weight, dt);
  TensorId blocks =
      ctx.add1("reshape", {ctx.input(0)}, Attributes().set("shape", std::vector<int64_t>(blocks_shape)));
  TensorId y = ctx.add1("deconvolution", {blocks, weight},
                        Attributes()
                            .set("strides", strides)
                            .set("dilations", dilations)
                            .set("groups", c)
                            .set("pads", std::vector<int64_t>(n, 0)));
  const Dims yd = ctx.net().desc(y).dims;
  std::vector<int64_t> end_pad;  // pad at the end up to the padded image (last dim first)
  std::vector<int64_t> axes, starts, ends;
  bool need_pad = false;
  for (size_t i = n; i-- > 0;) {
    const int64_t full = image[i] + pads[i] + pads[n + i], have = yd[2 + i];
    end_pad.push_back(0);
    end_pad.push_back(full - have);
    need_pad |= full != have;
  }
  if (need_pad) y = ctx.add1("pad", {y}, Attributes().set("pads", end_pad).set("value", 0.0));
  for (size_t i = 0; i < n; ++i) {
    axes.push_back(static_cast<int64_t>(2 + i));
    starts.push_back(pads[i]);
    ends.push_back(pads[i] + image[i]);
  }
  ctx.set_output(
      0, ctx.add1("slice", {y}, Attributes().set("axes", axes).set("starts", starts).set("ends", ends)));
}

void import_batch_norm(NodeContext& ctx) {
  if (ctx.attr_int("training_mode", 0) != 0) {
    import_batch_norm_training(ctx);
    return;
  }
  if (ctx.wants_output(1) || ctx.wants_output(2)) ctx.fail("running mean/var outputs are not supported");
  ctx.attr_float("momentum", 0.9);
  ctx.set_output(
      0, ctx.add1("batch_norm", {ctx.input(0), ctx.input(1), ctx.input(2), ctx.input(3), ctx.input(4)},
                  Attributes().set("eps", ctx.attr_float("epsilon", 1e-5))));
}

void import_instance_norm(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  if (x.dims.size() < 3 || x.dims[1] < 0) ctx.fail("needs a static channel dim and rank >= 3");
  ctx.set_output(
      0, ctx.add1("group_norm", {ctx.input(0), ctx.input(1), ctx.input(2)},
                  Attributes().set("num_groups", x.dims[1]).set("eps", ctx.attr_float("epsilon", 1e-5))));
}

double attrs_eps(NodeContext& ctx, double fallback) { return ctx.attr_float("epsilon", fallback); }

// LayerNormalization / RMSNormalization over dims [axis, rank): the engine op when scale (and
// bias) have exactly those dims, else the op without parameters and a broadcast multiply/add.
void import_norm_over_axis(NodeContext& ctx, const std::string& op, double default_eps) {
  const TensorDesc x = ctx.desc(0);
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  const int64_t axis = normalize_axis(ctx.attr_int("axis", -1), rank, ctx);
  ctx.attr_int("stash_type", 1);
  const Dims normalized(x.dims.begin() + axis, x.dims.end());
  if (ctx.wants_output(1) || ctx.wants_output(2)) {
    // LayerNormalization's Mean and InvStdDev (float32 statistics, kept dims).
    if (op != "layer_norm") ctx.fail("the InvStdRMS output is not supported");
    std::vector<int64_t> axes;
    for (int64_t a = axis; a < rank; ++a) axes.push_back(a);
    TensorId xf = ctx.cast(ctx.input(0), DataType::kFloat32);
    Attributes stats;
    stats.set("axes", axes).set("keepdim", int64_t{1});
    TensorId mean = ctx.add1("reduce", {xf}, Attributes(stats).set("op", std::string("mean")));
    TensorId var = ctx.add1("reduce", {xf},
                            Attributes(stats).set("op", std::string("var")).set("correction", int64_t{0}));
    TensorId eps = ctx.scalar(DataType::kFloat32, attrs_eps(ctx, default_eps));
    TensorId inv =
        ctx.add1("unary", {ctx.elementwise("add", var, eps)}, Attributes().set("op", std::string("rsqrt")));
    ctx.set_output(1, mean);
    ctx.set_output(2, inv);
  }
  Attributes attrs;
  attrs.set("normalized_ndim", rank - axis).set("eps", ctx.attr_float("epsilon", default_eps));
  const bool exact = ctx.desc(1).dims == normalized &&
                     (!ctx.has_input(2) || ctx.desc(2).dims == normalized) && ctx.desc(1).dtype == x.dtype;
  if (exact) {
    std::vector<TensorId> in = {ctx.input(0), ctx.input(1)};
    if (ctx.has_input(2)) in.push_back(ctx.input(2));
    ctx.set_output(0, ctx.add1(op, in, attrs));
    return;
  }
  TensorId y = ctx.add1(op, {ctx.input(0)}, attrs);
  y = ctx.elementwise("mul", y, ctx.input(1));
  if (ctx.has_input(2)) y = ctx.elementwise("add", y, ctx.input(2));
  ctx.set_output(0, y);
}

void import_group_norm(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const int64_t groups = ctx.attr_int("num_groups");
  ctx.attr_int("stash_type", 1);
  if (x.dims.size() < 3 || x.dims[1] < 0) ctx.fail("needs a static channel dim and rank >= 3");
  const int64_t c = x.dims[1];
  if (groups <= 0 || c % groups != 0) ctx.fail("num_groups must divide the channels");
  TensorId scale = ctx.input(1), bias = ctx.input(2);
  if (ctx.desc(1).dims == Dims{groups} && groups != c) {
    // Opset 18's per-group scale and bias: each value repeated over its group's channels.
    auto per_group = [&](TensorId t) {
      TensorId u = ctx.add1("unsqueeze", {t}, Attributes().set("axes", std::vector<int64_t>{1}));
      u = ctx.add1("expand", {u}, Attributes().set("shape", std::vector<int64_t>{groups, c / groups}));
      return ctx.add1("reshape", {u}, Attributes().set("shape", std::vector<int64_t>{c}));
    };
    scale = per_group(scale);
    bias = per_group(bias);
  }
  ctx.set_output(
      0, ctx.add1("group_norm", {ctx.input(0), scale, bias},
                  Attributes().set("num_groups", groups).set("eps", ctx.attr_float("epsilon", 1e-5))));
}

void import_softmax(NodeContext& ctx, bool log) {
  ctx.set_output(0, ctx.add1("softmax", {ctx.input(0)},
                             Attributes().set("axis", ctx.attr_int("axis", -1)).set("log", int64_t{log})));
}

void import_dropout(NodeContext& ctx) {  // inference: the identity
  ctx.attr_int("seed", 0);
  ctx.attr_float("ratio", 0.5);  // opsets before 12: an attribute (inference ignores it)
  if (ctx.wants_output(1)) {
    // The mask of an inference Dropout is all true.
    TensorId x = ctx.input(0);
    TensorId t = ctx.elementwise("eq", x, x);
    TensorId f = ctx.elementwise("ne", x, x);
    ctx.set_output(1, ctx.elementwise("or", t, f));
  }
  if (ctx.has_input(2)) {  // training drops at random, except with ratio 0
    auto mode = ctx.int_values(2);
    auto ratio = ctx.has_input(1) ? ctx.float_values(1) : std::nullopt;
    const bool no_drop = ratio && ratio->size() == 1 && ratio->at(0) == 0.0;
    if (!no_drop && (!mode || (!mode->empty() && mode->at(0) != 0))) {
      ctx.fail(
          "training_mode must be a constant false (training drops at random), or the ratio a constant 0");
    }
  }
  ctx.set_output(0, ctx.add1("identity", {ctx.input(0)}));
}

// LRN: y = x / (bias + alpha / size * sum of x^2 over the channels c - (size - 1) / 2 ..
// c + size / 2)^beta; the window sum as an average pooling over the channel axis (static dims).
void import_lrn(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const int64_t size = ctx.attr_int("size");
  const double alpha = ctx.attr_float("alpha", 1e-4), beta = ctx.attr_float("beta", 0.75),
               bias = ctx.attr_float("bias", 1.0);
  if (x.dims.size() < 3 || !is_static(x.dims)) ctx.fail("needs a static input of rank >= 3");
  if (size < 1 || size > 1024) ctx.fail("size must be in 1..1024");
  int64_t rest = 1;
  for (size_t d = 2; d < x.dims.size(); ++d) rest *= x.dims[d];
  const int64_t n = x.dims[0], c = x.dims[1];
  TensorId sq = ctx.elementwise("mul", ctx.input(0), ctx.input(0));
  sq = ctx.add1("reshape", {sq}, Attributes().set("shape", std::vector<int64_t>{n, 1, c, rest}));
  sq = ctx.add1(
      "pad", {sq},
      Attributes().set("pads", std::vector<int64_t>{0, 0, (size - 1) / 2, size / 2}).set("value", 0.0));
  TensorId sum = ctx.add1("pooling", {sq},
                          Attributes()
                              .set("type", std::string("avg"))
                              .set("kernel", std::vector<int64_t>{size, 1})
                              .set("strides", std::vector<int64_t>{1, 1}));
  sum = ctx.add1("reshape", {sum}, Attributes().set("shape", std::vector<int64_t>(x.dims)));
  const DataType dt = x.dtype;
  // alpha / size * (size * average) = alpha * average
  TensorId base =
      ctx.elementwise("add", ctx.scalar(dt, bias), ctx.elementwise("mul", sum, ctx.scalar(dt, alpha)));
  ctx.set_output(0, ctx.elementwise("div", ctx.input(0), ctx.elementwise("pow", base, ctx.scalar(dt, beta))));
}

const ImporterRegistration kRegistered{
    {"MatMul", import_matmul},
    {"Gemm", import_gemm},
    {"Conv", [](NodeContext& c) { import_conv(c, false); }},
    {"ConvTranspose", [](NodeContext& c) { import_conv(c, true); }},
    {"MaxPool", [](NodeContext& c) { import_pool(c, "max"); }},
    {"AveragePool", [](NodeContext& c) { import_pool(c, "avg"); }},
    {"GlobalAveragePool", [](NodeContext& c) { import_global_pool(c, "mean"); }},
    {"GlobalMaxPool", [](NodeContext& c) { import_global_pool(c, "max"); }},
    {"LpPool", import_lp_pool},
    {"BatchNormalization", import_batch_norm},
    {"InstanceNormalization", import_instance_norm},
    {"LayerNormalization", [](NodeContext& c) { import_norm_over_axis(c, "layer_norm", 1e-5); }},
    {"RMSNormalization", [](NodeContext& c) { import_norm_over_axis(c, "rms_norm", 1e-5); }},
    {"GroupNormalization", import_group_norm},
    {"Softmax", [](NodeContext& c) { import_softmax(c, false); }, 13},
    {"LogSoftmax", [](NodeContext& c) { import_softmax(c, true); }, 13},
    {"Dropout", import_dropout},
    {"LRN", import_lrn},
    {"MaxUnpool", import_max_unpool},
    {"Col2Im", import_col2im},
};

}  // namespace
}  // namespace kiln::onnx
