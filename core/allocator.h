// DeviceAllocator: where an engine's device memory comes from (weights, activation arena,
// workspace, staging buffers). The default is cudaMalloc/cudaFree. libkiln_runtime installs one
// over torch's CUDA caching allocator, so Kiln's memory shows in torch.cuda.memory_allocated()
// and shares torch's pool. An allocator must outlive every engine and context using it (they
// hold a shared_ptr).
#pragma once

#include <cstddef>
#include <memory>

namespace kiln {

class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  // Device memory on the current device, aligned to at least 256 bytes; nullptr for 0 bytes.
  // Throws kiln::Error when out of memory.
  virtual void* allocate(size_t bytes) = 0;
  // Frees memory from allocate(). Engines and contexts free at destruction, possibly right after
  // an enqueue: an implementation that recycles memory at once (a caching allocator) must wait
  // for the device first, as cudaFree does implicitly.
  virtual void deallocate(void* p) noexcept = 0;
};

// cudaMalloc / cudaFree (kernels/device.h).
std::shared_ptr<DeviceAllocator> default_device_allocator();

}  // namespace kiln
