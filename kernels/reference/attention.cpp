// Reference attention (attention and packed_attention): for each (batch, query head, query row)
// the scores against every key in double, masked, a softmax with the row maximum subtracted, then
// the weighted sum of v. A row whose keys are all masked (or Sk == 0) is written as zeros (torch's
// math backend does the same). Layouts differ only in the strides of AttentionGeometry. A float8
// output (out_inv_scale) is the value rounded to q's dtype, times out_inv_scale, stored as e4m3.
#include <algorithm>
#include <cmath>
#include <limits>

#include "ir/ops/attention.h"
#include "kernels/broadcast.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

// q, k, v and out are views of the buffers `g` indexes (for packed_attention q, k and v are one).
void attend(const AttentionAttrs& attrs, const AttentionGeometry& g, const TensorView& q, const TensorView& k,
            const TensorView& v, const TensorView* mask, const TensorView& o) {
  if (g.batch * g.hq == 0 || g.sq == 0 || g.dv == 0) return;
  const int64_t group = g.hq / g.hkv;
  const double scale = attention_scale(attrs, g.d);
  const double neg_inf = -std::numeric_limits<double>::infinity();
  const size_t lead_rank = g.scores.size() - 2;  // [B..., Hq]: indexed by the flat b * hq + h

  BroadcastIndexer mi;
  if (mask) mi = make_broadcast_indexer(mask->dims, g.scores);

  std::vector<double> s(static_cast<size_t>(g.sk)), acc(static_cast<size_t>(g.dv));
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t h = 0; h < g.hq; ++h) {
      const int64_t kvh = h / group;
      const int64_t qb = g.q.offset + b * g.q.batch + h * g.q.head;
      const int64_t kb = g.k.offset + b * g.k.batch + kvh * g.k.head;
      const int64_t vb = g.v.offset + b * g.v.batch + kvh * g.v.head;
      const int64_t ob = g.out.offset + b * g.out.batch + h * g.out.head;
      int64_t mask_base = 0, rem = b * g.hq + h;
      for (int i = static_cast<int>(lead_rank) - 1; mask && i >= 0; --i) {
        mask_base += (rem % mi.out_dims[i]) * mi.in_strides[i];
        rem /= mi.out_dims[i];
      }
      for (int64_t i = 0; i < g.sq; ++i) {
        double row_max = neg_inf;
        for (int64_t j = 0; j < g.sk; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < g.d; ++c) {
            dot += load_element(q, qb + i * g.q.seq + c) * load_element(k, kb + j * g.k.seq + c);
          }
          double score = dot * scale;
          if (attrs.causal && j > i) score = neg_inf;
          if (mask) {
            double m = load_element(
                *mask, mask_base + i * mi.in_strides[lead_rank] + j * mi.in_strides[lead_rank + 1]);
            score = mask->dtype == DataType::kBool ? (m != 0 ? score : neg_inf) : score + m;
          }
          s[j] = score;
          row_max = std::max(row_max, score);
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double sum = 0;
        if (row_max != neg_inf) {  // else every key is masked: zeros
          for (int64_t j = 0; j < g.sk; ++j) {
            double p = std::exp(s[j] - row_max);
            sum += p;
            for (int64_t c = 0; c < g.dv; ++c) acc[c] += p * load_element(v, vb + j * g.v.seq + c);
          }
        }
        for (int64_t c = 0; c < g.dv; ++c) {
          double value = sum > 0 ? acc[c] / sum : 0.0;
          // float8 output: the value in q's dtype, scaled; the store rounds it to e4m3
          if (attrs.out_inv_scale > 0.f)
            value = static_cast<float>(round_to_dtype(q.dtype, value)) * attrs.out_inv_scale;
          store_element(o, ob + i * g.out.seq + c, value);
        }
      }
    }
  }
}

class RefAttention final : public Kernel {
 public:
  explicit RefAttention(AttentionAttrs attrs) : attrs_(attrs) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const AttentionGeometry g = attention_geometry(attrs_.layout, in[0].dims, in[1].dims, in[2].dims);
    attend(attrs_, g, in[0], in[1], in[2], in.size() == 4 ? &in[3] : nullptr, out[0]);
  }
  std::string name() const override { return "ref_attention"; }

 private:
  AttentionAttrs attrs_;
};

class RefPackedAttention final : public Kernel {
 public:
  explicit RefPackedAttention(AttentionAttrs attrs) : attrs_(attrs) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const AttentionGeometry g = packed_attention_geometry(attrs_.layout, in[0].dims);
    attend(attrs_, g, in[0], in[0], in[0], in.size() == 2 ? &in[1] : nullptr, out[0]);
  }
  std::string name() const override { return "ref_packed_attention"; }

 private:
  AttentionAttrs attrs_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("attention", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefAttention>(attention_attrs(l)); });
  register_kernel("packed_attention", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefPackedAttention>(attention_attrs(l)); });
});

}  // namespace kiln
