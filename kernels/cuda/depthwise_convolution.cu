// Depthwise convolution: which variants run which shapes, and the dtype dispatch. The kernels are
// in depthwise_convolution_kernels.cuh, instantiated per dtype by depthwise_convolution_float.cu,
// _half.cu and _bfloat16.cu.
#include "kernels/cuda/depthwise_convolution.h"

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dtype_traits.cuh"

namespace kiln {

std::string depthwise_refusal(const DepthwiseParams& p) {
  if (p.variant < 0 || p.variant >= kDepthwiseVariants) return "no such variant";
  if (p.variant == 0) return "";
  const bool filter = depthwise_detail::square_undilated(p) && (p.kh == 3 || p.kh == 5 || p.kh == 7);
  if (p.channels_last && filter && (p.variant == 1 || (p.stride_h == p.stride_w && p.stride_h <= 2)))
    return "";
  return p.variant == 1 ? "needs channels last and a square 3x3, 5x5 or 7x7 filter without dilation"
                        : "needs channels last, a square 3x3, 5x5 or 7x7 filter without dilation and stride "
                          "1 or 2 in both dims";
}

void launch_depthwise_convolution(const DepthwiseParams& p, DataType dtype, const void* x, const void* w,
                                  const void* bias, const void* residual, void* y, cudaStream_t stream) {
  const std::string refusal = depthwise_refusal(p);
  KILN_CHECK(refusal.empty(), "depthwise convolution variant " << p.variant << " " << refusal);
  if (p.n == 0 || p.c == 0 || p.oh == 0 || p.ow == 0) return;
  KILN_CHECK(sizeof(float) * p.kh * p.kw <= depthwise_detail::kMaxSmem,
             "depthwise convolution: a " << p.kh << "x" << p.kw << " kernel is too large");
  dispatch_floating(dtype, "depthwise convolution", [&](auto tag) {
    depthwise_detail::launch_typed<decltype(tag)>(p, x, w, bias, residual, y, stream);
  });
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln
