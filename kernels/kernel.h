// Kernel: one layer's implementation on one backend. Engines create one per layer at load time
// and share it between execution contexts, so run() is const and keeps no per-call state.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ir/dims.h"
#include "ir/dtype.h"
#include "ir/network.h"

namespace kiln {

enum class Backend : uint8_t { kReference = 0, kCuda = 1 };

const char* backend_name(Backend b);

struct TensorView {
  void* data = nullptr;  // host memory on the reference backend, device memory on CUDA
  DataType dtype = DataType::kFloat32;
  Dims dims;  // concrete
};

// True when `outputs` is not empty and each has a zero dim: a layer writing only empty tensors has
// nothing to compute, and engines and constant folding run no kernel for it.
inline bool all_outputs_empty(const std::vector<TensorView>& outputs) {
  if (outputs.empty()) return false;
  for (const TensorView& t : outputs) {
    bool empty = false;
    for (int64_t d : t.dims) empty |= d == 0;
    if (!empty) return false;
  }
  return true;
}

// Memory that a kernel allocates through another allocator while it runs (a torch op inside an
// engine gets its results from PyTorch's). When its engine is captured into a CUDA graph, those
// allocations must go to a pool reserved for the graph's lifetime: the graph replays on the same
// addresses, and nothing else may take them meanwhile.
class CapturePool {
 public:
  virtual ~CapturePool() = default;  // the graph is gone: the pool's memory may be reused
  virtual void end() noexcept = 0;   // the capture ended: the stream allocates as usual again
};

class CaptureAllocator {
 public:
  virtual ~CaptureAllocator() = default;
  // Called after a capture on `stream` (a cudaStream_t) began: allocations made on that stream
  // go to a new pool until end().
  virtual std::unique_ptr<CapturePool> begin(int device, void* stream) const = 0;
};

// Per-context resources a kernel may use while it runs.
struct LaunchContext {
  void* stream = nullptr;     // cudaStream_t; unused by the reference backend
  void* cublaslt = nullptr;   // cublasLtHandle_t owned by the context
  void* cudnn = nullptr;      // cudnnHandle_t owned by the context (when a kernel uses cuDNN)
  void* workspace = nullptr;  // scratch device memory owned by the context
  size_t workspace_bytes = 0;
};

class Kernel {
 public:
  virtual ~Kernel() = default;
  virtual void run(const std::vector<TensorView>& inputs, const std::vector<TensorView>& outputs,
                   const LaunchContext& ctx) const = 0;
  // Name of the implementation, shown by plan inspection ("cublaslt_matmul", "ref_matmul").
  virtual std::string name() const = 0;
  // True when run() needs LaunchContext::cudnn; contexts create a cuDNN handle only then.
  virtual bool uses_cudnn() const { return false; }
  // Build-time tactic selection. A kernel with several implementations for its layer (cuDNN
  // algorithms, cuBLASLt algorithms, own kernels) returns how many; its factory reads the
  // layer's int attribute "tactic" (-1 or absent: its own heuristic choice, always valid) and
  // implements tactic t in [0, num_tactics()). The builder times each tactic on the GPU at the
  // profile's opt shapes, keeps the fastest in the layer's "tactic" attribute (so the plan
  // stores it) and records it in the timing cache. A tactic that cannot run for the layer's
  // shapes throws from run(); the builder skips it. The op's schema declares "tactic" (an int,
  // default -1), as every attribute the builder sets: check_attributes refuses undeclared ones.
  virtual int num_tactics() const { return 1; }
  // True for a tactic that rounds more than the kernel's others (cuDNN's plain graph engines,
  // which round a 16-bit convolution before its bias): the builder takes it only when it is
  // faster than every other by more than kLessPreciseMargin.
  virtual bool less_precise_tactic(int tactic) const { return false; }
  // Bytes of LaunchContext::workspace this kernel (its tactic) would use for inputs of these
  // shapes, when more than the builder's workspace_bytes may serve it better (fully_connected's
  // 3xTF32 tactics split their operands there). The builder times the tactic with that much and
  // gives the engine the most any layer wants at the profiles' max shapes; with less, run() must
  // still be correct (smaller chunks, or another path).
  virtual size_t workspace_wanted(const std::vector<TensorDesc>& inputs) const { return 0; }
  // Build time: a kernel that generated code when it was created (fused_pointwise compiles with
  // NVRTC) records it in its layer's attributes, so that the plan carries it and a factory
  // reading the plan can load it instead of generating it again. The op's schema declares them.
  virtual void store_artifacts(Attributes& attrs) const {}
  // True when run() may be recorded into a CUDA graph: it only enqueues work on ctx.stream
  // (kernels, cudaMemcpyAsync/cudaMemsetAsync between device buffers, cuBLASLt/cuDNN calls with
  // ctx.workspace) and its launches depend on nothing but the shapes and addresses it is given.
  // No cudaMalloc, synchronization, blocking copies, host reads of device data or legacy default
  // stream. A kernel that breaks this returns false and its engines launch plainly. Host-side
  // caches filled on first run are fine: contexts run every shape set once before capturing.
  virtual bool capturable() const { return true; }
  // The allocator run() takes memory from besides ctx.workspace, if any (a capture then routes
  // it into a pool kept with the graph); the object outlives every kernel.
  virtual const CaptureAllocator* capture_allocator() const { return nullptr; }
};

// Position of `name` in an op's list of variants (elementwise_ops(), unary_ops(), ...): the code
// its kernel switches on. Schemas have validated the name before a kernel is created.
int variant_code(const std::vector<std::string>& variants, const std::string& name);

using KernelFactory = std::function<std::unique_ptr<Kernel>(const Layer&)>;

void register_kernel(const std::string& op, Backend backend, KernelFactory factory);

// A kernel file's registration entry: runs `register_all` (its register_kernel calls) when the
// library loads, so no central list names kernel files.
struct KernelRegistration {
  explicit KernelRegistration(void (*register_all)()) { register_all(); }
};
bool has_kernel(const std::string& op, Backend backend);
// Throws a kiln::Error naming the layer when no kernel implements its op on `backend`.
std::unique_ptr<Kernel> create_kernel(const Layer& layer, Backend backend);

}  // namespace kiln
