// ONNX Resize. The engine's resize layer takes the modes torch has (nearest asymmetric + floor,
// linear half_pixel / pytorch_half_pixel / align_corners when upsampling); every other mode is
// built from gathers with host-computed indices and weights, one axis after another (last axis
// first), following onnx's reference: each output coordinate maps to x_orig by the
// coordinate_transformation_mode, its 2 (nearest, linear) or 4 (cubic) neighbours are read with
// edge clamping (exclude_outside: zero weight outside, renormalized), nearest picks one of two by
// nearest_mode, tf_crop_and_resize writes extrapolation_value outside the roi. Needs static dims.
#include <cmath>
#include <numeric>

#include "onnx_parser/importer.h"

namespace kiln::onnx {
namespace {

struct Mode {
  std::string mode, ctm, nearest;
  double cubic_a = -0.75;
  bool exclude_outside = false;
  double extrapolation = 0.0;
};

// x_orig of output coordinate `x` along an axis (onnx reference _interpolate_1d_with_x); sets
// `outside` for tf_crop_and_resize coordinates past the input.
double original_coordinate(const Mode& m, double x, double scale, int64_t in, int64_t out_int,
                           double roi_start, double roi_end, bool* outside) {
  const double out = scale * static_cast<double>(in);
  *outside = false;
  if (m.ctm == "align_corners") return out == 1 ? 0.0 : x * (in - 1) / (out - 1);
  if (m.ctm == "asymmetric") return x / scale;
  if (m.ctm == "pytorch_half_pixel") return out == 1 ? -0.5 : (x + 0.5) / scale - 0.5;
  if (m.ctm == "half_pixel") return (x + 0.5) / scale - 0.5;
  if (m.ctm == "half_pixel_symmetric") {
    const double adjustment = static_cast<double>(out_int) / out;
    const double offset = in / 2.0 * (1 - adjustment);
    return offset + (x + 0.5) / scale - 0.5;
  }
  // tf_crop_and_resize
  double xo =
      out == 1 ? (roi_end - roi_start) * (in - 1) / 2.0 : x * (roi_end - roi_start) * (in - 1) / (out - 1);
  xo += roi_start * (in - 1);
  *outside = xo < 0 || xo > in - 1;
  return xo;
}

std::vector<double> coefficients(const Mode& m, double r) {
  if (m.mode == "linear") return {1 - r, r};
  if (m.mode == "nearest") {
    if (r == 1.0) return {0, 1};  // an integer coordinate
    if (m.nearest == "round_prefer_floor") return {r <= 0.5 ? 1.0 : 0.0, r > 0.5 ? 1.0 : 0.0};
    if (m.nearest == "round_prefer_ceil") return {r < 0.5 ? 1.0 : 0.0, r >= 0.5 ? 1.0 : 0.0};
    if (m.nearest == "floor") return {1, 0};
    return {0, 1};  // ceil
  }
  const double a = m.cubic_a;
  return {((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a, ((a + 2) * r - (a + 3)) * r * r + 1,
          ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
          ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a};
}

// One axis: y = sum over taps of weight[o] * gather(x, index[o]).
TensorId resize_axis(NodeContext& ctx, TensorId x, int64_t axis, int64_t rank, int64_t in, int64_t out,
                     double scale, const Mode& m, double roi_start, double roi_end) {
  const DataType dt = ctx.net().desc(x).dtype;
  const int taps = m.mode == "cubic" ? 4 : 2;
  check_host_elements(out * taps, "resize indices", ctx);
  std::vector<std::vector<int64_t>> index(taps, std::vector<int64_t>(static_cast<size_t>(out)));
  std::vector<std::vector<double>> weight(taps, std::vector<double>(static_cast<size_t>(out)));
  std::vector<uint8_t> inside(static_cast<size_t>(out), 1);
  bool any_outside = false;
  for (int64_t o = 0; o < out; ++o) {
    bool outside = false;
    const double xo =
        original_coordinate(m, static_cast<double>(o), scale, in, out, roi_start, roi_end, &outside);
    inside[o] = !outside;
    any_outside |= outside;
    double base = std::floor(xo), r = xo - base;
    if (xo == base) {  // an integer coordinate: the reference's ratio 1 from the tap below
      base -= 1;
      r = 1.0;
    }
    std::vector<double> c = coefficients(m, r);
    const int64_t first = static_cast<int64_t>(base) - (taps == 4 ? 1 : 0);
    double sum = 0;
    for (int t = 0; t < taps; ++t) {
      const int64_t i = first + t;
      if (m.exclude_outside && (i < 0 || i >= in)) c[t] = 0;
      sum += c[t];
    }
    for (int t = 0; t < taps; ++t) {
      index[t][o] = std::min<int64_t>(std::max<int64_t>(first + t, 0), in - 1);
      weight[t][o] = m.exclude_outside && sum != 0 ? c[t] / sum : c[t];
    }
  }
  Dims shape(static_cast<size_t>(rank), 1);
  shape[axis] = out;
  TensorId y = -1;
  for (int t = 0; t < taps; ++t) {
    bool zero = true, one = true;
    for (double w : weight[t]) {
      zero &= w == 0;
      one &= w == 1;
    }
    if (zero) continue;
    TensorId g = ctx.add1("gather", {x, ctx.constant_i64(index[t])}, Attributes().set("axis", axis));
    if (!one) {
      std::vector<float> w(weight[t].begin(), weight[t].end());
      TensorId wt =
          ctx.cast(ctx.net().add_constant(ctx.name() + "/w" + std::to_string(axis) + "_" + std::to_string(t),
                                          DataType::kFloat32, shape, w.data(), w.size() * sizeof(float)),
                   dt);
      g = ctx.elementwise("mul", g, wt);
    }
    y = y < 0 ? g : ctx.elementwise("add", y, g);
  }
  if (y < 0)
    y = ctx.elementwise("mul",
                        ctx.add1("gather", {x, ctx.constant_i64(index[0])}, Attributes().set("axis", axis)),
                        ctx.scalar(dt, 0.0));
  if (any_outside) {
    TensorId mask = ctx.net().add_constant(ctx.name() + "/inside" + std::to_string(axis), DataType::kBool,
                                           shape, inside.data(), inside.size());
    y = ctx.add1("where", {mask, y, ctx.scalar(dt, m.extrapolation)});
  }
  return y;
}

void import_resize(NodeContext& ctx) {
  const TensorDesc x = ctx.desc(0);
  const int64_t rank = static_cast<int64_t>(x.dims.size());
  Mode m;
  m.mode = ctx.attr_string("mode", std::string("nearest"));
  m.ctm = ctx.attr_string("coordinate_transformation_mode", std::string("half_pixel"));
  m.nearest = ctx.attr_string("nearest_mode", std::string("round_prefer_floor"));
  m.cubic_a = ctx.attr_float("cubic_coeff_a", -0.75);
  m.exclude_outside = ctx.attr_int("exclude_outside", 0) != 0;
  m.extrapolation = ctx.attr_float("extrapolation_value", 0.0);
  if (ctx.attr_int("antialias", 0) != 0) ctx.fail("antialias is not supported");
  const std::string aspect = ctx.attr_string("keep_aspect_ratio_policy", std::string("stretch"));
  if (m.mode != "nearest" && m.mode != "linear" && m.mode != "cubic")
    ctx.fail("mode " + m.mode + " is not supported");
  static const std::vector<std::string> ctms = {"half_pixel",         "half_pixel_symmetric",
                                                "pytorch_half_pixel", "align_corners",
                                                "asymmetric",         "tf_crop_and_resize"};
  if (std::find(ctms.begin(), ctms.end(), m.ctm) == ctms.end())
    ctx.fail("coordinate_transformation_mode " + m.ctm);
  std::vector<int64_t> axes(static_cast<size_t>(rank));
  std::iota(axes.begin(), axes.end(), 0);
  if (ctx.has_attr("axes")) {
    axes = ctx.attr_ints("axes");
    for (int64_t& a : axes) a = normalize_axis(a, rank, ctx);
  }
  // per-dim scales and output sizes
  std::vector<double> scale(static_cast<size_t>(rank), 1.0);
  std::vector<int64_t> out(x.dims.begin(), x.dims.end());
  auto scales = ctx.float_values(2);
  auto sizes = ctx.int_values(3);
  if (sizes && !sizes->empty()) {
    if (sizes->size() != axes.size()) ctx.fail("sizes needs one entry per resized axis");
    for (size_t i = 0; i < axes.size(); ++i) {
      if (x.dims[axes[i]] < 0) ctx.fail("sizes need static input dims");
    }
    if (aspect == "stretch") {
      for (size_t i = 0; i < axes.size(); ++i) {
        out[axes[i]] = (*sizes)[i];
        scale[axes[i]] = static_cast<double>((*sizes)[i]) / static_cast<double>(x.dims[axes[i]]);
      }
    } else if (aspect == "not_larger" || aspect == "not_smaller") {
      double s = aspect == "not_larger" ? 1e300 : 0.0;
      for (size_t i = 0; i < axes.size(); ++i) {
        const double r = static_cast<double>((*sizes)[i]) / static_cast<double>(x.dims[axes[i]]);
        s = aspect == "not_larger" ? std::min(s, r) : std::max(s, r);
      }
      for (int64_t a : axes) {
        scale[a] = s;
        out[a] = static_cast<int64_t>(s * static_cast<double>(x.dims[a]) + 0.5);
      }
    } else {
      ctx.fail("keep_aspect_ratio_policy " + aspect + " is not one of stretch, not_larger, not_smaller");
    }
  } else if (scales && !scales->empty()) {
    if (scales->size() != axes.size()) ctx.fail("scales needs one entry per resized axis");
    for (size_t i = 0; i < axes.size(); ++i) {
      const int64_t a = axes[i];
      if (!((*scales)[i] > 0 && (*scales)[i] < 1e9)) ctx.fail("scales must be positive and finite");
      scale[a] = (*scales)[i];
      if (x.dims[a] >= 0)
        out[a] = static_cast<int64_t>(std::floor(static_cast<double>(x.dims[a]) * (*scales)[i]));
      else if ((*scales)[i] != 1.0)
        ctx.fail("resizing a dynamic dim is not supported");
    }
  } else {
    ctx.fail("needs scales or sizes known while parsing");
  }
  // The engine's resize layer: torch's modes, spatial dims only.
  bool spatial_only = rank >= 3 && rank <= 5 && scale[0] == 1.0 && scale[1] == 1.0;
  bool upsampling = true;
  for (int64_t a = 2; a < rank; ++a) upsampling &= scale[a] >= 1.0;
  Attributes attrs;
  bool engine = false;
  if (spatial_only && m.mode == "nearest" && m.ctm == "asymmetric" && m.nearest == "floor") {
    attrs.set("mode", std::string("nearest"));
    engine = true;
  } else if (spatial_only && upsampling && m.mode == "linear" &&
             (m.ctm == "half_pixel" || m.ctm == "pytorch_half_pixel" || m.ctm == "align_corners")) {
    attrs.set("mode", std::string("linear"));
    if (m.ctm == "align_corners") attrs.set("align_corners", int64_t{1});
    engine = true;
  }
  if (engine) {
    attrs.set("sizes", std::vector<int64_t>(out.begin() + 2, out.end()));
    ctx.set_output(0, ctx.add1("resize", {ctx.input(0)}, attrs));
    return;
  }
  std::vector<double> roi;
  if (m.ctm == "tf_crop_and_resize") {
    auto r = ctx.float_values(1);
    if (!r) ctx.fail("tf_crop_and_resize needs a roi known while parsing");
    roi = *r;
    if (roi.size() == 2 * axes.size() && axes.size() != static_cast<size_t>(rank)) {  // roi per resized axis
      std::vector<double> full(2 * static_cast<size_t>(rank));
      for (int64_t a = 0; a < rank; ++a) full[a] = 0, full[rank + a] = 1;
      for (size_t i = 0; i < axes.size(); ++i) {
        full[axes[i]] = roi[i];
        full[rank + axes[i]] = roi[axes.size() + i];
      }
      roi = full;
    }
    if (roi.size() != 2 * static_cast<size_t>(rank)) ctx.fail("roi needs two entries per dim");
  } else if (ctx.has_input(1)) {
    ctx.float_values(1);  // roi is read only by tf_crop_and_resize
  }
  TensorId y = ctx.input(0);
  for (int64_t a = rank - 1; a >= 0; --a) {
    if (out[a] == x.dims[a] && scale[a] == 1.0 && m.ctm != "tf_crop_and_resize") continue;
    if (x.dims[a] < 0) ctx.fail("resizing a dynamic dim is not supported");
    y = resize_axis(ctx, y, a, rank, x.dims[a], out[a], scale[a], m, roi.empty() ? 0 : roi[a],
                    roi.empty() ? 1 : roi[rank + a]);
  }
  ctx.set_output(0, y == ctx.input(0) ? ctx.add1("identity", {y}) : y);
}

const ImporterRegistration kRegistered{{"Resize", import_resize, 11}};

}  // namespace
}  // namespace kiln::onnx
