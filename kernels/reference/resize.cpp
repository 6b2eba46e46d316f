// Reference resize: per spatial dim, the source indices (and linear weights) are computed once
// with torch's float32 index arithmetic (kernels/resize_index.h); the interpolation itself runs
// in double.
#include <vector>

#include "ir/ops/resize.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"
#include "kernels/resize_index.h"

namespace kiln {
namespace {

class RefResize final : public Kernel {
 public:
  explicit RefResize(ResizeAttrs a) : a_(std::move(a)) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView& x = in[0];
    const TensorView& y = out[0];
    const int spatial = static_cast<int>(x.dims.size()) - 2;
    const int64_t planes = x.dims[0] * x.dims[1];
    // taps[d][o]: the input indices and weights that output index o of spatial dim d reads.
    std::vector<std::vector<LinearTap>> taps(spatial);
    int64_t in_plane = 1, out_plane = 1;
    for (int d = 0; d < spatial; ++d) {
      const int64_t is = x.dims[2 + d], os = y.dims[2 + d];
      in_plane *= is;
      out_plane *= os;
      const float ratio = resize_ratio(is, os, a_.align_corners, a_.scales.empty() ? 0.0 : a_.scales[d]);
      for (int64_t o = 0; o < os; ++o) {
        if (a_.mode == ResizeMode::kLinear) {
          taps[d].push_back(linear_source(ratio, o, is, os, a_.align_corners));
        } else {
          int64_t s = a_.mode == ResizeMode::kNearest ? nearest_source(ratio, o, is)
                                                      : nearest_exact_source(ratio, o, is);
          taps[d].push_back({s, s, 1.f, 0.f});
        }
      }
    }
    const int corners = a_.mode == ResizeMode::kLinear ? 1 << spatial : 1;
    for (int64_t p = 0; p < planes; ++p) {
      for (int64_t o = 0; o < out_plane; ++o) {
        int64_t pos[3] = {0, 0, 0}, rem = o;
        for (int d = spatial - 1; d >= 0; --d) {
          pos[d] = rem % y.dims[2 + d];
          rem /= y.dims[2 + d];
        }
        double acc = 0;
        for (int c = 0; c < corners; ++c) {  // bit d of c picks i1 (weight w1) along dim d
          int64_t offset = 0;
          double w = 1;
          for (int d = 0; d < spatial; ++d) {
            const LinearTap& t = taps[d][pos[d]];
            bool hi = (c >> (spatial - 1 - d)) & 1;
            offset = offset * x.dims[2 + d] + (hi ? t.i1 : t.i0);
            w *= hi ? t.w1 : t.w0;
          }
          acc += w * load_element(x, p * in_plane + offset);
        }
        store_element(y, p * out_plane + o, acc);
      }
    }
  }
  std::string name() const override { return "ref_resize"; }

 private:
  ResizeAttrs a_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("resize", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefResize>(resize_attrs(l)); });
});

}  // namespace kiln
