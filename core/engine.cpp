#include "core/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "ir/error.h"
#include "ir/logging.h"
#include "ir/op_schema.h"
#include "kernels/device.h"

namespace kiln {

// ---- Engine ------------------------------------------------------------------------------------

namespace {
constexpr size_t kWeightAlignment = 256;
size_t align_up(size_t x) { return (x + kWeightAlignment - 1) / kWeightAlignment * kWeightAlignment; }

bool graphs_enabled_by_env() {
  const char* v = std::getenv("KILN_CUDA_GRAPHS");
  return !(v && std::string(v) == "0");
}
}  // namespace

std::shared_ptr<Engine> Engine::create(Plan plan, Backend backend, std::shared_ptr<DeviceAllocator> allocator,
                                       bool allow_minor_version_mismatch) {
  return std::shared_ptr<Engine>(
      new Engine(std::move(plan), backend, std::move(allocator), allow_minor_version_mismatch));
}

std::shared_ptr<Engine> Engine::create(const std::vector<uint8_t>& plan_bytes, Backend backend,
                                       std::shared_ptr<DeviceAllocator> allocator,
                                       bool allow_minor_version_mismatch) {
  return create(Plan::deserialize(plan_bytes), backend, std::move(allocator), allow_minor_version_mismatch);
}

Engine::Engine(Plan plan, Backend backend, std::shared_ptr<DeviceAllocator> allocator,
               bool allow_minor_version_mismatch)
    : plan_(std::move(plan)), backend_(backend) {
  check_plan_compatibility(plan_.header, backend_ == Backend::kCuda, allow_minor_version_mismatch);
  KILN_CHECK(!plan_.weights_stripped(),
             "this plan was saved without its weights (strip_weights): refit it with them first "
             "(refit_plan in C++, Plan.refit(weights) in Python, kiln.load(path, weights=...) for a module)");
  const Network& net = plan_.network;
  if (backend_ == Backend::kCuda) {
    KILN_CHECK(cuda_device_count() > 0,
               "cannot create a CUDA engine: no CUDA GPU is visible "
               "(use the reference backend to run on the CPU)");
    KILN_CHECK(plan_.header.sm_arch != 0,
               "this plan was built for the reference backend; rebuild it with target cuda on the GPU "
               "that will run it");
    int arch = cuda_device_arch();
    KILN_CHECK(static_cast<int>(plan_.header.sm_arch) == arch,
               "this plan was built for sm_" << plan_.header.sm_arch << " but the current GPU is sm_" << arch
                                             << "; rebuild the plan on this GPU");
    device_ = current_device();
    allocator_ = allocator ? std::move(allocator) : default_device_allocator();
  }
  constants_.assign(net.tensors().size(), nullptr);
  producer_ = net.producers();
  for (const auto& l : net.layers()) {
    if (is_alias_layer(l)) views_.push_back({l.outputs[0], l.inputs[0], alias_offset(net, l)});
  }
  for (TensorId id : net.inputs()) binding_ids_.push_back(id);
  for (TensorId id : net.outputs()) binding_ids_.push_back(id);
  for (size_t i = 0; i < binding_ids_.size(); ++i) {
    binding_index_.emplace(net.tensor(binding_ids_[i]).name, static_cast<int>(i));
  }
  conflicts_ = arena_conflicts(net);
  try {
    using Clock = std::chrono::steady_clock;
    const bool timed = log_enabled(Severity::kVerbose);
    auto t0 = Clock::now();
    refittable_weights_ = kiln::refittable_weights(net);
    auto t1 = Clock::now();
    upload_constants();
    auto t2 = Clock::now();
    std::map<std::string, double> create_ms;  // by op, for the verbose log below
    for (const auto& l : net.layers()) {
      auto tk = timed ? Clock::now() : Clock::time_point{};
      kernels_.push_back(create_kernel(l, backend_));
      if (timed) create_ms[l.op] += std::chrono::duration<double, std::milli>(Clock::now() - tk).count();
      uses_cudnn_ |= kernels_.back()->uses_cudnn();
      capturable_ &= kernels_.back()->capturable();
      const CaptureAllocator* a = kernels_.back()->capture_allocator();
      if (a &&
          std::find(capture_allocators_.begin(), capture_allocators_.end(), a) == capture_allocators_.end())
        capture_allocators_.push_back(a);
    }
    if (timed) {
      auto ms = [](Clock::time_point a, Clock::time_point b) {
        return std::chrono::duration<double, std::milli>(b - a).count();
      };
      std::vector<std::pair<double, std::string>> slowest;
      for (const auto& [op, t] : create_ms) slowest.push_back({t, op});
      std::sort(slowest.rbegin(), slowest.rend());
      std::ostringstream top;
      for (size_t i = 0; i < slowest.size() && i < 4; ++i)
        top << (i ? ", " : "") << slowest[i].second << " " << slowest[i].first;
      KILN_LOG(kVerbose, "engine: created in " << ms(t0, Clock::now()) << " ms: refittable weights "
                                               << ms(t0, t1) << ", constants uploaded " << ms(t1, t2) << ", "
                                               << kernels_.size() << " kernels " << ms(t2, Clock::now())
                                               << " (slowest ops: " << top.str() << ")");
    }
  } catch (...) {
    if (weights_) allocator_->deallocate(weights_);
    throw;
  }
}

// CUDA: every constant goes into one allocation at aligned offsets, copied through the device's
// page-locked staging (copy_pieces_to_device: the CPU fills one buffer while the copy engine drains
// the other). An H100 machine, BERT-base FP16 (224 MB): 26 ms, against 152 ms for the former
// single pageable copy of a packed host image.
void Engine::upload_constants() {
  const Network& net = plan_.network;
  if (backend_ != Backend::kCuda) {
    for (const auto& t : net.tensors()) {
      if (t.kind == TensorKind::kConstant) constants_[t.id] = const_cast<uint8_t*>(t.data->data());
    }
    return;
  }
  // Constants sharing one host buffer (a weight used by several layers) are stored once.
  std::vector<size_t> offset(net.tensors().size(), 0);
  std::unordered_map<const std::vector<uint8_t>*, size_t> placed;
  std::vector<TensorId> unique;
  size_t total = 0;
  for (const auto& t : net.tensors()) {
    if (t.kind != TensorKind::kConstant || t.data->empty()) continue;
    auto [it, inserted] = placed.emplace(t.data.get(), total);
    offset[t.id] = it->second;
    if (!inserted) continue;
    unique.push_back(t.id);
    total = align_up(total + t.data->size());
  }
  if (total == 0) return;
  weights_ = allocator_->allocate(total);
  std::vector<HostPiece> pieces;
  for (TensorId id : unique) {
    const Tensor& t = net.tensor(id);
    pieces.push_back({static_cast<uint8_t*>(weights_) + offset[id], t.data->data(), t.data->size()});
  }
  copy_pieces_to_device(pieces.data(), pieces.size());
  for (const auto& t : net.tensors()) {
    if (t.kind == TensorKind::kConstant && !t.data->empty()) {
      constants_[t.id] = static_cast<uint8_t*>(weights_) + offset[t.id];
    }
  }
}

Engine::~Engine() {
  if (weights_) allocator_->deallocate(weights_);
}

std::unique_ptr<ExecutionContext> Engine::create_execution_context(std::shared_ptr<DeviceAllocator> allocator,
                                                                   MemoryAllocation memory) const {
  return std::unique_ptr<ExecutionContext>(
      new ExecutionContext(shared_from_this(), std::move(allocator), memory));
}

int Engine::binding_index(const std::string& name) const {
  auto it = binding_index_.find(name);
  return it == binding_index_.end() ? -1 : it->second;
}

const Tensor& Engine::binding(int index) const {
  KILN_CHECK(index >= 0 && index < num_bindings(), "binding index " << index
                                                                    << " is out of range; the engine has "
                                                                    << num_bindings() << " bindings");
  return network().tensor(binding_ids_[index]);
}

std::vector<std::string> Engine::input_names() const {
  std::vector<std::string> names;
  for (TensorId t : network().inputs()) names.push_back(network().tensor(t).name);
  return names;
}

std::vector<std::string> Engine::output_names() const {
  std::vector<std::string> names;
  for (TensorId t : network().outputs()) names.push_back(network().tensor(t).name);
  return names;
}

const Tensor& Engine::binding(const std::string& name) const {
  int index = binding_index(name);
  KILN_CHECK(
      index >= 0, "'" << name << "' is not an input or output of this engine (inputs: " << [&] {
        std::string s;
        for (const auto& n : input_names()) s += (s.empty() ? "" : ", ") + n;
        return s;
      }() << ")");
  return network().tensor(binding_ids_[index]);
}

std::vector<std::string> Engine::describe_layers() const {
  std::vector<std::string> lines;
  const Network& net = network();
  for (size_t i = 0; i < net.layers().size(); ++i) {
    const Layer& l = net.layers()[i];
    std::ostringstream s;
    s << l.name << " [" << l.op << "] kernel=" << kernels_[i]->name() << " ->";
    for (TensorId t : l.outputs) s << " " << dtype_name(net.tensor(t).dtype) << to_string(net.tensor(t).dims);
    lines.push_back(s.str());
  }
  return lines;
}

void Engine::refit(const std::map<std::string, ConstantValue>& weights) { refit(weights, {}); }

void Engine::refit(const std::map<std::string, ConstantValue>& weights,
                   const std::map<std::string, const void*>& on_device) {
  KILN_CHECK(on_device.empty() || backend_ == Backend::kCuda,
             "refit: weights on a GPU given to an engine of the " << backend_name(backend_) << " backend");
  const auto start = std::chrono::steady_clock::now();
  std::set<std::string> device_names;
  for (const auto& kv : on_device) device_names.insert(kv.first);
  std::vector<std::pair<TensorId, std::string>> direct;
  std::vector<std::pair<TensorId, Bytes>> values =
      replay_weights(plan_.network, weights, device_names, &direct);
  std::set<const std::vector<uint8_t>*> derived;
  for (const auto& [id, bytes] : values) derived.insert(plan_.network.tensor(id).data.get());
  for (const auto& t : plan_.network.tensors()) {
    KILN_CHECK(t.kind != TensorKind::kConstant || t.lineage || !derived.count(t.data.get()),
               "refit: constant '" << t.name
                                   << "' shares its bytes with a weight but does not derive from it; "
                                      "the plan is corrupt");
  }
  const auto replayed = std::chrono::steady_clock::now();
  if (backend_ == Backend::kCuda) {
    // Each new constant from its host bytes to its place, through the page-locked staging.
    DeviceGuard guard(device_);
    synchronize_device();  // no kernel of a context reads the weights while they change
    std::vector<HostPiece> pieces;
    for (const auto& [id, bytes] : values) pieces.push_back({constants_[id], bytes->data(), bytes->size()});
    copy_pieces_to_device(pieces.data(), pieces.size());
    for (const auto& [id, name] : direct) {
      const Tensor& t = plan_.network.tensor(id);
      copy_device_async(constants_[id], on_device.at(name),
                        static_cast<size_t>(tensor_bytes(t.dims, dtype_size(t.dtype))), nullptr);
    }
    synchronize_device();
  }
  for (const auto& [id, bytes] : values) {
    plan_.network.tensor(id).data = bytes;
    if (backend_ != Backend::kCuda) constants_[id] = const_cast<uint8_t*>(bytes->data());
  }
  // A constant copied on the device keeps its old host bytes in the plan: stale until plan()
  // reads them back (serialization does; refit, running and network() do not need them).
  if (!direct.empty()) {
    std::lock_guard<std::mutex> lock(stale_mutex_);
    for (const auto& [id, name] : direct) stale_constants_.push_back(id);
    host_stale_.store(true, std::memory_order_release);
  }
  weights_version_.fetch_add(1);
  const auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  KILN_LOG(kInfo, "refit: " << direct.size() << " constants copied on the device, " << values.size()
                            << " recomputed in " << ms(start, replayed) << " ms, written in "
                            << ms(replayed, std::chrono::steady_clock::now()) << " ms");
}

void Engine::copy_stale_constants_to_host() const {
  std::lock_guard<std::mutex> lock(stale_mutex_);
  if (!host_stale_.load(std::memory_order_relaxed)) return;
  DeviceGuard guard(device_);
  std::sort(stale_constants_.begin(), stale_constants_.end());
  stale_constants_.erase(std::unique(stale_constants_.begin(), stale_constants_.end()),
                         stale_constants_.end());
  Network& net = const_cast<Network&>(plan_.network);
  for (TensorId id : stale_constants_) {
    Tensor& t = net.tensor(id);
    auto bytes = std::make_shared<std::vector<uint8_t>>(
        static_cast<size_t>(tensor_bytes(t.dims, dtype_size(t.dtype))));
    copy_to_host(bytes->data(), constants_[id], bytes->size());
    t.data = std::move(bytes);
  }
  stale_constants_.clear();
  host_stale_.store(false, std::memory_order_release);
}

int64_t Engine::device_bytes() const {
  if (backend_ != Backend::kCuda) return 0;
  int64_t bytes = 0;
  for (const auto& t : network().tensors()) {
    if (t.kind == TensorKind::kConstant) bytes += static_cast<int64_t>(t.data->size());
  }
  return bytes;
}

// ---- ExecutionContext -----------------------------------------------------------------------------

// Every public call of a context holds this for its duration: a second thread entering the same
// context meanwhile gets an error instead of racing on its state.
class ExecutionContext::Exclusive {
 public:
  Exclusive(const ExecutionContext& context, const char* call) : busy_(context.busy_) {
    KILN_CHECK(!busy_.exchange(true, std::memory_order_acquire),
               "ExecutionContext::" << call
                                    << ": another thread is using this execution context right now; a "
                                       "context serves one thread at a time: create one per thread "
                                       "(engine.create_execution_context())");
  }
  ~Exclusive() { busy_.store(false, std::memory_order_release); }
  Exclusive(const Exclusive&) = delete;
  Exclusive& operator=(const Exclusive&) = delete;

