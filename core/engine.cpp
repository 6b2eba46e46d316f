#include "core/engine.h"

#include <chrono>
#include <cstring>
#include <sstream>

#include "core/error.h"
#include "core/op_schema.h"
#include "kernels/device.h"

namespace kiln {

// ---- Engine ------------------------------------------------------------------------------------

std::shared_ptr<Engine> Engine::create(Plan plan, Backend backend) {
  return std::shared_ptr<Engine>(new Engine(std::move(plan), backend));
}

std::shared_ptr<Engine> Engine::create(const std::vector<uint8_t>& plan_bytes, Backend backend) {
  return create(Plan::deserialize(plan_bytes), backend);
}

Engine::Engine(Plan plan, Backend backend) : plan_(std::move(plan)), backend_(backend) {
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
  }
  constants_.assign(net.tensors().size(), nullptr);
  producer_ = net.producers();
  try {
    for (const auto& t : net.tensors()) {
      if (t.kind != TensorKind::kConstant) continue;
      if (backend_ == Backend::kCuda) {
        constants_[t.id] = device_alloc(t.data->size());
        copy_to_device(constants_[t.id], t.data->data(), t.data->size());
      } else {
        constants_[t.id] = const_cast<uint8_t*>(t.data->data());
      }
    }
    for (const auto& l : net.layers()) {
      kernels_.push_back(create_kernel(l, backend_));
      uses_cudnn_ |= kernels_.back()->uses_cudnn();
    }
  } catch (...) {
    if (backend_ == Backend::kCuda) {
      for (void* p : constants_) device_free(p);
    }
    throw;
  }
}

Engine::~Engine() {
  if (backend_ == Backend::kCuda) {
    for (void* p : constants_) device_free(p);
  }
}

