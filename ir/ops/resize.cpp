// resize: x [N, C, spatial...] (1 to 3 spatial dims) -> [N, C, out spatial...], with the
// semantics of torch.nn.functional.interpolate (recompute_scale_factor=False).
//   mode           nearest (torch 'nearest': src = floor(dst * scale)), nearest_exact
//                  (src = floor((dst + 0.5) * scale)), linear (linear / bilinear / trilinear)
//   align_corners  0/1, linear only
//   sizes          output spatial sizes, or
//   scales         per spatial dim: out = floor(in * scale), and the coordinate mapping uses
//                  1/scale instead of in/out (as torch does when it is given a scale factor)
// The index arithmetic is torch's, in float32 (kernels/resize_index.h), so that nearest picks
// the same pixels. N and C may be dynamic; spatial dims may be dynamic when `scales` is given.
#include "ir/ops/resize.h"

#include <cmath>

#include "ir/error.h"
#include "ir/op_schema.h"

namespace kiln {
namespace {

std::vector<double> float_list(const Layer& layer, const std::string& name, const std::string& who) {
  const AttrValue& v = layer.attrs.values().at(name);
  if (std::holds_alternative<std::vector<double>>(v)) return std::get<std::vector<double>>(v);
  KILN_CHECK(std::holds_alternative<std::vector<int64_t>>(v),
             who << ": attribute '" << name << "' must be a list of numbers");
  const auto& ints = std::get<std::vector<int64_t>>(v);
  return std::vector<double>(ints.begin(), ints.end());
}

std::vector<TensorDesc> infer_resize(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const Dims& x = in[0].dims;
  KILN_CHECK(x.size() >= 3 && x.size() <= 5,
             who << ": input must be [N, C, spatial...] with 1 to 3 spatial dims, got " << to_string(x));
  KILN_CHECK(is_floating(in[0].dtype),
             who << ": input must be float32, float16 or bfloat16, got " << dtype_name(in[0].dtype));
  const int spatial = static_cast<int>(x.size()) - 2;
  ResizeAttrs a = resize_attrs(layer, spatial);
  Dims out = {x[0], x[1]};
  for (int d = 0; d < spatial; ++d) {
    int64_t in_size = x[2 + d];
    KILN_CHECK(in_size != 0, who << ": spatial dims of the input must not be 0, got " << to_string(x));
    int64_t o;
    if (!a.sizes.empty()) {
      o = a.sizes[d];
    } else if (in_size == kDynamic) {
      o = kDynamic;
    } else {
      double s = std::floor(static_cast<double>(in_size) * a.scales[d]);
      KILN_CHECK(std::fabs(s) < 1e15, who << ": scale " << a.scales[d] << " makes the output too large");
      o = static_cast<int64_t>(s);
      KILN_CHECK(o > 0, who << ": input " << to_string(x) << " with scale " << a.scales[d]
                            << " gives an output size of 0; use a larger scale");
    }
    out.push_back(o);
  }
  return {{in[0].dtype, out}};
}

}  // namespace

ResizeAttrs resize_attrs(const Layer& layer, int spatial) {
  const std::string who = describe(layer);
  ResizeAttrs a;
  std::string mode = layer.attrs.get_string("mode", who);
  if (mode == "nearest") {
    a.mode = ResizeMode::kNearest;
  } else if (mode == "linear") {
    a.mode = ResizeMode::kLinear;
  } else if (mode == "nearest_exact") {
    a.mode = ResizeMode::kNearestExact;
  } else {
    KILN_FAIL(who << ": unknown mode '" << mode << "': use nearest, nearest_exact or linear");
  }
  int64_t ac = layer.attrs.get_int("align_corners", int64_t{0});
  KILN_CHECK(ac == 0 || ac == 1, who << ": align_corners must be 0 or 1, got " << ac);
  a.align_corners = ac == 1;
  KILN_CHECK(!a.align_corners || a.mode == ResizeMode::kLinear,
             who << ": align_corners applies to linear mode only (torch refuses it for " << mode << ")");
  bool has_sizes = layer.attrs.has("sizes"), has_scales = layer.attrs.has("scales");
  KILN_CHECK(has_sizes != has_scales,
             who << ": give exactly one of `sizes` (output spatial sizes) or `scales`"
                 << (has_sizes ? ", not both" : ""));
  if (has_sizes) {
    a.sizes = layer.attrs.get_ints("sizes", who);
    KILN_CHECK(spatial < 0 || static_cast<int>(a.sizes.size()) == spatial,
               who << ": `sizes` has " << a.sizes.size() << " entries for " << spatial << " spatial dims");
    for (int64_t s : a.sizes) KILN_CHECK(s > 0, who << ": output sizes must be positive, got " << s);
  } else {
    a.scales = float_list(layer, "scales", who);
    KILN_CHECK(spatial < 0 || static_cast<int>(a.scales.size()) == spatial,
               who << ": `scales` has " << a.scales.size() << " entries for " << spatial << " spatial dims");
    for (double s : a.scales) {
      KILN_CHECK(std::isfinite(s) && s > 0, who << ": scales must be positive, got " << s);
    }
  }
  return a;
}

namespace {

const std::vector<AttrSpec> kResizeAttributes = {
    {"mode", AttrType::kString, std::nullopt, "required: nearest, nearest_exact or linear"},
    {"align_corners", AttrType::kInt, AttrValue{int64_t{0}}, "0/1, linear only"},
    {"sizes", AttrType::kInts, std::nullopt,
     "output spatial sizes; exactly one of `sizes` and `scales` is given"},
    {"scales", AttrType::kFloats, std::nullopt,
     "per spatial dim, out = floor(in * scale) (ints accepted); exactly one of `sizes` and `scales` is "
     "given"},
};

const SchemaRegistration kRegistered{
    {"resize", 1, 1, infer_resize, kResizeAttributes},
};

}  // namespace

}  // namespace kiln
