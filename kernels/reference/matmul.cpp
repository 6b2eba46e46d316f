// Reference matmul: naive triple loop per batch, accumulating in double.
#include "kernels/broadcast.h"
#include "kernels/kernel.h"
#include "kernels/kernels.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

class RefMatmul final : public Kernel {
 public:
  RefMatmul(bool ta, bool tb) : ta_(ta), tb_(tb) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView &a = in[0], &b = in[1], &c = out[0];
    size_t ra = a.dims.size(), rc = c.dims.size();
    int64_t m = c.dims[rc - 2], n = c.dims[rc - 1];
    int64_t k = ta_ ? a.dims[ra - 2] : a.dims[ra - 1];
    Dims batch_c(c.dims.begin(), c.dims.end() - 2);
    Dims batch_a(a.dims.begin(), a.dims.end() - 2), batch_b(b.dims.begin(), b.dims.end() - 2);
    BroadcastIndexer ia = make_broadcast_indexer(batch_a, batch_c);
    BroadcastIndexer ib = make_broadcast_indexer(batch_b, batch_c);
    int64_t batches = volume(batch_c);
    for (int64_t bi = 0; bi < batches; ++bi) {
      int64_t oa = 0, ob = 0, rem = bi;
      for (int d = ia.rank - 1; d >= 0; --d) {
        int64_t idx = rem % ia.out_dims[d];
        rem /= ia.out_dims[d];
        oa += idx * ia.in_strides[d];
        ob += idx * ib.in_strides[d];
      }
      oa *= m * k;
      ob *= k * n;
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double acc = 0;
          for (int64_t p = 0; p < k; ++p) {
            double x = load_element(a, oa + (ta_ ? p * m + i : i * k + p));
            double y = load_element(b, ob + (tb_ ? j * k + p : p * n + j));
            acc += x * y;
          }
          store_element(c, bi * m * n + i * n + j, acc);
        }
      }
    }
  }
  std::string name() const override { return "ref_matmul"; }

 private:
  bool ta_, tb_;
};

}  // namespace

void register_matmul_reference_kernel() {
  register_kernel("matmul", Backend::kReference, [](const Layer& l) {
    return std::make_unique<RefMatmul>(l.attrs.get_int("transpose_a", int64_t{0}) != 0,
                                       l.attrs.get_int("transpose_b", int64_t{0}) != 0);
  });
}

}  // namespace kiln
