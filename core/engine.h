// Engine: a deserialized plan ready to run on one backend. Immutable after construction and
// shareable across threads. ExecutionContext: per-stream state (activation arena, workspace,
// cuBLASLt handle, bound addresses, current shapes); one context serves one stream at a time,
// and several contexts of one engine run concurrently.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/plan.h"
#include "kernels/kernel.h"

namespace kiln {

class ExecutionContext;

class Engine : public std::enable_shared_from_this<Engine> {
 public:
  // Checks that the plan can run on `backend` here: a CUDA plan needs a GPU of the architecture
  // it was built for; the reference backend runs any plan.
  static std::shared_ptr<Engine> create(Plan plan, Backend backend);
  static std::shared_ptr<Engine> create(const std::vector<uint8_t>& plan_bytes, Backend backend);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  std::unique_ptr<ExecutionContext> create_execution_context() const;

  const Plan& plan() const { return plan_; }
  const Network& network() const { return plan_.network; }
  Backend backend() const { return backend_; }
  int device() const { return device_; }
  std::vector<std::string> input_names() const;
  std::vector<std::string> output_names() const;
  const Tensor& binding(const std::string& name) const;  // an input or output, by name
  int num_profiles() const { return static_cast<int>(plan_.profiles.size()); }
  // One line per layer: name, op, kernel, output shapes (with -1 for dynamic dims).
  std::vector<std::string> describe_layers() const;
  // Bytes of the constants (weights) this engine holds on its backend's device (0 on the
  // reference backend, which reads them in place from the plan).
  int64_t device_bytes() const;

 private:
  friend class ExecutionContext;
  Engine(Plan plan, Backend backend);

  Plan plan_;
  Backend backend_;
  int device_ = -1;
  std::vector<std::unique_ptr<Kernel>> kernels_;  // one per layer
  std::vector<void*> constants_;                  // per tensor id: constant data on the backend
  std::vector<int> producer_;                     // per tensor id: producing layer, -1 if none
  bool uses_cudnn_ = false;                       // some kernel needs a cuDNN handle
};

class ExecutionContext {
 public:
  ~ExecutionContext();
  ExecutionContext(const ExecutionContext&) = delete;
  ExecutionContext& operator=(const ExecutionContext&) = delete;

  const Engine& engine() const { return *engine_; }

  void set_optimization_profile(int index);
  int optimization_profile() const { return profile_; }
  // Shape of a dynamic input for the next enqueue; must lie inside the active profile.
  void set_input_shape(const std::string& name, const Dims& dims);
  // Current shape of any binding: inputs as set, outputs as inferred from the input shapes.
  Dims tensor_shape(const std::string& name);
  // Device memory (CUDA) or host memory (reference) for an input or output.
  void set_tensor_address(const std::string& name, void* data);
  // Runs the engine. CUDA: enqueued on `stream` (a cudaStream_t; nullptr is the legacy default
  // stream) without synchronizing. Reference: runs on the calling thread before returning.
  void enqueue(void* stream);

  // Profiling mode: each enqueue times every layer's launch, with CUDA events around it on the
  // CUDA backend (so the times are GPU times) and a host clock on the reference backend.
  // layer_times() gives them in milliseconds, one per layer, for the last enqueue; on CUDA it
  // waits for that enqueue to finish. A profiling enqueue launches layer by layer (never a CUDA
  // graph) and is slower than a plain one.
  void set_profiling(bool on);
  bool profiling() const { return profiling_; }
  std::vector<double> layer_times();
  // Bytes this context holds on the device: activation arena + kernel workspace (CUDA backend).
  int64_t device_bytes() const;

 private:
  friend class Engine;
  explicit ExecutionContext(std::shared_ptr<const Engine> engine);
  void infer_current_shapes();

  std::shared_ptr<const Engine> engine_;
  int profile_ = 0;
  std::map<std::string, Dims> input_shapes_;
  std::vector<Dims> shapes_;  // per tensor id, valid when !shapes_dirty_
  bool shapes_dirty_ = true;
  std::map<std::string, void*> addresses_;
  void* arena_ = nullptr;
  void* workspace_ = nullptr;
  void* cublaslt_ = nullptr;
  void* cudnn_ = nullptr;
  std::vector<uint8_t> host_arena_;
  bool profiling_ = false;
  std::vector<void*> events_;       // CUDA: events_[i] before layer i, events_[n] after the last
  std::vector<double> host_times_;  // reference: ms per layer of the last profiled enqueue
  bool profiled_ = false;           // an enqueue ran since profiling was switched on
};

}  // namespace kiln
