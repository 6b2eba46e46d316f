// Engine: a deserialized plan ready to run on one backend. Immutable after construction and
// shareable across threads. ExecutionContext: per-stream state (activation arena, workspace,
// cuBLASLt handle, bound addresses, current shapes, CUDA graphs); one context serves one stream
// at a time, and several contexts of one engine run concurrently. A context used from two threads
// at once refuses the second call with a kiln::Error (it is never corrupted): use one per thread.
//
// Activation memory: by default a context allocates nothing up front; its arena is laid out and
// allocated for the input shapes in use (place_in_arena), grows when larger shapes come, and
// never shrinks. MemoryAllocation::kProfileMax allocates the plan's arena for the profiles'
// largest shapes at creation instead (no allocation ever happens in enqueue then).
//
// CUDA graphs: a CUDA context captures its launches into a CUDA graph per set of input shapes
// (and optimization profile) and replays it on later enqueues with the same shapes; the first
// enqueue of a shape set runs plainly (warm-up: kernels fill their caches, load their modules).
// When only binding addresses change, the context re-captures and updates the instantiated
// graph in place (cudaGraphExecUpdate), re-instantiating only when CUDA refuses the update. With
// binding staging on, the graph reads and writes context-owned copies of the bindings instead,
// so changing addresses cost two copies rather than a re-capture. Plain launches are used when
// graphs are off (set_cuda_graphs(false) or KILN_CUDA_GRAPHS=0), a kernel is not capturable,
// a capture failed, or the caller's stream is itself being captured (torch.cuda.graph).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/allocator.h"
#include "core/plan.h"
#include "core/refit.h"
#include "ir/op_schema.h"
#include "kernels/kernel.h"

namespace kiln {

class ExecutionContext;

enum class MemoryAllocation {
  kShapesInUse,  // the arena fits the shapes in use; allocated (or grown) when shapes change
  kProfileMax,   // the plan's arena for every profile's largest shapes, allocated at creation
};

class Engine : public std::enable_shared_from_this<Engine> {
 public:
  // Checks that the plan can run on `backend` here: a CUDA plan needs a GPU of the architecture
  // it was built for; the reference backend runs any plan.
  // `allocator` (CUDA only; nullptr: cudaMalloc) holds the weights and is the default for the
  // engine's contexts.
  // It also refuses a plan of another Kiln (or CUDA library) major.minor version
  // (check_plan_compatibility); `allow_minor_version_mismatch` accepts another minor version.
  static std::shared_ptr<Engine> create(Plan plan, Backend backend,
                                        std::shared_ptr<DeviceAllocator> allocator = nullptr,
                                        bool allow_minor_version_mismatch = false);
  static std::shared_ptr<Engine> create(const std::vector<uint8_t>& plan_bytes, Backend backend,
                                        std::shared_ptr<DeviceAllocator> allocator = nullptr,
                                        bool allow_minor_version_mismatch = false);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // `allocator` (nullptr: the engine's) holds the context's arena, workspace and staging buffers.
  std::unique_ptr<ExecutionContext> create_execution_context(
      std::shared_ptr<DeviceAllocator> allocator = nullptr,
      MemoryAllocation memory = MemoryAllocation::kShapesInUse) const;

  // A refit that copied constants on the device leaves their host bytes stale until the plan is
  // read: plan() (what serializes) brings them back first, one copy per refit when asked.
  // network() is for the structure (layers, shapes): its constants' bytes may be stale then.
  const Plan& plan() const {
    sync_host_constants();
    return plan_;
  }
  const Network& network() const { return plan_.network; }
  const Plan& plan_structure() const { return plan_; }  // as network(): profiles, memory, layers
  Backend backend() const { return backend_; }
  int device() const { return device_; }
  std::vector<std::string> input_names() const;
  std::vector<std::string> output_names() const;
  const Tensor& binding(const std::string& name) const;  // an input or output, by name
  // Bindings by index: inputs 0..num_inputs()-1, then outputs. -1 when `name` is none.
  int num_bindings() const { return static_cast<int>(binding_ids_.size()); }
  int num_inputs() const { return static_cast<int>(network().inputs().size()); }
  int binding_index(const std::string& name) const;
  const Tensor& binding(int index) const;
  int num_profiles() const { return static_cast<int>(plan_.profiles.size()); }
  // One line per layer: name, op, kernel, output shapes (with -1 for dynamic dims).
  std::vector<std::string> describe_layers() const;
  // Bytes of the constants (weights) this engine holds on its backend's device (0 on the
  // reference backend, which reads them in place from the plan).
  int64_t device_bytes() const;

  // Refit (core/refit.h): the weights this engine's constants derive from, by name, and new values
  // for them. refit recomputes every weight-derived constant as the builder computed it and writes
  // it in place (on CUDA into the same device memory, so captured CUDA graphs see it); the plan
  // (plan(), what serializes) holds the new values after. All weights must be given. Not while a
  // context of this engine runs: on CUDA it synchronizes the device before writing; the reference
  // backend's contexts pick the new values up at their next enqueue.
  std::vector<WeightSpec> refittable_weights() const { return refittable_weights_; }
  void refit(const std::map<std::string, ConstantValue>& weights);
  // CUDA: the same with some weights already on this engine's GPU (`on_device`: name -> device
  // pointer to its bytes, of its dtype and dims): a constant that is one of them unchanged is
  // copied device to device; `weights` holds the rest, at least host_read_weights(network()).
  void refit(const std::map<std::string, ConstantValue>& weights,
             const std::map<std::string, const void*>& on_device);

