// Reference grid_sample: per output position, the pixel coordinates come from torch's float32
// arithmetic (kernels/grid_sample_index.h), so that the same pixels are read; the interpolation
// weights and sums are in double. The taps of one position are found once and applied to every
// channel.
#include <vector>

#include "ir/ops/grid_sample.h"
#include "kernels/grid_sample_index.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

// One input pixel a sample reads (offset in the H_in x W_in plane; -1: outside, reads 0) and its
// weight.
struct Tap {
  int64_t offset;
  double weight;
};

class RefGridSample final : public Kernel {
 public:
  explicit RefGridSample(GridSampleAttrs a) : a_(a) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext&) const override {
    const TensorView& x = in[0];
    const TensorView& grid = in[1];
    const TensorView& y = out[0];
    const int64_t batch = x.dims[0], channels = x.dims[1], h_in = x.dims[2], w_in = x.dims[3];
    const int64_t h_out = y.dims[2], w_out = y.dims[3];
    const int64_t in_plane = h_in * w_in, out_plane = h_out * w_out;
    std::vector<Tap> taps;
    for (int64_t n = 0; n < batch; ++n) {
      for (int64_t p = 0; p < out_plane; ++p) {
        const int64_t g = (n * out_plane + p) * 2;
        // Exact: the grid holds float32, float16 or bfloat16 values.
        const float gx = static_cast<float>(load_element(grid, g));
        const float gy = static_cast<float>(load_element(grid, g + 1));
        taps_of(gx, gy, h_in, w_in, &taps);
        for (int64_t c = 0; c < channels; ++c) {
          const int64_t plane = (n * channels + c) * in_plane;
          double acc = 0;
          if (a_.mode == GridSampleMode::kNearest) {  // a copy, as torch's (keeps -0 and NaN)
            acc = taps.empty() ? 0.0 : load_element(x, plane + taps[0].offset);
          } else {
            for (const Tap& t : taps)
              acc += t.weight * (t.offset < 0 ? 0.0 : load_element(x, plane + t.offset));
          }
          store_element(y, (n * channels + c) * out_plane + p, acc);
        }
      }
    }
  }
  std::string name() const override { return "ref_grid_sample"; }

 private:
  // The taps of the sample at normalized (gx, gy). Bilinear and nearest list the pixels inside
  // the image only (torch adds nothing for the others); bicubic lists all 16, those outside with
  // offset -1, since torch multiplies their 0 by the weight (a NaN weight then gives NaN).
  void taps_of(float gx, float gy, int64_t h_in, int64_t w_in, std::vector<Tap>* taps) const {
    taps->clear();
    const bool ac = a_.align_corners;
    auto inside = [&](int64_t iy, int64_t ix) { return iy >= 0 && iy < h_in && ix >= 0 && ix < w_in; };
    if (a_.mode == GridSampleMode::kBicubic) {
      const float ix = grid_sample_unnormalize(gx, w_in, ac), iy = grid_sample_unnormalize(gy, h_in, ac);
      const float x0 = floorf(ix), y0 = floorf(iy);
      double wx[4], wy[4];
      grid_sample_cubic_weights<double>(static_cast<double>(ix) - x0, wx);
      grid_sample_cubic_weights<double>(static_cast<double>(iy) - y0, wy);
      for (int i = 0; i < 4; ++i) {
        const int64_t r = grid_sample_tap(y0, i, h_in, a_.padding, ac);
        for (int j = 0; j < 4; ++j) {
          const int64_t q = grid_sample_tap(x0, j, w_in, a_.padding, ac);
          taps->push_back({r < 0 || q < 0 ? -1 : r * w_in + q, wy[i] * wx[j]});
        }
      }
      return;
    }
    const float ix = grid_sample_source(gx, w_in, a_.padding, ac);
    const float iy = grid_sample_source(gy, h_in, a_.padding, ac);
    if (a_.mode == GridSampleMode::kNearest) {
      // rint rounds half to even in the default rounding mode, as torch's nearbyint.
      const int64_t qx = static_cast<int64_t>(rintf(ix)), qy = static_cast<int64_t>(rintf(iy));
      if (inside(qy, qx)) taps->push_back({qy * w_in + qx, 1.0});
      return;
    }
    const int64_t x0 = static_cast<int64_t>(floorf(ix)), y0 = static_cast<int64_t>(floorf(iy));
    const double fx = static_cast<double>(ix) - static_cast<double>(x0);
    const double fy = static_cast<double>(iy) - static_cast<double>(y0);
    for (int dy = 0; dy < 2; ++dy) {
      for (int dx = 0; dx < 2; ++dx) {
        if (!inside(y0 + dy, x0 + dx)) continue;
        taps->push_back({(y0 + dy) * w_in + x0 + dx, (dy ? fy : 1 - fy) * (dx ? fx : 1 - fx)});
      }
    }
  }

  GridSampleAttrs a_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("grid_sample", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<RefGridSample>(grid_sample_attrs(l)); });
});

}  // namespace kiln
