#include "kernels/kernels.h"

namespace kiln {

void register_reference_kernels() {
  register_identity_reference_kernel();
  register_matmul_reference_kernel();
  register_elementwise_reference_kernel();
  register_activation_reference_kernel();
  register_unary_reference_kernel();
  register_attention_reference_kernel();
  register_cast_reference_kernel();
  register_where_reference_kernel();
  register_generate_reference_kernel();
  register_resize_reference_kernel();
  register_indexing_reference_kernel();
  register_convolution_reference_kernel();
  register_pooling_reference_kernel();
  register_shape_reference_kernel();
  register_reduce_reference_kernel();
  register_normalization_reference_kernel();
  register_fused_pointwise_reference_kernel();
}

void register_cuda_kernels() {
  register_identity_cuda_kernel();
  register_matmul_cuda_kernel();
  register_elementwise_cuda_kernel();
  register_activation_cuda_kernel();
  register_unary_cuda_kernel();
  register_attention_cuda_kernel();
  register_cast_cuda_kernel();
  register_where_cuda_kernel();
  register_generate_cuda_kernel();
  register_resize_cuda_kernel();
  register_indexing_cuda_kernel();
  register_convolution_cuda_kernel();
  register_pooling_cuda_kernel();
  register_shape_cuda_kernel();
  register_reduce_cuda_kernel();
  register_normalization_cuda_kernel();
  register_fused_pointwise_cuda_kernel();
}

}  // namespace kiln
