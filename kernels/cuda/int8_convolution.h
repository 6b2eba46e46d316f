// Kiln's INT8 convolution: an implicit GEMM on the int8 tensor cores (int32 accumulation), with
// mma.sync m16n8k32 (int8_convolution_mma.cuh) and on sm_90 Hopper's wgmma (int8_convolution_sm90a.cu;
// both share int8_convolution_tile.cuh), for 2d convolutions whose input and weight were
// quantized by the builder (quantize_int8_layers): x int8 channels last [N, H, W, C], weight
// int8 [K, R, S, C], one float scale per output channel (alpha[k] = input scale x weight scale
// of channel k) and a float bias, and the convolution epilogue fused: y = act(alpha[k] * acc + bias[k] +
// residual) (a fully connected layer's order: act(alpha[k] * acc + bias[k]) + residual), written as float16,
// bfloat16 or float32 channels last [N, P, Q, K].
//
// The GEMM: M = N * P * Q output pixels, N = K output channels, K = R * S * C taps; A (the input
// patches) is gathered from x on the fly, 16 channels (16 bytes) at a time, so C must be a
// multiple of 16; padding taps are zero-filled by the copies. Tiles stream through shared memory in
// a multi-stage cp.async pipeline; the mma.sync kernel takes fragments out of it with ldmatrix
// (16-byte chunks swizzled so an ldmatrix phase reads 8 distinct bank groups), the wgmma kernel
// reads the same tiles through shared-memory descriptors.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "ir/dtype.h"
#include "kernels/cuda/activation_math.cuh"
#include "kernels/cuda/conv_window.h"
#include "kernels/kernel.h"

namespace kiln {

struct Int8ConvParams : ConvWindow2d {
  int n = 0, h = 0, w = 0, c = 0;  // x [N, H, W, C]
  int k = 0, r = 0, s = 0;         // weight [K, R, S, C]
  int p = 0, q = 0;                // y [N, P, Q, K]
  ActivationParams act{};
  bool activate = false;
  // The residual is added after the activation (a fully connected layer: act(x W^T + b) + r)
  // rather than before it (a convolution: act(conv + b + r)).
  bool residual_after_activation = false;
  // > 0: the residual is int8 and adds residual * residual_scale (calibrated builds).
  float residual_scale = 0.f;
  // An int8 y (out = kInt8): the value rounded to `rounding` (float32/float16/bfloat16), then
  // clamp(nearbyint(v * out_inv_scale), out_min, out_max).
  DataType rounding = DataType::kFloat32;
  float out_inv_scale = 1.f;
  int out_min = -128, out_max = 127;
};

// The tile configurations (the convolution's INT8 tactics, timed by the builder): the first
// kInt8ConvMmaTiles run mma.sync (sm_80 and newer), the next kInt8ConvWgmmaTiles Hopper's
// warpgroup MMA (wgmma, sm_90 only: int8_convolution_sm90a.cu); -1 picks an mma.sync tile by the
// number of tiles the shape gives.
constexpr int kInt8ConvMmaTiles = 5;
constexpr int kInt8ConvWgmmaTiles = 4;
constexpr int kInt8ConvTiles = kInt8ConvMmaTiles + kInt8ConvWgmmaTiles;

// Why `p` cannot run (a sentence naming what the kernel needs), or empty when it can.
std::string int8_convolution_refusal(const Int8ConvParams& p);

// Why tile `tile` cannot run on the current CUDA device (a wgmma tile off an sm_90 GPU, or in a
// build without sm_90a), or empty when it can.
std::string int8_tile_refusal(int tile);

// x, weight int8; scale_bias float [2, K] (the per-channel scales, then the bias); residual
// [N, P, Q, K] of `out` dtype (p.rounding's when out is int8) or null; y of `out` dtype (float32,
// float16, bfloat16, or int8: requantized); y8 null, or with a float y its int8 copy (y rounded to
// `out` and requantized as an int8 y would be). The caller checks int8_convolution_refusal(p)
// first (the layer's kernel does, naming the layer).
void launch_int8_convolution(const Int8ConvParams& p, int tile, DataType out, const void* x,
                             const void* weight, const float* scale_bias, const void* residual, void* y,
                             void* y8, cudaStream_t stream);

// The CUDA kernel of a quantized convolution layer (conv_quantized): channels last, 2d, groups 1;
// its tactics are the tiles. convolution.cu's registration hands such layers here.
std::unique_ptr<Kernel> make_int8_convolution(const Layer& layer);

// The CUDA kernel of a quantized fully_connected layer: the same kernel as a 1x1 convolution over
// the rows, x [..., K] read as [1, 1, rows, K] and weight [N, K] as [N, 1, 1, K] (K a multiple of
// 16, N even); tactics as the convolution's. matmul.cpp's registration hands such layers here.
std::unique_ptr<Kernel> make_int8_fully_connected(const Layer& layer);

}  // namespace kiln
