#include "kernels/device.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

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

int cuda_driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) v = 0;
  return v;
}

std::string cuda_device_name(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return "";
  return prop.name;
}

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

void fill_device_async(void* dst, int byte, size_t bytes, void* stream) {
  if (bytes) KILN_CUDA_CHECK(cudaMemsetAsync(dst, byte, bytes, static_cast<cudaStream_t>(stream)));
}

void copy_strided_to_host(void* dst, const void* src, size_t element_bytes, size_t stride, size_t count,
                          void* stream) {
  if (count == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const size_t bytes = element_bytes * count;
  if (stride == 1) {
    KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
    KILN_CUDA_CHECK(cudaStreamSynchronize(s));
    return;
  }
  // Gathered on the device first (a pitched copy of one-element rows), then one plain copy: a
  // pitched copy straight to pageable host memory goes row by row.
  DeviceBuffer gathered(bytes);
  KILN_CUDA_CHECK(cudaMemcpy2DAsync(gathered.p, element_bytes, src, element_bytes * stride, element_bytes,
                                    count, cudaMemcpyDeviceToDevice, s));
  KILN_CUDA_CHECK(cudaMemcpyAsync(dst, gathered.p, bytes, cudaMemcpyDeviceToHost, s));
  KILN_CUDA_CHECK(cudaStreamSynchronize(s));
}

namespace {

constexpr size_t kStagingChunk = size_t{8} << 20;

// Two page-locked buffers of kStagingChunk bytes, a stream and an event per buffer, of one device.
struct Staging {
  void* buffer[2] = {nullptr, nullptr};
  cudaEvent_t drained[2] = {nullptr, nullptr};
  cudaStream_t stream = nullptr;
};

// The current device's staging, made on first use and kept for the process (16 MB page-locked),
// so that engine loads and the refits of a training loop reuse it; nullptr when CUDA cannot give
// it (then copies go one by one). Never freed: the CUDA runtime may be gone when static
// destructors run. The caller holds staging_mutex() while using it.
Staging* staging_of_current_device() {
  static std::map<int, Staging*> all;
  const int device = current_device();
  auto it = all.find(device);
  if (it != all.end()) return it->second;
  auto* s = new Staging;
  bool ok = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking) == cudaSuccess;
  for (int k = 0; ok && k < 2; ++k) {
    ok = cudaHostAlloc(&s->buffer[k], kStagingChunk, cudaHostAllocDefault) == cudaSuccess &&
         cudaEventCreateWithFlags(&s->drained[k], cudaEventDisableTiming) == cudaSuccess;
  }
  if (!ok) {
    cudaGetLastError();
    for (int k = 0; k < 2; ++k) {
      if (s->drained[k]) cudaEventDestroy(s->drained[k]);
      if (s->buffer[k]) cudaFreeHost(s->buffer[k]);
    }
    if (s->stream) cudaStreamDestroy(s->stream);
    delete s;
    s = nullptr;
  }
  return all[device] = s;
}

std::mutex& staging_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

void copy_pieces_to_device(const HostPiece* pieces, size_t count) {
  size_t total = 0;
  for (size_t i = 0; i < count; ++i) total += pieces[i].bytes;
  if (total == 0) return;
  std::lock_guard<std::mutex> lock(staging_mutex());
  Staging* s = staging_of_current_device();
  if (!s) {  // no page-locked memory to be had: one synchronous copy per piece
    for (size_t i = 0; i < count; ++i) copy_to_device(pieces[i].dst, pieces[i].src, pieces[i].bytes);
    return;
  }
  // The destination may be memory another stream used before it was freed to the caller.
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  int k = 0;        // the buffer being filled
  size_t used = 0;  // bytes of it filled
  auto next_buffer = [&] {
    KILN_CUDA_CHECK(cudaEventRecord(s->drained[k], s->stream));
    k ^= 1;
    used = 0;
    KILN_CUDA_CHECK(cudaEventSynchronize(s->drained[k]));  // its copies are done
  };
  struct DrainOnError {  // a failed call leaves no copy reading a buffer the next call fills
    cudaStream_t stream;
    ~DrainOnError() { cudaStreamSynchronize(stream); }
  } drain{s->stream};
  for (size_t i = 0; i < count; ++i) {
    const auto* src = static_cast<const uint8_t*>(pieces[i].src);
    auto* dst = static_cast<uint8_t*>(pieces[i].dst);
    size_t left = pieces[i].bytes;
    while (left > 0) {
      if (used == kStagingChunk) next_buffer();
      const size_t n = std::min(left, kStagingChunk - used);
      uint8_t* staged = static_cast<uint8_t*>(s->buffer[k]) + used;
      std::memcpy(staged, src, n);
      KILN_CUDA_CHECK(cudaMemcpyAsync(dst, staged, n, cudaMemcpyHostToDevice, s->stream));
      src += n;
      dst += n;
      left -= n;
      used += n;
    }
  }
  KILN_CUDA_CHECK(cudaStreamSynchronize(s->stream));
}

void synchronize_stream(void* stream) {
  KILN_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

void synchronize_device() { KILN_CUDA_CHECK(cudaDeviceSynchronize()); }

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

void* create_stream() {
  cudaStream_t s = nullptr;
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

void destroy_stream(void* stream) noexcept {
  if (stream) cudaStreamDestroy(static_cast<cudaStream_t>(stream));
}

bool stream_is_capturing(void* stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  cudaError_t err = cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status);
  if (err != cudaSuccess) {
    // The legacy default stream cannot be queried while another stream captures in global mode;
    // treat that as capturing so that the context launches plainly.
    cudaGetLastError();
    return true;
  }
  return status != cudaStreamCaptureStatusNone;
}

void begin_capture(void* stream) {
  KILN_CUDA_CHECK(
      cudaStreamBeginCapture(static_cast<cudaStream_t>(stream), cudaStreamCaptureModeThreadLocal));
}

void* end_capture(void* stream) noexcept {
  cudaGraph_t graph = nullptr;
  cudaError_t err = cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &graph);
  if (err != cudaSuccess) {
    cudaGetLastError();
    if (graph) cudaGraphDestroy(graph);
    return nullptr;
  }
  return graph;
}

void destroy_graph(void* graph) noexcept {
  if (graph) cudaGraphDestroy(static_cast<cudaGraph_t>(graph));
}

void* instantiate_graph(void* graph) {
  cudaGraphExec_t exec = nullptr;
  KILN_CUDA_CHECK(cudaGraphInstantiate(&exec, static_cast<cudaGraph_t>(graph), 0));
  return exec;
}

bool update_graph_exec(void* exec, void* graph) noexcept {
  cudaGraphExecUpdateResultInfo info{};
  cudaError_t err =
      cudaGraphExecUpdate(static_cast<cudaGraphExec_t>(exec), static_cast<cudaGraph_t>(graph), &info);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return info.result == cudaGraphExecUpdateSuccess;
}

void launch_graph(void* exec, void* stream) {
  KILN_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), static_cast<cudaStream_t>(stream)));
}

void destroy_graph_exec(void* exec) noexcept {
  if (exec) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
}

void* create_event() {
  cudaEvent_t e = nullptr;
  KILN_CUDA_CHECK(cudaEventCreate(&e));
  return e;
}

void destroy_event(void* event) noexcept {
  if (event) cudaEventDestroy(static_cast<cudaEvent_t>(event));
}

void record_event(void* event, void* stream) {
  KILN_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)));
}

float event_elapsed_ms(void* start, void* end) {
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
