// Registration of every built-in kernel, one function per op and backend
// (kernels/reference/<op>.cpp, kernels/cuda/<op>.cu), called once by the kernel registry.
#pragma once

namespace kiln {

void register_reference_kernels();
void register_cuda_kernels();

void register_identity_reference_kernel();
void register_matmul_reference_kernel();
void register_elementwise_reference_kernel();
void register_activation_reference_kernel();
void register_unary_reference_kernel();
void register_attention_reference_kernel();
void register_cast_reference_kernel();
void register_where_reference_kernel();
void register_generate_reference_kernel();
void register_resize_reference_kernel();
void register_indexing_reference_kernel();
void register_convolution_reference_kernel();
void register_pooling_reference_kernel();
void register_shape_reference_kernel();
void register_reduce_reference_kernel();
void register_normalization_reference_kernel();
void register_fused_pointwise_reference_kernel();

void register_identity_cuda_kernel();
void register_matmul_cuda_kernel();
void register_elementwise_cuda_kernel();
void register_activation_cuda_kernel();
void register_unary_cuda_kernel();
void register_attention_cuda_kernel();
void register_cast_cuda_kernel();
void register_where_cuda_kernel();
void register_generate_cuda_kernel();
void register_resize_cuda_kernel();
void register_indexing_cuda_kernel();
void register_convolution_cuda_kernel();
void register_pooling_cuda_kernel();
void register_shape_cuda_kernel();
void register_reduce_cuda_kernel();
void register_normalization_cuda_kernel();
void register_fused_pointwise_cuda_kernel();

}  // namespace kiln