 private:
  std::atomic<bool>& busy_;
};

ExecutionContext::ExecutionContext(std::shared_ptr<const Engine> engine,
                                   std::shared_ptr<DeviceAllocator> allocator, MemoryAllocation memory)
    : engine_(std::move(engine)), memory_(memory) {
  const Plan& plan = engine_->plan_structure();
  const Network& net = plan.network;
  input_shapes_.resize(net.inputs().size());
  input_checked_.assign(net.inputs().size(), 0);
  for (size_t i = 0; i < net.inputs().size(); ++i) {
    const Tensor& t = net.tensor(net.inputs()[i]);
    if (is_static(t.dims)) {
      input_shapes_[i] = t.dims;
      input_checked_[i] = 1;
    }
  }
  addresses_.assign(static_cast<size_t>(engine_->num_bindings()), nullptr);
  const bool cuda = engine_->backend() == Backend::kCuda;
  if (cuda) {
    allocator_ = allocator ? std::move(allocator) : engine_->allocator_;
    graphs_enabled_ = engine_->capturable_ && graphs_enabled_by_env();
  }
  try {
    if (cuda) {
      cublaslt_ = create_cublaslt_handle();
      if (engine_->uses_cudnn_) cudnn_ = create_cudnn_handle();
    }
    if (memory_ == MemoryAllocation::kProfileMax) {
      reserve_arena(plan.memory.arena_bytes);
      if (cuda) workspace_ = allocator_->allocate(static_cast<size_t>(plan.memory.workspace_bytes));
    }
  } catch (...) {
    if (cuda) {
      destroy_cudnn_handle(cudnn_);
      destroy_cublaslt_handle(cublaslt_);
      allocator_->deallocate(arena_);
    }
    throw;
  }
}

// Grows the arena to at least `bytes` (never shrinks). Graphs captured against the old arena
// are released; the launch table is rebuilt by the caller.
void ExecutionContext::reserve_arena(int64_t bytes) {
  if (bytes <= arena_capacity_) return;
  if (engine_->backend() == Backend::kCuda) {
    DeviceGuard guard(engine_->device());
    release_graphs();
    allocator_->deallocate(arena_);
    arena_ = nullptr;
    arena_capacity_ = 0;
    arena_ = allocator_->allocate(static_cast<size_t>(bytes));
  } else {
    try {
      host_arena_.resize(static_cast<size_t>(bytes));
    } catch (const std::bad_alloc&) {
      KILN_FAIL("cannot allocate " << bytes << " bytes of host memory for the activation arena; "
                                   << "use smaller input shapes");
    }
  }
  arena_capacity_ = bytes;
}

// The arena offsets for the current shapes: the plan's (kProfileMax), else a layout placed for
// these shapes, cached per input shapes.
void ExecutionContext::lay_out_arena() {
  const Engine& e = *engine_;
  const Network& net = e.network();
  if (memory_ == MemoryAllocation::kProfileMax) {
    const MemoryPlan& mem = e.plan_structure().memory;
    for (const auto& t : net.tensors()) {
      if (mem.offsets[t.id] < 0) continue;
      int64_t bytes = tensor_bytes(shapes_[t.id], dtype_size(t.dtype));
      KILN_CHECK(bytes <= mem.sizes[t.id], "tensor '" << t.name << "' needs " << bytes
                                                      << " bytes for these input shapes, the plan reserved "
                                                      << mem.sizes[t.id]
                                                      << "; use input shapes inside the profile");
    }
    offsets_ = &mem.offsets;
    return;
  }
  Layout* layout = nullptr;
  for (auto& l : layouts_) {
    if (l.shapes == input_shapes_) layout = &l;
  }
  if (!layout) {
    if (layouts_.size() >= kMaxGraphs) {
      layouts_.erase(std::min_element(layouts_.begin(), layouts_.end(), [](const Layout& a, const Layout& b) {
        return a.last_used < b.last_used;
      }));
    }
    std::vector<int64_t> bytes(net.tensors().size(), 0);
    for (TensorId t : e.conflicts_.tensors)
      bytes[t] = tensor_bytes(shapes_[t], dtype_size(net.tensor(t).dtype));
    MemoryPlan placed = place_in_arena(net, e.conflicts_, bytes);
    layouts_.push_back({input_shapes_, std::move(placed.offsets), placed.arena_bytes, 0});
    layout = &layouts_.back();
  }
  layout->last_used = ++clock_;
  reserve_arena(layout->arena_bytes);
  offsets_ = &layout->offsets;
}

ExecutionContext::~ExecutionContext() {
  for (void* ev : events_) destroy_event(ev);
  if (engine_->backend() == Backend::kCuda) {
    release_graphs();
    destroy_stream(capture_stream_);
    destroy_cudnn_handle(cudnn_);
    destroy_cublaslt_handle(cublaslt_);
    for (void* p : staging_buffers_) allocator_->deallocate(p);
    allocator_->deallocate(workspace_);
    allocator_->deallocate(arena_);
  }
}

void ExecutionContext::set_optimization_profile(int index) {
  Exclusive lock(*this, "set_optimization_profile");
  if (index == profile_) return;
  int n = engine_->num_profiles();
  KILN_CHECK(index >= 0 && (index < n || (n == 0 && index == 0)),
             "optimization profile " << index << " does not exist; the engine has " << n);
  profile_ = index;
  // Dynamic shapes must be re-checked against the new profile's ranges.
  const Network& net = engine_->network();
  for (size_t i = 0; i < net.inputs().size(); ++i) {
    if (!is_static(net.tensor(net.inputs()[i]).dims)) input_checked_[i] = 0;
  }
  shapes_dirty_ = true;
}

void ExecutionContext::set_input_shape(const std::string& name, const Dims& dims) {
  Exclusive lock(*this, "set_input_shape");
  int index = engine_->binding_index(name);
  const Tensor& t = engine_->binding(name);  // names the engine's inputs when `name` is none
  KILN_CHECK(t.kind == TensorKind::kInput, "'" << name << "' is an output; only input shapes can be set");
  set_input_shape_unguarded(index, dims);
}

void ExecutionContext::set_input_shape(int index, const Dims& dims) {
  Exclusive lock(*this, "set_input_shape");
  set_input_shape_unguarded(index, dims);
}

void ExecutionContext::set_input_shape_unguarded(int index, const Dims& dims) {
  KILN_CHECK(index >= 0 && index < engine_->num_inputs(), "input index "
                                                              << index << " is out of range; the engine has "
                                                              << engine_->num_inputs() << " inputs");
  if (input_checked_[index] && input_shapes_[index] == dims) return;
  const Tensor& t = engine_->binding(index);
  const std::string& name = t.name;
  KILN_CHECK(dims.size() == t.dims.size(), "input '" << name << "': shape " << to_string(dims) << " has rank "
                                                     << dims.size() << ", expected " << to_string(t.dims));
  const auto& profiles = engine_->plan_structure().profiles;
  const ShapeRange* range = nullptr;
  if (!profiles.empty()) {
    auto it = profiles[profile_].inputs.find(name);
    if (it != profiles[profile_].inputs.end()) range = &it->second;
  }
  for (size_t i = 0; i < dims.size(); ++i) {
    if (t.dims[i] != kDynamic) {
      KILN_CHECK(dims[i] == t.dims[i], "input '" << name << "': shape " << to_string(dims)
                                                 << " does not match the static shape " << to_string(t.dims));
    } else {
      KILN_CHECK(range != nullptr && dims[i] >= range->min[i] && dims[i] <= range->max[i],
                 "input '" << name << "': shape " << to_string(dims) << " is outside optimization profile "
                           << profile_ << " (min " << (range ? to_string(range->min) : "?") << ", max "
                           << (range ? to_string(range->max) : "?")
                           << "); rebuild with a wider profile or pick another profile");
    }
  }
  input_checked_[index] = 1;
  if (input_shapes_[index] == dims) return;
  input_shapes_[index] = dims;
  shapes_dirty_ = true;
}

void ExecutionContext::infer_current_shapes() {
  if (!shapes_dirty_) return;
  const Network& net = engine_->network();
  std::map<std::string, Dims> by_name;
  for (size_t i = 0; i < net.inputs().size(); ++i) {
    const std::string& name = net.tensor(net.inputs()[i]).name;
    KILN_CHECK(input_checked_[i], "input '" << name << "' is dynamic: call set_input_shape first");
    by_name[name] = input_shapes_[i];
  }
  shapes_ = infer_shapes(net, by_name);
  lay_out_arena();
  shapes_dirty_ = false;
  table_dirty_ = true;
  current_graph_ = -1;
}

Dims ExecutionContext::tensor_shape(const std::string& name) {
  Exclusive lock(*this, "tensor_shape");
  const Tensor& t = engine_->binding(name);
  infer_current_shapes();
  return shapes_[t.id];
}

const Dims& ExecutionContext::tensor_shape(int index) {
  Exclusive lock(*this, "tensor_shape");
  const Tensor& t = engine_->binding(index);
  infer_current_shapes();
  return shapes_[t.id];
}

void ExecutionContext::set_tensor_address(const std::string& name, void* data) {
  Exclusive lock(*this, "set_tensor_address");
  engine_->binding(name);  // refuses an unknown name, listing the bindings
  set_tensor_address_unguarded(engine_->binding_index(name), data);
}

void ExecutionContext::set_tensor_address(int index, void* data) {
  Exclusive lock(*this, "set_tensor_address");
  set_tensor_address_unguarded(index, data);
}

void ExecutionContext::set_tensor_address_unguarded(int index, void* data) {
  KILN_CHECK(index >= 0 && index < engine_->num_bindings(),
             "binding index " << index << " is out of range; the engine has " << engine_->num_bindings()
                              << " bindings");
  if (addresses_[index] == data) return;
  addresses_[index] = data;
  pointers_dirty_ = true;
}

void ExecutionContext::set_cuda_graphs(bool enabled) {
  Exclusive lock(*this, "set_cuda_graphs");
  bool on = enabled && engine_->backend() == Backend::kCuda && engine_->capturable_;
  if (on == graphs_enabled_) return;
  // Captured graphs stay (until the context goes): turning graphs back on replays them.
  graphs_enabled_ = on;
  table_dirty_ = true;  // staging applies only with graphs
}

void ExecutionContext::set_binding_staging(bool enabled) {
  Exclusive lock(*this, "set_binding_staging");
  if (enabled == staging_) return;
  staging_ = enabled;
  release_graphs();  // graphs captured against the other addresses
  table_dirty_ = true;
}

bool ExecutionContext::staged() const { return staging_ && graphs_enabled_; }

// Buffers big enough for each binding at the current shapes (kShapesInUse) or at every
// profile's largest shapes (kProfileMax). They grow when larger shapes come; graphs captured
// against the old buffers are released then.
void ExecutionContext::allocate_staging() {
  const Engine& e = *engine_;
  const Network& net = e.network();
  std::vector<int64_t> need(static_cast<size_t>(e.num_bindings()), 0);
  if (memory_ == MemoryAllocation::kProfileMax) {
    std::vector<int64_t> max_bytes = max_tensor_bytes(net, e.plan_structure().profiles);
    for (size_t b = 0; b < need.size(); ++b) need[b] = max_bytes[e.binding_ids_[b]];
  } else {
    for (size_t b = 0; b < need.size(); ++b) {
      TensorId id = e.binding_ids_[b];
      need[b] = tensor_bytes(shapes_[id], dtype_size(net.tensor(id).dtype));
    }
  }
  staging_buffers_.resize(need.size(), nullptr);
  staging_bytes_.resize(need.size(), 0);
  for (size_t b = 0; b < need.size(); ++b) {
    if (need[b] <= staging_bytes_[b] && (staging_buffers_[b] || need[b] == 0)) continue;
    release_graphs();
    allocator_->deallocate(staging_buffers_[b]);
    staging_buffers_[b] = nullptr;
    staging_bytes_[b] = 0;
    staging_buffers_[b] = allocator_->allocate(static_cast<size_t>(need[b]));
    staging_bytes_[b] = need[b];
  }
}

void ExecutionContext::build_launch_table() {
  const Engine& e = *engine_;
  const Network& net = e.network();
  const bool cuda = e.backend() == Backend::kCuda;
  if (staged()) allocate_staging();
  if (cuda && !workspace_ && e.plan_structure().memory.workspace_bytes > 0) {
    workspace_ = allocator_->allocate(static_cast<size_t>(e.plan_structure().memory.workspace_bytes));
  }
  ptr_.assign(net.tensors().size(), nullptr);
  uint8_t* arena = static_cast<uint8_t*>(cuda ? arena_ : static_cast<void*>(host_arena_.data()));
  for (const auto& t : net.tensors()) {
    if (t.kind == TensorKind::kConstant) ptr_[t.id] = e.constants_[t.id];
    int64_t off = (*offsets_)[t.id];
    if (off >= 0) ptr_[t.id] = arena + off;
  }
  const auto& layers = net.layers();
  layer_in_.resize(layers.size());
  layer_out_.resize(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    layer_in_[i].clear();
    layer_out_[i].clear();
    for (TensorId t : layers[i].inputs) layer_in_[i].push_back({nullptr, net.tensor(t).dtype, shapes_[t]});
    for (TensorId t : layers[i].outputs) layer_out_[i].push_back({nullptr, net.tensor(t).dtype, shapes_[t]});
  }
  // Outputs nobody computes (a constant or an input marked as output) are copied.
  output_copies_.clear();
  const int first_output = e.num_inputs();
  for (size_t i = 0; i < net.outputs().size(); ++i) {
    TensorId id = net.outputs()[i];
    if (e.producer_[id] < 0) output_copies_.push_back({first_output + static_cast<int>(i), id});
  }
  table_dirty_ = false;
  pointers_dirty_ = true;
}

void ExecutionContext::refresh_pointers() {
  const Engine& e = *engine_;
  const Network& net = e.network();
  const bool stage = staged();
  for (int b = 0; b < e.num_bindings(); ++b) {
    TensorId id = e.binding_ids_[b];
    // An output that is also an input or a constant keeps its source; the copy fills the output.
    if (b >= e.num_inputs() && e.producer_[id] < 0) continue;
    ptr_[id] = stage ? staging_buffers_[b] : addresses_[b];
  }
  for (const auto& v : e.views_)
    ptr_[v.view] = static_cast<uint8_t*>(ptr_[v.source]) + v.offset;  // no memory of their own
  for (int b = 0; b < e.num_bindings(); ++b) {
    KILN_CHECK(addresses_[b] != nullptr || volume(shapes_[e.binding_ids_[b]]) == 0,
               "no address set for '" << net.tensor(e.binding_ids_[b]).name
                                      << "': call set_tensor_address before enqueue");
  }
  const auto& layers = net.layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    for (size_t j = 0; j < layers[i].inputs.size(); ++j) layer_in_[i][j].data = ptr_[layers[i].inputs[j]];
    for (size_t j = 0; j < layers[i].outputs.size(); ++j) layer_out_[i][j].data = ptr_[layers[i].outputs[j]];
  }
  pointers_dirty_ = false;
}

