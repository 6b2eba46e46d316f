// What CUDA devices this process can see. Safe to call where no GPU or driver exists.
#pragma once

#include <string>

namespace kiln {

int cuda_device_count();                   // 0 when there is no usable GPU
int cuda_device_arch(int device = -1);     // compute capability as major*10+minor; -1: current
int current_device();                      // cudaGetDevice
int cuda_runtime_version();                // the CUDA runtime Kiln was built against
int cublaslt_version();                    // likewise cuBLASLt
int cudnn_version();                       // likewise cuDNN
int cuda_driver_version();                 // the driver's CUDA version (0: no driver)
std::string cuda_device_name(int device);  // "" when it cannot be read

}  // namespace kiln

#include <cstddef>

namespace kiln {

// Thin wrappers so core/ needs no CUDA header. All throw kiln::Error on failure.
void* device_alloc(size_t bytes);  // nullptr for 0 bytes
void device_free(void* p) noexcept;
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_device_async(void* dst, const void* src, size_t bytes, void* stream);
// Sets `bytes` bytes at `dst` (device) to `byte`, in stream order.
void fill_device_async(void* dst, int byte, size_t bytes, void* stream);
// Every `stride`-th element of `src` (device; elements of `element_bytes`), `count` of them from
// the first, to `dst` (host) after the stream's earlier work; returns when they are there.
void copy_strided_to_host(void* dst, const void* src, size_t element_bytes, size_t stride, size_t count,
                          void* stream);
// Host to device, many pieces (an engine's constants, a refit's new weights): through two
// page-locked staging buffers, the CPU filling one while the copy engine drains the other, at
// the bus's rate rather than a pageable copy's and without a host image of the whole. Returns
// when every piece is on the device.
struct HostPiece {
  void* dst;        // device
  const void* src;  // host (pageable)
  size_t bytes;
};
void copy_pieces_to_device(const HostPiece* pieces, size_t count);
// Device memory owned for a scope (a tactic timing's buffers, a calibration batch's).
struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(size_t bytes) : p(device_alloc(bytes)) {}
  ~DeviceBuffer() { device_free(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};
void synchronize_stream(void* stream);
void synchronize_device();  // cudaDeviceSynchronize: every stream of the current device
void* create_cublaslt_handle();
void destroy_cublaslt_handle(void* handle) noexcept;
void* create_cudnn_handle();
void destroy_cudnn_handle(void* handle) noexcept;
int cudnn_runtime_version();  // the cuDNN library loaded at run time

// Streams, events and CUDA graphs for execution contexts (graph capture and replay) and for the
// builder's tactic timing. Handles are the CUDA types behind void*.
void* create_stream();  // a non-blocking stream of the current device
void destroy_stream(void* stream) noexcept;
// True when `stream` is being captured into a graph (by the caller, e.g. torch.cuda.graph): then
// a context launches plainly so that its work becomes part of the caller's graph.
bool stream_is_capturing(void* stream);
// Starts capturing `stream` (thread-local capture mode: only this thread's illegal calls break
// it). end_capture returns the graph, or nullptr when the capture was invalidated (an
// operation that is illegal during capture happened); the sticky error is cleared then.
void begin_capture(void* stream);
void* end_capture(void* stream) noexcept;
void destroy_graph(void* graph) noexcept;
void* instantiate_graph(void* graph);  // cudaGraphExec_t
// Updates an instantiated graph in place to the topology-equal `graph` (new kernel arguments,
// e.g. other binding addresses). False when CUDA refuses; the exec is then unchanged.
bool update_graph_exec(void* exec, void* graph) noexcept;
void launch_graph(void* exec, void* stream);
void destroy_graph_exec(void* exec) noexcept;
void* create_event();
void destroy_event(void* event) noexcept;
void record_event(void* event, void* stream);
float event_elapsed_ms(void* start, void* end);  // synchronizes on `end`
// Occupies `stream` for about `microseconds` (one spinning thread): later launches queue behind it.
void gpu_delay(double microseconds, void* stream);

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
