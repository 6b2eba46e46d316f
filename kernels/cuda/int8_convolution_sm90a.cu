// Kiln's INT8 convolution on Hopper's warpgroup MMA (wgmma.mma_async, sm_90a): the tactics
// kInt8ConvMmaTiles.. of a quantized convolution or fully connected layer (int8_convolution.h).
// This file picks the tile; the kernel is int8_convolution_wgmma.cuh, compiled per tile in
// int8_convolution_wgmma_tile{0..3}_sm90a.cu.
#include "ir/error.h"
#include "kernels/cuda/int8_convolution_tile.cuh"

namespace kiln {
namespace int8conv {
namespace {

// Tile t: 0 = 128x128 (two warpgroups, two blocks an SM), 1 = 128x256 (two warpgroups, one
// block), 2 = 64x128 (one warpgroup), 3 = 128x64 (two warpgroups; layers of 64 channels).
void launch_wgmma(const DeviceParams& d, int tile, DataType rounding, bool int8_out, cudaStream_t stream) {
  switch (tile) {
    case 0:
      return launch_wgmma_tile<128, 128, 2>(d, rounding, int8_out, stream);
    case 1:
      return launch_wgmma_tile<128, 256, 1>(d, rounding, int8_out, stream);
    case 2:
      return launch_wgmma_tile<64, 128, 2>(d, rounding, int8_out, stream);
    default:
      return launch_wgmma_tile<128, 64, 2>(d, rounding, int8_out, stream);
  }
}

}  // namespace

bool int8_wgmma_compiled() {
#ifdef KILN_HAS_SM90A
  return true;
#else
  return false;
#endif
}

void launch_int8_wgmma(const DeviceParams& d, int tile, DataType rounding, bool int8_out,
                       cudaStream_t stream) {
  KILN_CHECK(int8_wgmma_compiled(), "INT8 convolution: the wgmma tiles are not in this build");
  KILN_CHECK(tile >= 0 && tile < kInt8ConvWgmmaTiles,
             "INT8 convolution: wgmma tile " << tile << " is out of range");
  launch_wgmma(d, tile, rounding, int8_out, stream);
}

}  // namespace int8conv
}  // namespace kiln
