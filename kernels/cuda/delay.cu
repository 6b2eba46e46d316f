// gpu_delay: one thread that spins on the GPU's nanosecond timer. ExecutionContext's profiling
// mode launches it first, so that every layer launch (and the events around it) queue up behind
// it and the per-layer event times measure the GPU alone, not the host's launch gaps.
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/device.h"

namespace kiln {
namespace {

__global__ void delay_kernel(uint64_t ns) {
  uint64_t start = 0, now = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns);
}

}  // namespace

void gpu_delay(double microseconds, void* stream) {
  if (microseconds <= 0) return;
  delay_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<uint64_t>(microseconds * 1000.0));
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln
