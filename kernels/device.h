// What CUDA devices this process can see. Safe to call where no GPU or driver exists.
#pragma once

namespace kiln {

int cuda_device_count();                // 0 when there is no usable GPU
int cuda_device_arch(int device = -1);  // compute capability as major*10+minor; -1: current
int current_device();                   // cudaGetDevice
int cuda_runtime_version();             // the CUDA runtime Kiln was built against
int cublaslt_version();                 // likewise cuBLASLt
int cudnn_version();                    // likewise cuDNN

}  // namespace kiln

#include <cstddef>

namespace kiln {

// Thin wrappers so core/ needs no CUDA header. All throw kiln::Error on failure.
void* device_alloc(size_t bytes);  // nullptr for 0 bytes
void device_free(void* p) noexcept;
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_device_async(void* dst, const void* src, size_t bytes, void* stream);
void synchronize_stream(void* stream);
void* create_cublaslt_handle();
void destroy_cublaslt_handle(void* handle) noexcept;
void* create_cudnn_handle();
void destroy_cudnn_handle(void* handle) noexcept;
int cudnn_runtime_version();  // the cuDNN library loaded at run time
// CUDA events for timing (profiling mode of ExecutionContext).
void* create_event();
void destroy_event(void* event) noexcept;
void record_event(void* event, void* stream);
// Milliseconds between two recorded events; waits for `end` to complete.
double event_elapsed_ms(void* start, void* end);

// Makes `device` current for the guard's lifetime and restores the caller's device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace kiln