void ExecutionContext::prepare() {
  infer_current_shapes();
  const uint64_t weights = engine_->weights_version_.load();
  if (weights != weights_version_) {  // a refit moved the reference backend's constants
    weights_version_ = weights;
    table_dirty_ = true;
  }
  if (table_dirty_) build_launch_table();
  if (pointers_dirty_) refresh_pointers();
}

// A layer whose outputs are all empty has nothing to compute and runs no kernel: its other dims
// may be huge (an empty [5, 2^56, 0] matmul), and a kernel looping over them would never end.
void ExecutionContext::run_layer(size_t i, const LaunchContext& launch) const {
  if (all_outputs_empty(layer_out_[i])) return;
  engine_->kernels_[i]->run(layer_in_[i], layer_out_[i], launch);
}

// Every layer in order, then the copies of outputs nobody computes. Also what a capture records.
void ExecutionContext::run_layers(void* stream) {
  const Engine& e = *engine_;
  const Network& net = e.network();
  LaunchContext launch;
  launch.stream = stream;
  launch.cublaslt = cublaslt_;
  launch.cudnn = cudnn_;
  launch.workspace = workspace_;
  launch.workspace_bytes = static_cast<size_t>(e.plan_structure().memory.workspace_bytes);
  const bool cuda = e.backend() == Backend::kCuda;
  if (!profiling_) {
    for (size_t i = 0; i < layer_in_.size(); ++i) run_layer(i, launch);
  } else {
    // Profiling: CUDA events around each launch (GPU times), a host clock on the reference backend.
    // On CUDA a delay kernel first holds the stream while the host enqueues every layer, so the
    // events measure each layer's GPU time without the host's launch gaps in between.
    host_times_.assign(layer_in_.size(), 0.0);
    if (cuda) gpu_delay(2000.0 + 40.0 * static_cast<double>(layer_in_.size()), stream);
    for (size_t i = 0; i < layer_in_.size(); ++i) {
      if (cuda) {
        record_event(events_[i], stream);
        run_layer(i, launch);
      } else {
        auto start = std::chrono::steady_clock::now();
        run_layer(i, launch);
        host_times_[i] =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      }
    }
    if (cuda) record_event(events_[layer_in_.size()], stream);
  }
  profiled_ = profiling_;
  const bool stage = staged();
  for (const auto& [b, id] : output_copies_) {
    void* dst = stage ? staging_buffers_[b] : addresses_[b];
    size_t bytes = static_cast<size_t>(tensor_bytes(shapes_[id], dtype_size(net.tensor(id).dtype)));
    if (dst == ptr_[id] || bytes == 0) continue;
    if (e.backend() == Backend::kCuda) {
      copy_device_async(dst, ptr_[id], bytes, stream);
    } else {
      std::memcpy(dst, ptr_[id], bytes);
    }
  }
}

