// Registration of the converter families (one file each in converters/). Called once by the
// registry; append new families at the end of the list in registry.cpp.
#pragma once

namespace kiln {

void register_activation_converters();
void register_convolution_converters();
void register_elementwise_converters();
void register_matmul_converters();
void register_normalization_converters();
void register_pooling_converters();
void register_reduce_converters();
void register_shape_converters();
void register_unary_converters();
void register_indexing_converters();
void register_cast_converters();
void register_attention_converters();
void register_flatten_converters();
void register_generate_converters();

}  // namespace kiln
