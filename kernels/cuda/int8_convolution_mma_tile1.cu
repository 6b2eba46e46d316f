// INT8 convolution tile 1 (128x64, warps of 64x32): int8_convolution_mma.cuh's kernel for
// this tile, a translation unit of its own so that the tiles compile in parallel.
#include "kernels/cuda/int8_convolution_mma.cuh"

namespace kiln {
namespace int8conv {

template void launch_mma_tile<128, 64, 64, 32>(const DeviceParams&, DataType, bool, cudaStream_t);

}  // namespace int8conv
}  // namespace kiln
