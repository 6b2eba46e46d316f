// INT8 convolution tile 3 (64x64, warps of 32x32): int8_convolution_mma.cuh's kernel for
// this tile, a translation unit of its own so that the tiles compile in parallel.
#include "kernels/cuda/int8_convolution_mma.cuh"

namespace kiln {
namespace int8conv {

template void launch_mma_tile<64, 64, 32, 32>(const DeviceParams&, DataType, bool, cudaStream_t);

}  // namespace int8conv
}  // namespace kiln
