// The __nv_bfloat16 depthwise kernels (a translation unit per dtype: see depthwise_convolution_kernels.cuh).
#include "kernels/cuda/depthwise_convolution_kernels.cuh"

namespace kiln::depthwise_detail {

template void launch_typed<__nv_bfloat16>(const DepthwiseParams&, const void*, const void*, const void*,
                                          const void*, void*, cudaStream_t);

}  // namespace kiln::depthwise_detail
