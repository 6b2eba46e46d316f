// Registration functions of the core op set; op_schema.cpp calls each once, in this order.
#pragma once

namespace kiln {

void register_identity_schema();
void register_matmul_schema();
void register_elementwise_schema();
void register_activation_schema();
void register_unary_schema();
void register_reduce_schema();
void register_normalization_schema();

}  // namespace kiln