 private:
  friend class ExecutionContext;
  Engine(Plan plan, Backend backend, std::shared_ptr<DeviceAllocator> allocator,
         bool allow_minor_version_mismatch);
  void upload_constants();

  void sync_host_constants() const {
    if (host_stale_.load(std::memory_order_acquire)) copy_stale_constants_to_host();
  }
  void copy_stale_constants_to_host() const;

  Plan plan_;
  // Constants whose device bytes are newer than the plan's (refit on the device), under mutex.
  mutable std::vector<TensorId> stale_constants_;
  mutable std::atomic<bool> host_stale_{false};
  mutable std::mutex stale_mutex_;
  Backend backend_;
  int device_ = -1;
  std::shared_ptr<DeviceAllocator> allocator_;    // CUDA only
  void* weights_ = nullptr;                       // CUDA: every constant, in one allocation
  std::vector<std::unique_ptr<Kernel>> kernels_;  // one per layer
  std::vector<void*> constants_;                  // per tensor id: constant data on the backend
  std::vector<int> producer_;                     // per tensor id: producing layer, -1 if none
  struct View {
    TensorId view, source;
    int64_t offset;  // bytes into the source
  };
  std::vector<View> views_;            // every alias layer, in order
  std::vector<TensorId> binding_ids_;  // per binding index
  std::unordered_map<std::string, int> binding_index_;
  ArenaConflicts conflicts_;                                 // for laying out the arena for the shapes in use
  bool uses_cudnn_ = false;                                  // some kernel needs a cuDNN handle
  bool capturable_ = true;                                   // every kernel may be captured in a CUDA graph
  std::vector<const CaptureAllocator*> capture_allocators_;  // kernels' own allocators, once each
  std::vector<WeightSpec> refittable_weights_;
  std::atomic<uint64_t> weights_version_{0};  // bumped by refit (reference: constants moved)
};

class ExecutionContext {
 public:
  ~ExecutionContext();
  ExecutionContext(const ExecutionContext&) = delete;
  ExecutionContext& operator=(const ExecutionContext&) = delete;

  const Engine& engine() const { return *engine_; }

  void set_optimization_profile(int index);
  int optimization_profile() const { return profile_; }
  // Shape of a dynamic input for the next enqueue; must lie inside the active profile. Setting
  // the shape it already has costs nothing (shape inference reruns only when a shape changes).
  void set_input_shape(const std::string& name, const Dims& dims);
  void set_input_shape(int input_index, const Dims& dims);
  // Current shape of any binding: inputs as set, outputs as inferred from the input shapes.
  Dims tensor_shape(const std::string& name);
  const Dims& tensor_shape(int binding_index);
  // Device memory (CUDA) or host memory (reference) for an input or output.
  void set_tensor_address(const std::string& name, void* data);
  void set_tensor_address(int binding_index, void* data);
  // Runs the engine. CUDA: enqueued on `stream` (a cudaStream_t; nullptr is the legacy default
  // stream) without synchronizing. Reference: runs on the calling thread before returning.
  void enqueue(void* stream);

  // Profiling mode: each enqueue times every layer's launch, with CUDA events around it on the
  // CUDA backend (so the times are GPU times) and a host clock on the reference backend.
  // layer_times() gives them in milliseconds, one per layer, for the last enqueue; on CUDA it
  // waits for that enqueue to finish. A profiling enqueue launches layer by layer (never a CUDA
  // graph) and is slower than a plain one. On CUDA a delay kernel holds the stream first while the
  // host enqueues the layers, so the times are GPU times without host launch gaps.
  void set_profiling(bool on);
  bool profiling() const { return profiling_; }
  std::vector<double> layer_times();
  // The roofline's cost model (layer_cost in ir/op_schema.h) of every layer at the current input
  // shapes: floating-point operations and bytes moved, one entry per layer.
  std::vector<LayerCost> layer_costs();
  // Bytes this context holds on the device: activation arena + kernel workspace + staging
  // buffers (CUDA backend).
  int64_t device_bytes() const;
  // Bytes of the activation arena allocated now (either backend).
  int64_t arena_bytes() const { return arena_capacity_; }
  MemoryAllocation memory_allocation() const { return memory_; }
  // CUDA graphs (see the top of this file). On by default for CUDA contexts unless the
  // environment sets KILN_CUDA_GRAPHS=0; no effect on the reference backend.
  void set_cuda_graphs(bool enabled);
  bool cuda_graphs() const { return graphs_enabled_; }
  // Graph replays see bindings through context-owned buffers (sized for the profiles' max
  // shapes): each enqueue copies inputs in and outputs out, and new addresses never force a
  // re-capture. For callers whose buffers move on every call (libkiln_runtime). Off by default.
  void set_binding_staging(bool enabled);
  // Counters for tests and benchmarks.
  struct GraphStats {
    int64_t captures = 0;        // successful captures
    int64_t instantiations = 0;  // cudaGraphInstantiate
    int64_t updates = 0;         // in-place cudaGraphExecUpdate after an address change
    int64_t replays = 0;         // enqueues served by a graph
    int64_t plain = 0;           // enqueues that launched layer by layer
  };
  const GraphStats& graph_stats() const { return stats_; }
  static constexpr size_t kMaxGraphs = 16;  // shape sets kept per context (least recently used go)

