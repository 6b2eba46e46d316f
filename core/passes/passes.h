// Builder passes. Each rewrites the network in place and returns whether it changed anything;
// each has its own file, header comment and graph-in/graph-out test (tests/cpp/test_passes*.cpp).
#pragma once

#include <set>
#include <string>
#include <vector>

#include "core/builder.h"
#include "core/plan.h"
#include "ir/network.h"

namespace kiln {

// Refuses a network that cannot be built: re-runs validation and shape inference of every layer
// and checks the profiles against the inputs.
void validate_network(Network& net, const std::vector<OptimizationProfile>& profiles);
// Outputs larger than max_bytes (in all) stay computed at run time.
bool fold_constants(Network& net, int64_t max_bytes = kDefaultMaxFoldedConstantBytes);
bool remove_noops(Network& net);
bool eliminate_dead_layers(Network& net);
// Layers with the same op, inputs and attributes -> the first of them (layers in `keep` stay).
bool eliminate_common_subexpressions(Network& net, const std::set<std::string>& keep = {});
// The fusion passes leave the layers named in `keep` alone (layers with a per-layer precision:
// fusing them away would drop the user's setting).
bool fuse_gemm_epilogue(Network& net, const std::set<std::string>& keep = {});
bool fuse_parallel_gemms(Network& net, const std::set<std::string>& keep = {});
bool assign_precision(Network& net, const PrecisionConfig& config);
// Pattern passes (fusion slot): decomposed GELU -> activation, T5-style RMS norm -> rms_norm.
bool fuse_gelu(Network& net);
bool fuse_rms_norm(Network& net);
// Scaled dot-product attention written out (matmul, scale, mask add, softmax, matmul) -> one
// attention layer (ONNX exports). A mask chain it runs on zeros folds up to `max_folded_bytes`
// (the builder's max_folded_constant_bytes).
bool fuse_attention(Network& net, int64_t max_folded_bytes = kDefaultMaxFoldedConstantBytes);
// Connected groups of pointwise layers -> one fused_pointwise layer each.
bool fuse_pointwise(Network& net);
bool fold_batch_norm(Network& net);
bool batch_norm_to_scale_shift(Network& net, const std::set<std::string>& pinned);
// Convolutions with stride == kernel (ViT's patch embedding) -> patch transpose + one GEMM.
bool patchify_convolutions(Network& net);
// Stride-2 convolutions over <= 4 channels with 5x5+ kernels (ResNet's stem) -> the input folded
// 2x2 into 16 channels and a stride-1 convolution with a quarter of the taps.
bool space_to_depth_stems(Network& net);
// Transposes that, through the views before them, read a tensor in its own order -> reshapes;
// with `compose`, transposes of transposes -> one transpose.
bool collapse_transposes(Network& net, bool compose = false);
// matmul on views that flatten other tensors' batch dims (einsum's decomposition) -> matmul on
// those tensors; view chains that end in their start's dims -> the start.
bool unflatten_batched_matmuls(Network& net);
// concat of strided views of one tensor that read it in a permuted order (Swin's patch merging)
// -> reshape, transpose, reshape.
bool concat_views_to_transposes(Network& net);
// A concat read through a transpose that interleaves its inputs (ShuffleNet's channel shuffle) ->
// one concat along a new inner axis (reshapes around it are views): one copy instead of two.
bool fold_channel_shuffles(Network& net);
// activation(views(GEMM or convolution)) -> views(activation(...)), for the epilogue fusions.
bool hoist_activations(Network& net);
bool fuse_conv_epilogue(Network& net);
bool assign_layouts(Network& net);
// reshape/flatten/squeeze/unsqueeze -> views without a copy (alias = 1; see core/plan.h).
bool alias_views(Network& net);
// Attention patterns (fusion slot, after fuse_parallel_gemms): transposes around attention ->
// its "bshd" layout; bshd attention on one fused QKV GEMM -> packed_attention; constant
// all-attend masks dropped.
bool fold_attention_transposes(Network& net);
bool pack_qkv_attention(Network& net);
// Attention whose q, k, v are views (reshape/transpose/select chains) of one fused QKV
// projection -> packed_attention reading it (torch's MultiheadAttention, static shapes).
bool pack_attention_views(Network& net);
bool drop_trivial_attention_masks(Network& net);
// Rotary embeddings' rotate_half (concat of the negated upper and the lower half of the last dim)
// -> a gather in rotated order times a constant sign.
bool rotate_half_to_gather(Network& net);
// Attention whose key and value are repeat_kv copies (unsqueeze, expand, reshape) of fewer heads
// -> grouped-query attention on the uncopied heads.
bool fold_repeat_kv(Network& net);
// FP8 (CUDA sm_89+, after assign_precision): fully_connected whose input is an e4m3
// fake_quantize and whose weight is constant -> quantize (to float8) + FP8 fully_connected.
bool quantize_fp8_gemms(Network& net);
// INT8 (after assign_precision, before assign_layouts): 2d convolutions and fully_connected
// layers whose input is a symmetric per-tensor int8 fake_quantize and whose weight is constant ->
// quantize (to int8) + quantized layer (int8 tensor cores, per-channel scales in the epilogue);
// then a quantized layer read by a quantize writes its int8 tensor itself (unless
// !fold_requantize). Layers named in `pinned` (a per-layer precision) keep their floating point.
bool quantize_int8_layers(Network& net, bool fold_requantize = true,
                          const std::set<std::string>& pinned = {});
// After the FP8 / INT8 passes: a per-tensor quantize reading a layer_norm's or rms_norm's value
// (through views only it reads) becomes the normalization's quantized copy, a second output
// (QuantizedCopy): no quantize kernel reads the value again.
bool fold_quantize_copies(Network& net);
MemoryPlan plan_memory(const Network& net, const std::vector<OptimizationProfile>& profiles);

}  // namespace kiln