// Staged bindings: caller's inputs into the context's buffers, or its outputs back out.
void ExecutionContext::copy_staged(bool inputs, void* stream) {
  const Engine& e = *engine_;
  const Network& net = e.network();
  const int begin = inputs ? 0 : e.num_inputs(), end = inputs ? e.num_inputs() : e.num_bindings();
  for (int b = begin; b < end; ++b) {
    TensorId id = e.binding_ids_[b];
    size_t bytes = static_cast<size_t>(tensor_bytes(shapes_[id], dtype_size(net.tensor(id).dtype)));
    if (bytes == 0) continue;
    if (inputs) {
      copy_device_async(staging_buffers_[b], addresses_[b], bytes, stream);
    } else {
      copy_device_async(addresses_[b], staging_buffers_[b], bytes, stream);
    }
  }
}

void ExecutionContext::enqueue(void* stream) {
  Exclusive lock(*this, "enqueue");
  if (engine_->backend() != Backend::kCuda) {
    prepare();
    run_layers(stream);
    ++stats_.plain;
    return;
  }
  DeviceGuard guard(engine_->device_);
  prepare();  // may allocate (arena, workspace, staging) on the engine's device
  const bool stage = staged();
  if (stage) copy_staged(true, stream);
  if (profiling_ || !(graphs_enabled_ && launch_graph_for_shapes(stream))) {
    run_layers(stream);
    ++stats_.plain;
  }
  if (stage) copy_staged(false, stream);
}

