// Reference attention: for each (batch, query head, query row) the scores against every key in
// double, masked, a softmax with the row maximum subtracted, then the weighted sum of v. A row
// whose keys are all masked (or Sk == 0) is written as zeros (torch's math backend does the same).
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/ops/attention.h"
#include "kernels/broadcast.h"
#include "kernels/kernel.h"
#include "kernels/kernels.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

class RefAttention final : public Kernel {
 public:
  explicit RefAttention(AttentionAttrs attrs) : attrs_(attrs) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView &q = in[0], &k = in[1], &v = in[2], &o = out[0];
    const TensorView* mask = in.size() == 4 ? &in[3] : nullptr;
    const size_t rank = q.dims.size();
    const int64_t hq = q.dims[rank - 3], sq = q.dims[rank - 2], d = q.dims[rank - 1];
    const int64_t hkv = k.dims[rank - 3], sk = k.dims[rank - 2], dv = v.dims[rank - 1];
    const int64_t heads = volume(Dims(q.dims.begin(), q.dims.end() - 2));  // batch * hq
    if (heads == 0 || sq == 0 || dv == 0) return;
    const int64_t group = hq / hkv;
    const double scale = attention_scale(attrs_, d);
    const double neg_inf = -std::numeric_limits<double>::infinity();

    Dims scores_dims(q.dims.begin(), q.dims.end() - 1);
    scores_dims.push_back(sk);
    BroadcastIndexer mi;
    if (mask) mi = make_broadcast_indexer(mask->dims, scores_dims);

    std::vector<double> s(static_cast<size_t>(sk)), acc(static_cast<size_t>(dv));
    for (int64_t bh = 0; bh < heads; ++bh) {
      const int64_t kv = (bh / hq) * hkv + (bh % hq) / group;
      int64_t mask_base = 0, rem = bh;
      for (int i = static_cast<int>(rank) - 3; mask && i >= 0; --i) {
        mask_base += (rem % mi.out_dims[i]) * mi.in_strides[i];
        rem /= mi.out_dims[i];
      }
      for (int64_t i = 0; i < sq; ++i) {
        double row_max = neg_inf;
        for (int64_t j = 0; j < sk; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < d; ++c) {
            dot += load_element(q, (bh * sq + i) * d + c) * load_element(k, (kv * sk + j) * d + c);
          }
          double score = dot * scale;
          if (attrs_.causal && j > i) score = neg_inf;
          if (mask) {
            double m =
                load_element(*mask, mask_base + i * mi.in_strides[rank - 2] + j * mi.in_strides[rank - 1]);
            score = mask->dtype == DataType::kBool ? (m != 0 ? score : neg_inf) : score + m;
          }
          s[j] = score;
          row_max = std::max(row_max, score);
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double sum = 0;
        if (row_max != neg_inf) {  // else every key is masked: zeros
          for (int64_t j = 0; j < sk; ++j) {
            double p = std::exp(s[j] - row_max);
            sum += p;
            for (int64_t c = 0; c < dv; ++c) acc[c] += p * load_element(v, (kv * sk + j) * dv + c);
          }
        }
        for (int64_t c = 0; c < dv; ++c)
          store_element(o, (bh * sq + i) * dv + c, sum > 0 ? acc[c] / sum : 0.0);
      }
    }
  }
  std::string name() const override { return "ref_attention"; }

 private:
  AttentionAttrs attrs_;
};

}  // namespace

void register_attention_reference_kernel() {
  register_kernel("attention", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefAttention>(attention_attrs(l)); });
}

}  // namespace kiln
