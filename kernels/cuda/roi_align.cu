// roi_align: one thread per output element (box, channel, bin row, bin column; grid-stride), the
// bin's bilinear samples summed in float. Sample positions and weights are the reference backend's
// (kernels/roi_align_sample.h). A box whose batch index is outside [0, N) gives zeros.
#include "ir/ops/roi_align.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"
#include "kernels/roi_align_sample.h"

namespace kiln {
namespace {

struct RoiAlignGeometry {
  int64_t batch, channels, h, w, pooled_h, pooled_w, sampling_ratio;
  float scale;
  bool aligned;
};

template <typename T>
__global__ void roi_align_kernel(const T* __restrict__ x, const T* __restrict__ rois, T* __restrict__ y,
                                 RoiAlignGeometry g, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t j = i % g.pooled_w;
    const int64_t row = (i / g.pooled_w) % g.pooled_h;
    const int64_t c = (i / (g.pooled_w * g.pooled_h)) % g.channels;
    const int64_t k = i / (g.pooled_w * g.pooled_h * g.channels);
    const T* r = rois + k * 5;
    const int64_t n = static_cast<int64_t>(to_float(r[0]));
    const RoiAlignBox b = roi_align_box(to_float(r[1]), to_float(r[2]), to_float(r[3]), to_float(r[4]),
                                        g.scale, g.pooled_h, g.pooled_w, g.sampling_ratio, g.aligned);
    float sum = 0.f;
    if (n >= 0 && n < g.batch) {
      const T* plane = x + (n * g.channels + c) * g.h * g.w;
      for (int64_t sy = 0; sy < b.grid_h; ++sy) {
        const float yy = roi_align_coordinate(b.start_y, b.bin_h, row, sy, b.grid_h);
        for (int64_t sx = 0; sx < b.grid_w; ++sx) {
          const float xx = roi_align_coordinate(b.start_x, b.bin_w, j, sx, b.grid_w);
          RoiAlignTaps t;
          if (!roi_align_taps(yy, xx, g.h, g.w, &t)) continue;
          for (int q = 0; q < 4; ++q) sum += t.weight[q] * to_float(plane[t.offset[q]]);
        }
      }
    }
    y[i] = from_float<T>(sum / b.count);
  }
}

class CudaRoiAlign final : public Kernel {
 public:
  explicit CudaRoiAlign(RoiAlignAttrs a) : a_(a) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView& x = in[0];
    const TensorView& rois = in[1];
    const TensorView& y = out[0];
    const int64_t total = volume(y.dims);
    if (total == 0) return;
    RoiAlignGeometry g{};
    g.batch = x.dims[0];
    g.channels = x.dims[1];
    g.h = x.dims[2];
    g.w = x.dims[3];
    g.pooled_h = a_.pooled_height;
    g.pooled_w = a_.pooled_width;
    g.sampling_ratio = a_.sampling_ratio;
    g.scale = static_cast<float>(a_.spatial_scale);
    g.aligned = a_.aligned;
    constexpr int kBlock = 256;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    dispatch_floating(x.dtype, "roi_align", [&](auto tag) {
      using T = decltype(tag);
      roi_align_kernel<T><<<grid_for(total, kBlock), kBlock, 0, stream>>>(
          static_cast<const T*>(x.data), static_cast<const T*>(rois.data), static_cast<T*>(y.data), g, total);
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_roi_align"; }

 private:
  RoiAlignAttrs a_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("roi_align", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaRoiAlign>(roi_align_attrs(l)); });
});

}  // namespace kiln
