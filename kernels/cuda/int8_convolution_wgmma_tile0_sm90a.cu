// INT8 convolution wgmma tile 0 (128x128, two warpgroups, two blocks an SM): int8_convolution_wgmma.cuh's
// kernel for this tile, a translation unit of its own so that the tiles compile in parallel.
#include "kernels/cuda/int8_convolution_wgmma.cuh"

namespace kiln {
namespace int8conv {

template void launch_wgmma_tile<128, 128, 2>(const DeviceParams&, DataType, bool, cudaStream_t);

}  // namespace int8conv
}  // namespace kiln
