#include "kernels/device.h"

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "kernels/cuda/cuda_check.h"

namespace kiln {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

int cuda_device_arch(int device) {
  if (device < 0) KILN_CUDA_CHECK(cudaGetDevice(&device));
  int major = 0, minor = 0;
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major * 10 + minor;
}

int current_device() {
  int d = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

int cuda_runtime_version() { return CUDART_VERSION; }
int cublaslt_version() { return CUBLAS_VERSION; }
int cudnn_version() { return CUDNN_VERSION; }

}  // namespace kiln

namespace kiln {

void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  KILN_CHECK(err == cudaSuccess, "cudaMalloc of " << bytes << " bytes failed: " << cudaGetErrorString(err)
                                                  << "; free GPU memory or lower the profile's max shapes");
  return p;
}

void device_free(void* p) noexcept {
  if (p) cudaFree(p);
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) KILN_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) KILN_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void copy_device_async(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes) {
    KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)));
  }
}

void synchronize_stream(void* stream) {
  KILN_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

void* create_cublaslt_handle() {
  cublasLtHandle_t h = nullptr;
  KILN_CUBLAS_CHECK(cublasLtCreate(&h));
  return h;
}

void destroy_cublaslt_handle(void* handle) noexcept {
  if (handle) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle));
}

void* create_cudnn_handle() {
  cudnnHandle_t h = nullptr;
  KILN_CUDNN_CHECK(cudnnCreate(&h));
  return h;
}

void destroy_cudnn_handle(void* handle) noexcept {
  if (handle) cudnnDestroy(static_cast<cudnnHandle_t>(handle));
}

int cudnn_runtime_version() { return static_cast<int>(cudnnGetVersion()); }

void* create_event() {
  cudaEvent_t ev = nullptr;
  KILN_CUDA_CHECK(cudaEventCreate(&ev));
  return ev;
}

void destroy_event(void* event) noexcept {
  if (event) cudaEventDestroy(static_cast<cudaEvent_t>(event));
}

void record_event(void* event, void* stream) {
  KILN_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)));
}

double event_elapsed_ms(void* start, void* end) {
  KILN_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(end)));
  float ms = 0.f;
  KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)));
  return ms;
}

DeviceGuard::DeviceGuard(int device) {
  KILN_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) KILN_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
}

}  // namespace kiln
