// grid_sample: one thread per output element (grid-stride), n-c-h-w order so that neighbouring
// threads read neighbouring grid points. Pixel coordinates come from the float32 arithmetic the
// reference backend uses (kernels/grid_sample_index.h); interpolation runs in float.
#include "ir/ops/grid_sample.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/grid_sample_index.h"
#include "kernels/kernel.h"

namespace kiln {
namespace {

struct GridSampleGeometry {
  int64_t channels, h_in, w_in, h_out, w_out;
  GridSampleMode mode;
  GridSamplePadding padding;
  bool align_corners;
};

template <typename T>
__device__ float bilinear(const T* plane, float gx, float gy, const GridSampleGeometry& g) {
  const float ix = grid_sample_source(gx, g.w_in, g.padding, g.align_corners);
  const float iy = grid_sample_source(gy, g.h_in, g.padding, g.align_corners);
  const float fx0 = floorf(ix), fy0 = floorf(iy);
  const int64_t x0 = static_cast<int64_t>(fx0), y0 = static_cast<int64_t>(fy0);
  const float fx = ix - fx0, fy = iy - fy0;
  // Only the corners inside the image contribute, as in torch (an outside corner's weight is not
  // multiplied by anything).
  float acc = 0.f;
  for (int dy = 0; dy < 2; ++dy) {
    for (int dx = 0; dx < 2; ++dx) {
      const int64_t yy = y0 + dy, xx = x0 + dx;
      if (yy < 0 || yy >= g.h_in || xx < 0 || xx >= g.w_in) continue;
      acc += to_float(plane[yy * g.w_in + xx]) * ((dy ? fy : 1.f - fy) * (dx ? fx : 1.f - fx));
    }
  }
  return acc;
}

template <typename T>
__device__ float bicubic(const T* plane, float gx, float gy, const GridSampleGeometry& g) {
  const float ix = grid_sample_unnormalize(gx, g.w_in, g.align_corners);
  const float iy = grid_sample_unnormalize(gy, g.h_in, g.align_corners);
  const float x0 = floorf(ix), y0 = floorf(iy);
  float wx[4], wy[4];
  grid_sample_cubic_weights<float>(ix - x0, wx);
  grid_sample_cubic_weights<float>(iy - y0, wy);
  int64_t cols[4];
  for (int j = 0; j < 4; ++j) cols[j] = grid_sample_tap(x0, j, g.w_in, g.padding, g.align_corners);
  float acc = 0.f;
  for (int i = 0; i < 4; ++i) {
    const int64_t r = grid_sample_tap(y0, i, g.h_in, g.padding, g.align_corners);
    float row = 0.f;
    // A tap outside the image reads 0 and is still weighted, as in torch.
    for (int j = 0; j < 4; ++j)
      row += (r < 0 || cols[j] < 0 ? 0.f : to_float(plane[r * g.w_in + cols[j]])) * wx[j];
    acc += row * wy[i];
  }
  return acc;
}

template <typename T>
__global__ void grid_sample_kernel(const T* __restrict__ x, const T* __restrict__ grid, T* __restrict__ y,
                                   GridSampleGeometry g, int64_t n) {
  const int64_t out_plane = g.h_out * g.w_out;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t p = i % out_plane;  // h * w_out + w
    const int64_t nc = i / out_plane;
    const int64_t b = nc / g.channels;
    const T* point = grid + (b * out_plane + p) * 2;
    const float gx = to_float(point[0]), gy = to_float(point[1]);
    const T* plane = x + nc * g.h_in * g.w_in;
    if (g.mode == GridSampleMode::kNearest) {
      const float ix = grid_sample_source(gx, g.w_in, g.padding, g.align_corners);
      const float iy = grid_sample_source(gy, g.h_in, g.padding, g.align_corners);
      // rintf rounds half to even, as torch's nearbyint; the pixel is copied (-0 and NaN kept).
      const int64_t qx = static_cast<int64_t>(rintf(ix)), qy = static_cast<int64_t>(rintf(iy));
      const bool inside = qy >= 0 && qy < g.h_in && qx >= 0 && qx < g.w_in;
      y[i] = inside ? plane[qy * g.w_in + qx] : from_float<T>(0.f);
    } else if (g.mode == GridSampleMode::kBilinear) {
      y[i] = from_float<T>(bilinear(plane, gx, gy, g));
    } else {
      y[i] = from_float<T>(bicubic(plane, gx, gy, g));
    }
  }
}

class CudaGridSample final : public Kernel {
 public:
  explicit CudaGridSample(GridSampleAttrs a) : a_(a) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView& x = in[0];
    const TensorView& grid = in[1];
    const TensorView& y = out[0];
    const int64_t n = volume(y.dims);
    if (n == 0) return;
    GridSampleGeometry g{};
    g.channels = x.dims[1];
    g.h_in = x.dims[2];
    g.w_in = x.dims[3];
    g.h_out = y.dims[2];
    g.w_out = y.dims[3];
    g.mode = a_.mode;
    g.padding = a_.padding;
    g.align_corners = a_.align_corners;
    constexpr int kBlock = 256;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    dispatch_floating(x.dtype, "grid_sample", [&](auto tag) {
      using T = decltype(tag);
      grid_sample_kernel<T><<<grid_for(n, kBlock), kBlock, 0, stream>>>(
          static_cast<const T*>(x.data), static_cast<const T*>(grid.data), static_cast<T*>(y.data), g, n);
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_grid_sample"; }

 private:
  GridSampleAttrs a_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("grid_sample", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaGridSample>(grid_sample_attrs(l)); });
});

}  // namespace kiln
