// INT8 convolution tile 4 (128x128, warps of 64x64): int8_convolution_mma.cuh's kernel for
// this tile, a translation unit of its own so that the tiles compile in parallel.
#include "kernels/cuda/int8_convolution_mma.cuh"

namespace kiln {
namespace int8conv {

template void launch_mma_tile<128, 128, 64, 64>(const DeviceParams&, DataType, bool, cudaStream_t);

}  // namespace int8conv
}  // namespace kiln