std::unique_ptr<ExecutionContext> Engine::create_execution_context() const {
  return std::unique_ptr<ExecutionContext>(new ExecutionContext(shared_from_this()));
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
  TensorId id = network().find_tensor(name);
  KILN_CHECK(
      id >= 0 && (network().tensor(id).kind == TensorKind::kInput || network().is_output(id)),
      "'" << name << "' is not an input or output of this engine (inputs: " << [&] {
        std::string s;
        for (const auto& n : input_names()) s += (s.empty() ? "" : ", ") + n;
        return s;
      }() << ")");
  return network().tensor(id);
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

int64_t Engine::device_bytes() const {
  if (backend_ != Backend::kCuda) return 0;
  int64_t bytes = 0;
  for (const auto& t : network().tensors()) {
    if (t.kind == TensorKind::kConstant) bytes += static_cast<int64_t>(t.data->size());
  }
  return bytes;
}

// ---- ExecutionContext -----------------------------------------------------------------------------

ExecutionContext::ExecutionContext(std::shared_ptr<const Engine> engine) : engine_(std::move(engine)) {
  const Plan& plan = engine_->plan();
  for (TensorId id : plan.network.inputs()) {
    const Tensor& t = plan.network.tensor(id);
    if (is_static(t.dims)) input_shapes_[t.name] = t.dims;
  }
  if (engine_->backend() == Backend::kCuda) {
    try {
      arena_ = device_alloc(static_cast<size_t>(plan.memory.arena_bytes));
      workspace_ = device_alloc(static_cast<size_t>(plan.memory.workspace_bytes));
      cublaslt_ = create_cublaslt_handle();
      if (engine_->uses_cudnn_) cudnn_ = create_cudnn_handle();
    } catch (...) {
      destroy_cublaslt_handle(cublaslt_);
      device_free(arena_);
      device_free(workspace_);
      throw;
    }
  } else {
    try {
      host_arena_.resize(static_cast<size_t>(plan.memory.arena_bytes));
    } catch (const std::bad_alloc&) {
      KILN_FAIL("cannot allocate " << plan.memory.arena_bytes
                                   << " bytes of host memory for the activation arena; "
                                   << "lower the profile's max shapes");
    }
  }
}

ExecutionContext::~ExecutionContext() {
  for (void* ev : events_) destroy_event(ev);
  if (engine_->backend() == Backend::kCuda) {
    destroy_cudnn_handle(cudnn_);
    destroy_cublaslt_handle(cublaslt_);
    device_free(workspace_);
    device_free(arena_);
  }
}

void ExecutionContext::set_optimization_profile(int index) {
  int n = engine_->num_profiles();
  KILN_CHECK(index >= 0 && (index < n || (n == 0 && index == 0)),
             "optimization profile " << index << " does not exist; the engine has " << n);
  profile_ = index;
  shapes_dirty_ = true;
}

void ExecutionContext::set_input_shape(const std::string& name, const Dims& dims) {
  const Tensor& t = engine_->binding(name);
  KILN_CHECK(t.kind == TensorKind::kInput, "'" << name << "' is an output; only input shapes can be set");
  KILN_CHECK(dims.size() == t.dims.size(), "input '" << name << "': shape " << to_string(dims) << " has rank "
                                                     << dims.size() << ", expected " << to_string(t.dims));
  const auto& profiles = engine_->plan().profiles;
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
  input_shapes_[name] = dims;
  shapes_dirty_ = true;
}

void ExecutionContext::infer_current_shapes() {
  if (!shapes_dirty_) return;
  const Network& net = engine_->network();
  for (TensorId id : net.inputs()) {
    const std::string& name = net.tensor(id).name;
    KILN_CHECK(input_shapes_.count(name), "input '" << name << "' is dynamic: call set_input_shape first");
  }
  shapes_ = infer_shapes(net, input_shapes_);
  const MemoryPlan& mem = engine_->plan().memory;
  for (const auto& t : net.tensors()) {
    if (mem.offsets[t.id] < 0) continue;
    int64_t bytes = volume(shapes_[t.id]) * static_cast<int64_t>(dtype_size(t.dtype));
    KILN_CHECK(bytes <= mem.sizes[t.id], "tensor '" << t.name << "' needs " << bytes
                                                    << " bytes for these input shapes, the plan reserved "
                                                    << mem.sizes[t.id]
                                                    << "; use input shapes inside the profile");
  }
  shapes_dirty_ = false;
}

Dims ExecutionContext::tensor_shape(const std::string& name) {
  const Tensor& t = engine_->binding(name);
  infer_current_shapes();
  return shapes_[t.id];
}

void ExecutionContext::set_tensor_address(const std::string& name, void* data) {
  engine_->binding(name);
  addresses_[name] = data;
}

void ExecutionContext::enqueue(void* stream) {
  infer_current_shapes();
  const Engine& e = *engine_;
  const Network& net = e.network();
  const bool cuda = e.backend() == Backend::kCuda;
  std::vector<void*> ptr(net.tensors().size(), nullptr);
  for (const auto& t : net.tensors()) {
    if (t.kind == TensorKind::kConstant) ptr[t.id] = e.constants_[t.id];
    int64_t off = e.plan().memory.offsets[t.id];
    if (off >= 0)
      ptr[t.id] = static_cast<uint8_t*>(cuda ? arena_ : static_cast<void*>(host_arena_.data())) + off;
  }
  auto bind = [&](TensorId id) {
    const Tensor& t = net.tensor(id);
    auto it = addresses_.find(t.name);
    bool empty = volume(shapes_[id]) == 0;
    KILN_CHECK((it != addresses_.end() && it->second != nullptr) || empty,
               "no address set for '" << t.name << "': call set_tensor_address before enqueue");
    return it == addresses_.end() ? nullptr : it->second;
  };
  for (TensorId id : net.inputs()) ptr[id] = bind(id);
  const std::vector<int>& producer = e.producer_;
  std::vector<void*> out_ptr;
  for (TensorId id : net.outputs()) out_ptr.push_back(bind(id));
  // A layer writing a network output writes straight into the caller's buffer.
  for (size_t i = 0; i < net.outputs().size(); ++i) {
    TensorId id = net.outputs()[i];
    if (producer[id] >= 0) ptr[id] = out_ptr[i];
  }

  LaunchContext launch;
  launch.stream = stream;
  launch.cublaslt = cublaslt_;
  launch.cudnn = cudnn_;
  launch.workspace = workspace_;
  launch.workspace_bytes = static_cast<size_t>(e.plan().memory.workspace_bytes);
  std::unique_ptr<DeviceGuard> guard;
  if (cuda) guard = std::make_unique<DeviceGuard>(e.device_);

  const auto& layers = net.layers();
  if (profiling_) host_times_.assign(layers.size(), 0.0);
  for (size_t i = 0; i < layers.size(); ++i) {
    std::vector<TensorView> in, out;
    for (TensorId t : layers[i].inputs) in.push_back({ptr[t], net.tensor(t).dtype, shapes_[t]});
    for (TensorId t : layers[i].outputs) out.push_back({ptr[t], net.tensor(t).dtype, shapes_[t]});
    if (!profiling_) {
      e.kernels_[i]->run(in, out, launch);
    } else if (cuda) {
      record_event(events_[i], stream);
      e.kernels_[i]->run(in, out, launch);
    } else {
      auto start = std::chrono::steady_clock::now();
      e.kernels_[i]->run(in, out, launch);
      host_times_[i] =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    }
  }
  if (profiling_ && cuda) record_event(events_[layers.size()], stream);
  profiled_ = profiling_;
  // Outputs nobody computes (a constant or an input marked as output) are copied.
  for (size_t i = 0; i < net.outputs().size(); ++i) {
    TensorId id = net.outputs()[i];
    if (producer[id] >= 0 || ptr[id] == out_ptr[i]) continue;
    size_t bytes = static_cast<size_t>(volume(shapes_[id])) * dtype_size(net.tensor(id).dtype);
    if (cuda) {
      copy_device_async(out_ptr[i], ptr[id], bytes, stream);
    } else if (bytes) {
      std::memcpy(out_ptr[i], ptr[id], bytes);
    }
  }
}

void ExecutionContext::set_profiling(bool on) {
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
  KILN_CHECK(profiled_, "no profiled enqueue to report: call set_profiling(true), then enqueue");
  if (engine_->backend() != Backend::kCuda) return host_times_;
  DeviceGuard guard(engine_->device());
  std::vector<double> times(engine_->network().layers().size());
  for (size_t i = 0; i < times.size(); ++i) times[i] = event_elapsed_ms(events_[i], events_[i + 1]);
  return times;
}

int64_t ExecutionContext::device_bytes() const {
  if (engine_->backend() != Backend::kCuda) return 0;
  const MemoryPlan& mem = engine_->plan().memory;
  return mem.arena_bytes + mem.workspace_bytes;
}

}  // namespace kiln
