// Reference roi_align: per box, bin and channel, the mean of the bin's bilinear samples, with the
// sample positions and weights from torchvision's float32 arithmetic (kernels/roi_align_sample.h)
// and the sums in double. A box whose batch index is outside [0, N) gives zeros (torchvision reads
// out of bounds there).
#include <algorithm>
#include <vector>

#include "ir/ops/roi_align.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"
#include "kernels/roi_align_sample.h"

namespace kiln {
namespace {

class RefRoiAlign final : public Kernel {
 public:
  explicit RefRoiAlign(RoiAlignAttrs a) : a_(a) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView& x = in[0];
    const TensorView& rois = in[1];
    const TensorView& y = out[0];
    const int64_t batch = x.dims[0], channels = x.dims[1], h = x.dims[2], w = x.dims[3];
    const int64_t boxes = rois.dims[0], ph = a_.pooled_height, pw = a_.pooled_width;
    const float scale = static_cast<float>(a_.spatial_scale);
    std::vector<double> bin(static_cast<size_t>(channels));
    for (int64_t k = 0; k < boxes; ++k) {
      // Exact: rois hold float32, float16 or bfloat16 values.
      auto r = [&](int64_t j) { return static_cast<float>(load_element(rois, k * 5 + j)); };
      const int64_t n = static_cast<int64_t>(r(0));
      const RoiAlignBox b =
          roi_align_box(r(1), r(2), r(3), r(4), scale, ph, pw, a_.sampling_ratio, a_.aligned);
      for (int64_t i = 0; i < ph; ++i) {
        for (int64_t j = 0; j < pw; ++j) {
          std::fill(bin.begin(), bin.end(), 0.0);
          for (int64_t sy = 0; n >= 0 && n < batch && sy < b.grid_h; ++sy) {
            const float yy = roi_align_coordinate(b.start_y, b.bin_h, i, sy, b.grid_h);
            for (int64_t sx = 0; sx < b.grid_w; ++sx) {
              const float xx = roi_align_coordinate(b.start_x, b.bin_w, j, sx, b.grid_w);
              RoiAlignTaps t;
              if (!roi_align_taps(yy, xx, h, w, &t)) continue;
              for (int64_t c = 0; c < channels; ++c) {
                const int64_t plane = (n * channels + c) * h * w;
                for (int q = 0; q < 4; ++q)
                  bin[static_cast<size_t>(c)] += double{t.weight[q]} * load_element(x, plane + t.offset[q]);
              }
            }
          }
          for (int64_t c = 0; c < channels; ++c)
            store_element(y, ((k * channels + c) * ph + i) * pw + j, bin[static_cast<size_t>(c)] / b.count);
        }
      }
    }
  }
  std::string name() const override { return "ref_roi_align"; }

 private:
  RoiAlignAttrs a_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("roi_align", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefRoiAlign>(roi_align_attrs(l)); });
});

}  // namespace kiln