ExecutionContext::Graph& ExecutionContext::graph_for_shapes() {
  if (current_graph_ >= 0) return graphs_[current_graph_];
  for (size_t i = 0; i < graphs_.size(); ++i) {
    if (graphs_[i].profile == profile_ && graphs_[i].shapes == input_shapes_) {
      current_graph_ = static_cast<int>(i);
      return graphs_[i];
    }
  }
  if (graphs_.size() >= kMaxGraphs) {
    auto lru = std::min_element(graphs_.begin(), graphs_.end(),
                                [](const Graph& a, const Graph& b) { return a.last_used < b.last_used; });
    destroy_graph_exec(lru->exec);
    graphs_.erase(lru);
  }
  Graph g;
  g.profile = profile_;
  g.shapes = input_shapes_;
  graphs_.push_back(std::move(g));
  current_graph_ = static_cast<int>(graphs_.size()) - 1;
  return graphs_.back();
}

// Replays (capturing first when needed) the graph of the current shapes on `stream`. False when
// this enqueue must launch plainly instead: warm-up, a failed capture, or a capturing caller.
bool ExecutionContext::launch_graph_for_shapes(void* stream) {
  // Inside the caller's capture our plain launches become part of its graph.
  if (stream_is_capturing(stream)) return false;
  Graph& g = graph_for_shapes();
  g.last_used = ++clock_;
  if (!g.capturable) return false;
  const bool stage = staged();
  if (g.exec && (stage || g.addresses == addresses_)) {
    launch_graph(g.exec, stream);
    ++stats_.replays;
    return true;
  }
  if (g.warmups < 1) {
    ++g.warmups;
    return false;
  }
  // Capture on the context's own stream: the caller's may be the legacy default stream, which
  // cannot be captured. Nothing executes during a capture, so no fences are needed; the graph
  // is then launched on the caller's stream, ordered with its other work.
  if (!capture_stream_) capture_stream_ = create_stream();
  // A call that is illegal during capture fails (and a kernel checking it throws) or
  // invalidates the capture. Either way nothing ran: these shapes then launch plainly, where a
  // real error shows again.
  begin_capture(capture_stream_);
  std::vector<std::shared_ptr<CapturePool>> pools;
  std::string failure;
  try {
    for (const CaptureAllocator* a : engine_->capture_allocators_)
      pools.push_back(a->begin(engine_->device(), capture_stream_));
    run_layers(capture_stream_);
  } catch (const std::exception& e) {
    failure = e.what();
  }
  for (const auto& p : pools) p->end();
  void* graph = end_capture(capture_stream_);
  if (!graph || !failure.empty()) {
    destroy_graph(graph);
    g.capturable = false;
    KILN_LOG(kWarning, "CUDA graph capture failed for these input shapes of profile "
                           << profile_ << (failure.empty() ? std::string() : " (" + failure + ")")
                           << "; they run without a graph");
    return false;
  }
  try {
    if (g.exec && update_graph_exec(g.exec, graph)) {
      ++stats_.updates;
    } else {
      destroy_graph_exec(g.exec);
      g.exec = nullptr;
      g.exec = instantiate_graph(graph);
      ++stats_.instantiations;
    }
  } catch (...) {
    destroy_graph(graph);
    throw;
  }
  destroy_graph(graph);
  g.pools = std::move(pools);  // the earlier capture's pools go: the graph now uses these
  ++stats_.captures;
  g.addresses = stage ? std::vector<void*>() : addresses_;
  launch_graph(g.exec, stream);
  ++stats_.replays;
  return true;
}

