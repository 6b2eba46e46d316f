// resize: one thread per output element (grid-stride). Source indices and linear weights are
// computed per element with the same float32 arithmetic as the reference backend
// (kernels/resize_index.h); interpolation runs in float, outer spatial dim outermost, as torch's
// CPU kernels nest it.
#include "ir/ops/resize.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"
#include "kernels/kernel.h"
#include "kernels/resize_index.h"

namespace kiln {
namespace {

struct ResizeGeometry {
  int64_t in[3], out[3];  // spatial sizes
  float ratio[3];         // output -> input coordinate ratio per spatial dim
  int64_t in_plane, out_plane;
  int mode;
  bool align_corners;
};

// Linear interpolation over spatial dims d..D-1 of `src` (which already points at the slab
// selected by the outer dims): weights of the outer dim multiply the inner results.
template <typename T, int D, int d>
__device__ __forceinline__ float lerp(const T* src, const LinearTap* taps, const ResizeGeometry& g) {
  if constexpr (d == D - 1) {
    return to_float(src[taps[d].i0]) * taps[d].w0 + to_float(src[taps[d].i1]) * taps[d].w1;
  } else {
    int64_t stride = 1;
    for (int e = d + 1; e < D; ++e) stride *= g.in[e];
    return lerp<T, D, d + 1>(src + taps[d].i0 * stride, taps, g) * taps[d].w0 +
           lerp<T, D, d + 1>(src + taps[d].i1 * stride, taps, g) * taps[d].w1;
  }
}

template <typename T, int D>
__global__ void resize_kernel(const T* __restrict__ x, T* __restrict__ y, ResizeGeometry g, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t rem = i;
    int64_t pos[D];
    for (int d = D - 1; d >= 0; --d) {
      pos[d] = rem % g.out[d];
      rem /= g.out[d];
    }
    const T* src = x + rem * g.in_plane;  // rem is now the (n, c) plane
    if (g.mode == static_cast<int>(ResizeMode::kLinear)) {
      LinearTap taps[D];
      for (int d = 0; d < D; ++d)
        taps[d] = linear_source(g.ratio[d], pos[d], g.in[d], g.out[d], g.align_corners);
      y[i] = from_float<T>(lerp<T, D, 0>(src, taps, g));
    } else {
      int64_t offset = 0;
      for (int d = 0; d < D; ++d) {
        int64_t s = g.mode == static_cast<int>(ResizeMode::kNearest)
                        ? nearest_source(g.ratio[d], pos[d], g.in[d])
                        : nearest_exact_source(g.ratio[d], pos[d], g.in[d]);
        offset = offset * g.in[d] + s;
      }
      y[i] = src[offset];
    }
  }
}

class CudaResize final : public Kernel {
 public:
  explicit CudaResize(ResizeAttrs a) : a_(std::move(a)) {}

  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    const TensorView& x = in[0];
    const TensorView& y = out[0];
    const int64_t n = volume(y.dims);
    if (n == 0) return;
    const int spatial = static_cast<int>(x.dims.size()) - 2;
    ResizeGeometry g{};
    g.in_plane = g.out_plane = 1;
    for (int d = 0; d < spatial; ++d) {
      g.in[d] = x.dims[2 + d];
      g.out[d] = y.dims[2 + d];
      g.ratio[d] = resize_ratio(g.in[d], g.out[d], a_.align_corners, a_.scales.empty() ? 0.0 : a_.scales[d]);
      g.in_plane *= g.in[d];
      g.out_plane *= g.out[d];
    }
    g.mode = static_cast<int>(a_.mode);
    g.align_corners = a_.align_corners;
    constexpr int kBlock = 256;
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    dispatch_floating(x.dtype, "resize", [&](auto tag) {
      using T = decltype(tag);
      const T* src = static_cast<const T*>(x.data);
      T* dst = static_cast<T*>(y.data);
      switch (spatial) {
        case 1:
          resize_kernel<T, 1><<<grid_for(n, kBlock), kBlock, 0, stream>>>(src, dst, g, n);
          break;
        case 2:
          resize_kernel<T, 2><<<grid_for(n, kBlock), kBlock, 0, stream>>>(src, dst, g, n);
          break;
        default:
          resize_kernel<T, 3><<<grid_for(n, kBlock), kBlock, 0, stream>>>(src, dst, g, n);
      }
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
  std::string name() const override { return "cuda_resize"; }

 private:
  ResizeAttrs a_;
};

}  // namespace

// Registered when the library loads; no central list names this file.
const KernelRegistration kRegistered([] {
  register_kernel("resize", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<CudaResize>(resize_attrs(l)); });
});

}  // namespace kiln