 private:
  friend class Engine;
  struct Graph {
    int profile = 0;
    std::vector<Dims> shapes;      // per input
    std::vector<void*> addresses;  // per binding, as captured (empty when staged)
    void* exec = nullptr;          // cudaGraphExec_t; nullptr until captured
    int warmups = 0;               // plain runs so far
    bool capturable = true;        // false after a failed capture: this shape set runs plainly
    // What kernels allocated elsewhere during the capture (capture_allocators_), released with
    // the graph. Declared after exec: an erased Graph's exec is destroyed before its pools.
    std::vector<std::shared_ptr<CapturePool>> pools;
    uint64_t last_used = 0;
  };

  class Exclusive;  // refuses a call while another thread is inside the context

  ExecutionContext(std::shared_ptr<const Engine> engine, std::shared_ptr<DeviceAllocator> allocator,
                   MemoryAllocation memory);
  void set_input_shape_unguarded(int input_index, const Dims& dims);
  void set_tensor_address_unguarded(int binding_index, void* data);
  void infer_current_shapes();
  void lay_out_arena();  // offsets_ for the current shapes; the arena grown to fit them
  void reserve_arena(int64_t bytes);
  void prepare();             // shapes, then the launch table, when stale
  void build_launch_table();  // per-layer views for the current shapes
  void refresh_pointers();    // binding addresses into the launch table
  bool staged() const;
  void allocate_staging();
  void copy_staged(bool inputs, void* stream);
  void run_layers(void* stream);
  void run_layer(size_t i, const LaunchContext& launch) const;
  bool launch_graph_for_shapes(void* stream);
  Graph& graph_for_shapes();
  void release_graphs() noexcept;

  std::shared_ptr<const Engine> engine_;
  std::shared_ptr<DeviceAllocator> allocator_;
  MemoryAllocation memory_;
  mutable std::atomic<bool> busy_{false};  // a thread is inside a call (Exclusive)
  int profile_ = 0;
  std::vector<Dims> input_shapes_;   // per input index
  std::vector<char> input_checked_;  // per input: shape set and checked against the profile
  std::vector<Dims> shapes_;         // per tensor id, valid when !shapes_dirty_
  bool shapes_dirty_ = true;
  std::vector<void*> addresses_;  // per binding index, as set by the caller
  bool table_dirty_ = true;       // launch table must be rebuilt (shapes changed)
  uint64_t weights_version_ = 0;  // the engine's weights_version_ the launch table was built for
  bool pointers_dirty_ = true;    // binding addresses changed
  // Launch table: per tensor id its address, per layer its input/output views. Built when
  // shapes change so that an enqueue allocates nothing and looks nothing up by name.
  std::vector<void*> ptr_;
  std::vector<std::vector<TensorView>> layer_in_, layer_out_;
  std::vector<std::pair<int, TensorId>> output_copies_;  // (output binding, source tensor)
  void* arena_ = nullptr;                                // CUDA; the reference backend's is host_arena_
  int64_t arena_capacity_ = 0;                           // bytes allocated for the arena
  // Arena offset per tensor id for the current shapes: the plan's (kProfileMax) or a layout for
  // the shapes in use, cached per input shapes (least recently used go past kMaxGraphs).
  const std::vector<int64_t>* offsets_ = nullptr;
  struct Layout {
    std::vector<Dims> shapes;  // per input
    std::vector<int64_t> offsets;
    int64_t arena_bytes = 0;
    uint64_t last_used = 0;
  };
  std::vector<Layout> layouts_;
  void* workspace_ = nullptr;
  void* cublaslt_ = nullptr;
  void* cudnn_ = nullptr;
  std::vector<uint8_t> host_arena_;
  bool profiling_ = false;
  std::vector<void*> events_;       // CUDA: events_[i] before layer i, events_[n] after the last
  std::vector<double> host_times_;  // reference: ms per layer of the last profiled enqueue
  bool profiled_ = false;           // an enqueue ran since profiling was switched on
  // CUDA graphs.
  bool graphs_enabled_ = false;
  bool staging_ = false;
  std::vector<void*> staging_buffers_;  // per binding, when staged
  std::vector<int64_t> staging_bytes_;
  void* capture_stream_ = nullptr;  // captures run here: the legacy default stream cannot
  std::vector<Graph> graphs_;
  int current_graph_ = -1;  // index in graphs_ for the current shapes, -1: look up
  uint64_t clock_ = 0;
  GraphStats stats_;
};

}  // namespace kiln
