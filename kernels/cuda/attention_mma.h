// The tensor-core flash-attention kernel (attention_mma.cu) behind the attention layer's CUDA
// kernel (attention.cu), sm_80+: float16/bfloat16 with head size D = Dv in {32, 64, 80, 96, 128}, float32
// (3xTF32, FP32-accurate) with D = Dv in {32, 64}.
// Inputs and output are addressed through base pointers and element strides (batch, head,
// sequence; the head dim is contiguous), so dense [B..., H, S, D] tensors, [B, S, H, D] layouts and
// views into a packed qkv tensor all take the same kernel. `batch` is the flattened B... .
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ir/dims.h"
#include "ir/dtype.h"

namespace kiln {

struct MmaAttentionParams {
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  void* o = nullptr;
  // Element strides of dims (batch, head, sequence).
  int64_t q_strides[3] = {}, k_strides[3] = {}, v_strides[3] = {}, o_strides[3] = {};
  int64_t batch = 0, hq = 0, hkv = 0, sq = 0, sk = 0;
  // Optional mask, broadcast to [B..., Hq, Sq, Sk]: mask_kind 0 none, 1 bool (uint8, nonzero =
  // attend), 2 additive in q's dtype. The flattened (batch * hq + head) index is decomposed over
  // mask_lead_dims ([B..., Hq]); strides are mask element strides, 0 where broadcast.
  const void* mask = nullptr;
  int mask_kind = 0;
  int mask_lead_rank = 0;
  int64_t mask_lead_dims[kMaxRank] = {};
  int64_t mask_lead_strides[kMaxRank] = {};
  int64_t mask_sq_stride = 0, mask_sk_stride = 0;
  float scale = 1.f;  // applied to q @ k^T
  bool causal = false;
  // > 0: o is float8 e4m3, each output value (rounded to the input dtype) times this, saturating;
  // o's strides then count bytes. float16/bfloat16 only.
  float o_inv_scale = 0.f;
};

// Whether the kernel takes this problem: sm_80+, float16/bfloat16 with d == dv in {32, 64, 80, 96, 128} or
// float32 with d == dv in {32, 64}, 16-byte aligned base pointers, every q/k/v/o stride a multiple
// of 16 bytes (whole 16-byte vectors),
// and a mask (if any) with key stride 0 or 1.
bool mma_attention_supports(const MmaAttentionParams& p, DataType dtype, int64_t d, int64_t dv, int arch);

// Launches it on `stream` (the caller has checked mma_attention_supports; empty problems return).
void launch_mma_attention(const MmaAttentionParams& p, DataType dtype, int64_t d, cudaStream_t stream);

}  // namespace kiln
