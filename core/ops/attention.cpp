// attention: scaled dot-product attention with the semantics of torch's
// scaled_dot_product_attention (inference, no dropout):
//   out = softmax(q @ k^T * scale + mask) @ v
// Inputs q [B..., Hq, Sq, D], k [B..., Hkv, Sk, D], v [B..., Hkv, Sk, Dv] of one floating dtype and
// one rank (>= 3; at rank 3 dim 0 plays the head role, as in torch), and an optional mask
// broadcastable to [B..., Hq, Sq, Sk]: bool (true = attend) or q's dtype (added to the scores).
// Grouped-query attention: Hq a multiple of Hkv, query head h reads kv head h / (Hq / Hkv).
// Attributes: `causal` (0/1, query i sees keys j <= i, aligned top-left like torch's is_causal),
// `scale` (> 0; absent or <= 0 means 1/sqrt(D)). causal together with a mask is refused, as torch
// does. A row whose keys are all masked (or Sk == 0) gives zeros, as torch's math backend does.
// Output [B..., Hq, Sq, Dv] in q's dtype.
#include "core/ops/attention.h"

#include <cmath>

#include "core/error.h"
#include "core/op_schema.h"
#include "core/ops/ops.h"

namespace kiln {

AttentionAttrs attention_attrs(const Layer& layer) {
  const std::string who = describe(layer);
  AttentionAttrs a;
  a.causal = layer.attrs.has("causal") && layer.attrs.get_int("causal", who) != 0;
  a.scale = layer.attrs.has("scale") ? layer.attrs.get_float("scale", who) : 0.0;
  return a;
}

double attention_scale(const AttentionAttrs& attrs, int64_t d) {
  if (attrs.scale > 0) return attrs.scale;
  return d > 0 ? 1.0 / std::sqrt(static_cast<double>(d)) : 1.0;
}

namespace {

bool dims_match(int64_t a, int64_t b) { return a == b || a == kDynamic || b == kDynamic; }
int64_t known_of(int64_t a, int64_t b) { return a != kDynamic ? a : b; }

std::vector<TensorDesc> infer_attention(const Layer& layer, const std::vector<TensorDesc>& in) {
  const std::string who = describe(layer);
  const TensorDesc &q = in[0], &k = in[1], &v = in[2];
  KILN_CHECK(is_floating(q.dtype), who << ": q must be floating point, got " << dtype_name(q.dtype));
  KILN_CHECK(k.dtype == q.dtype && v.dtype == q.dtype,
             who << ": q, k and v must share one dtype, got " << dtype_name(q.dtype) << ", "
                 << dtype_name(k.dtype) << ", " << dtype_name(v.dtype) << "; insert a cast");
  const size_t rank = q.dims.size();
  KILN_CHECK(rank >= 3 && k.dims.size() == rank && v.dims.size() == rank,
             who << ": q, k and v need one rank >= 3 ([B..., H, S, D]), got " << to_string(q.dims) << ", "
                 << to_string(k.dims) << ", " << to_string(v.dims));
  if (layer.attrs.has("causal")) {
    int64_t c = layer.attrs.get_int("causal", who);
    KILN_CHECK(c == 0 || c == 1, who << ": causal must be 0 or 1, got " << c);
  }
  if (layer.attrs.has("scale")) layer.attrs.get_float("scale", who);  // type check
  const AttentionAttrs attrs = attention_attrs(layer);

  Dims out(q.dims.begin(), q.dims.end());
  for (size_t i = 0; i + 3 < rank; ++i) {
    KILN_CHECK(dims_match(q.dims[i], k.dims[i]) && dims_match(q.dims[i], v.dims[i]),
               who << ": batch dims of q, k and v must be equal, got " << to_string(q.dims) << ", "
                   << to_string(k.dims) << ", " << to_string(v.dims));
    out[i] = known_of(known_of(q.dims[i], k.dims[i]), v.dims[i]);
  }
  const int64_t hq = q.dims[rank - 3], hkv = k.dims[rank - 3];
  KILN_CHECK(dims_match(hkv, v.dims[rank - 3]), who << ": k and v must have the same number of heads, got "
                                                    << to_string(k.dims) << " and " << to_string(v.dims));
  KILN_CHECK(hq == kDynamic || hkv == kDynamic || (hkv > 0 && hq % hkv == 0) || (hq == 0 && hkv == 0),
             who << ": query heads (" << hq << ") must be a multiple of key/value heads (" << hkv
                 << ") for grouped-query attention; q is " << to_string(q.dims) << ", k is "
                 << to_string(k.dims));
  KILN_CHECK(dims_match(q.dims[rank - 1], k.dims[rank - 1]),
             who << ": q and k must have the same head size (last dim), got " << to_string(q.dims) << " and "
                 << to_string(k.dims));
  KILN_CHECK(dims_match(k.dims[rank - 2], v.dims[rank - 2]),
             who << ": k and v must have the same sequence length (dim -2), got " << to_string(k.dims)
                 << " and " << to_string(v.dims));
  out[rank - 1] = v.dims[rank - 1];

  if (in.size() == 4) {
    const TensorDesc& mask = in[3];
    KILN_CHECK(!attrs.causal, who << ": causal=1 together with an explicit mask is not supported (torch "
                                     "refuses it too); fold the causal pattern into the mask");
    KILN_CHECK(mask.dtype == DataType::kBool || mask.dtype == q.dtype,
               who << ": mask must be bool (true = attend) or q's dtype " << dtype_name(q.dtype)
                   << " (added to the scores), got " << dtype_name(mask.dtype));
    Dims scores(q.dims.begin(), q.dims.end() - 1);
    scores.push_back(k.dims[rank - 2]);
    for (size_t i = 0; i + 3 < rank; ++i) scores[i] = out[i];
    bool ok = mask.dims.size() <= scores.size();
    for (size_t i = 0; ok && i < mask.dims.size(); ++i) {
      int64_t m = mask.dims[mask.dims.size() - 1 - i], s = scores[scores.size() - 1 - i];
      ok = m == 1 || dims_match(m, s);
    }
    KILN_CHECK(ok, who << ": mask " << to_string(mask.dims) << " does not broadcast to the scores' shape "
                       << to_string(scores) << " ([B..., Hq, Sq, Sk])");
  }
  return {{q.dtype, out}};
}

}  // namespace

void register_attention_schema() { register_schema({"attention", 3, 4, infer_attention}); }

}  // namespace kiln
