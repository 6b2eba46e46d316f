// Registration functions of the core op set; op_schema.cpp calls each once, in this order.
#pragma once

namespace kiln {

void register_identity_schema();
void register_matmul_schema();
void register_elementwise_schema();
void register_activation_schema();
void register_unary_schema();
void register_attention_schema();
void register_cast_schema();
void register_where_schema();
void register_generate_schema();
void register_resize_schema();
void register_indexing_schema();
void register_convolution_schema();
void register_pooling_schema();
void register_shape_schema();
void register_reduce_schema();
void register_normalization_schema();
void register_fused_pointwise_schema();

}  // namespace kiln