void ExecutionContext::release_graphs() noexcept {
  for (auto& g : graphs_) destroy_graph_exec(g.exec);
  graphs_.clear();
  current_graph_ = -1;
}

void ExecutionContext::set_profiling(bool on) {
  Exclusive lock(*this, "set_profiling");
  if (on && engine_->backend() == Backend::kCuda && events_.empty()) {
    DeviceGuard guard(engine_->device());
    size_t n = engine_->network().layers().size() + 1;
    try {
      for (size_t i = 0; i < n; ++i) events_.push_back(create_event());
    } catch (...) {
      for (void* ev : events_) destroy_event(ev);
      events_.clear();
      throw;
    }
  }
  profiling_ = on;
  profiled_ = false;
}

std::vector<double> ExecutionContext::layer_times() {
  Exclusive lock(*this, "layer_times");
  KILN_CHECK(profiled_, "no profiled enqueue to report: call set_profiling(true), then enqueue");
  if (engine_->backend() != Backend::kCuda) return host_times_;
  DeviceGuard guard(engine_->device());
  std::vector<double> times(engine_->network().layers().size());
  for (size_t i = 0; i < times.size(); ++i) times[i] = event_elapsed_ms(events_[i], events_[i + 1]);
  return times;
}

std::vector<LayerCost> ExecutionContext::layer_costs() {
  Exclusive lock(*this, "layer_costs");
  infer_current_shapes();
  const Network& net = engine_->network();
  std::vector<LayerCost> costs;
  costs.reserve(net.layers().size());
  auto descs = [&](const std::vector<TensorId>& ids) {
    std::vector<TensorDesc> out;
    for (TensorId t : ids) {
      if (t >= 0) out.push_back({net.tensor(t).dtype, shapes_[t]});
    }
    return out;
  };
  for (const Layer& l : net.layers()) costs.push_back(layer_cost(l, descs(l.inputs), descs(l.outputs)));
  return costs;
}

int64_t ExecutionContext::device_bytes() const {
  if (engine_->backend() != Backend::kCuda) return 0;
  int64_t staging = 0;
  for (int64_t b : staging_bytes_) staging += b;
  return arena_capacity_ + (workspace_ ? engine_->plan_structure().memory.workspace_bytes : 0) + staging;
}

}  // namespace kiln
