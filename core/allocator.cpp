#include "core/allocator.h"

#include "kernels/device.h"

namespace kiln {
namespace {

class CudaMallocAllocator final : public DeviceAllocator {
 public:
  void* allocate(size_t bytes) override { return device_alloc(bytes); }
  void deallocate(void* p) noexcept override { device_free(p); }
};

}  // namespace

std::shared_ptr<DeviceAllocator> default_device_allocator() {
  static std::shared_ptr<DeviceAllocator> a = std::make_shared<CudaMallocAllocator>();
  return a;
}

}  // namespace kiln
