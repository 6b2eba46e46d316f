#pragma once

#include <cstdint>
#include <string>

#include "ir/dims.h"
#include "ir/network.h"

namespace kiln {

// How attention's q, k, v and output lay out their heads: "bhsd" [B..., H, S, D] (torch's SDPA)
// or "bshd" [B..., S, H, D] (rank >= 4: the projections' layout before torch's transpose(1, 2)).
// packed_attention takes "bshd" (qkv [B, S, 3, H, D], the default) or "sbhd" (qkv [S, B, 3, H, D]
// and output [S, B, H, D]: torch's MultiheadAttention, which works sequence-first).
enum class AttentionLayout : uint8_t { kBHSD = 0, kBSHD = 1, kSBHD = 2 };

// The attention / packed_attention layer's attributes, read once for both backends. The schema
// has validated them.
struct AttentionAttrs {
  bool causal = false;
  double scale = 0.0;  // <= 0: 1/sqrt(D)
  AttentionLayout layout = AttentionLayout::kBHSD;
  float out_inv_scale = 0.f;  // > 0 (packed_attention's output_inv_scale): the output is float8 e4m3
};

AttentionAttrs attention_attrs(const Layer& layer);

// The factor applied to q @ k^T: the `scale` attribute, or 1/sqrt(d) when it is absent or <= 0.
double attention_scale(const AttentionAttrs& attrs, int64_t d);

// Where one of q, k, v or the output lives in its buffer: element (b, h, s, c), with b the
// flattened batch index, h the head and c the position in the head (contiguous), is at
// offset + b * batch + h * head + s * seq + c.
struct AttentionOperand {
  int64_t offset = 0, batch = 0, head = 0, seq = 0;
};

// One attention problem in layout-free terms, shared by the attention and packed_attention
// kernels of every backend: the layouts differ only in these strides.
struct AttentionGeometry {
  int64_t batch = 0;  // product of the batch dims
  int64_t hq = 0, hkv = 0, sq = 0, sk = 0, d = 0, dv = 0;
  AttentionOperand q, k, v, out;
  Dims scores;  // [B..., Hq, Sq, Sk]: what a mask broadcasts to
};

// attention's geometry for concrete q, k, v dims in `layout`.
AttentionGeometry attention_geometry(AttentionLayout layout, const Dims& q, const Dims& k, const Dims& v);
// packed_attention's geometry for a concrete qkv (q, k, v all read from it): [B, S, 3, H, D] in
// layout bshd, [S, B, 3, H, D] in layout sbhd.
AttentionGeometry packed_attention_geometry(AttentionLayout layout, const Dims& qkv);

}  // namespace kiln
