// libkiln_runtime: Kiln engines inside torch.
//
// torch.classes.kiln.Engine holds a kiln::Engine built from plan bytes and pickles to a
// versioned list of strings; torch.ops.kiln.execute_engine(Tensor[] inputs, Engine) runs it on
// torch tensors. Outputs come from torch's allocator (the caching allocator on CUDA) and CUDA
// work is enqueued on torch's current stream of the engine's device, never synchronized. The
// fake (meta) implementation that lets torch.export trace the op lives in py/kiln/runtime.py.
#include <torch/custom_class.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/engine.h"
#include "core/plan.h"
#include "ir/error.h"
#include "ir/logging.h"
#include "ir/op_schema.h"
#include "kernels/device.h"
#include "kernels/kernel.h"
#include "runtime/runtime.h"

#include "ir/base64.h"

#ifdef KILN_RUNTIME_CUDA
#include <ATen/Context.h>
#include <ATen/cuda/MemPool.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace kiln::runtime {
namespace {

// Version of the pickled state below. Bump it when the state changes shape or meaning.
// Format 2 (written): ("2", the plan's bytes as a 1-D uint8 CPU tensor, backend, device index):
// archives store the plan as raw tensor data, read as fast as weights.
// Format 1 (still read): ["1", base64(plan bytes), backend, device index as text]. Base64 text
// survived Python pickling, but torch's unpickler reads a string of hundreds of MB slowly (a
// BERT-base plan took 10 s to load from a .pt2 on a 2-core CPU).
constexpr int64_t kRuntimeFormatVersion = 2;
using EngineState = std::tuple<std::string, at::Tensor, std::string, int64_t>;

// The plan of a saved engine, decoded from its base64 text.
std::string decode_plan(const std::string& text) {
  size_t bad_at = 0;
  std::optional<std::string> plan = base64_decode(text, &bad_at);
  KILN_CHECK(plan.has_value(), "saved Kiln engine: the plan is not valid base64 ("
                                   << (bad_at == text.size() ? "length " + std::to_string(text.size())
                                                             : "byte " + std::to_string(bad_at))
                                   << ")");
  return std::move(*plan);
}

Backend parse_backend(const std::string& s) {
  if (s == "cuda") return Backend::kCuda;
  if (s == "reference" || s == "cpu") return Backend::kReference;
  KILN_FAIL("unknown Kiln backend '" << s << "': use 'cuda' or 'reference'");
}

std::string torch_name(at::ScalarType t) { return "torch." + c10::getDtypeNames(t).first; }

// Runs a callable and turns kiln::Error into a torch error carrying the same message, so that
// Python sees RuntimeError (torch's c10::Error) with Kiln's text.
template <typename F>
auto rethrow_as_torch(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const kiln::Error& e) {
    // "Kiln: ..." so that callers (kiln.compile's modules) can tell Kiln's errors from torch's.
    const char* what = e.what();
    TORCH_CHECK(false, std::strncmp(what, "Kiln", 4) == 0 ? "" : "Kiln: ", what);
  }
}

#ifdef KILN_RUNTIME_CUDA
// Engine weights, activation arenas, workspaces and staging buffers come from torch's CUDA
// caching allocator: they count in torch.cuda.memory_allocated()/max_memory_allocated() and
// share torch's pool instead of holding cudaMalloc memory beside it.
class TorchCudaAllocator final : public DeviceAllocator {
 public:
  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    // A process that loads a compiled module before touching CUDA through torch (torch.jit.load
    // in a fresh process, a C++ app) has no caching allocator yet: initialize torch's CUDA first.
    at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
    return c10::cuda::CUDACachingAllocator::raw_alloc(bytes);
  }
  void deallocate(void* p) noexcept override {
    if (!p) return;
    // The block goes straight back to torch's pool, while work enqueued on any stream may still
    // use it: wait for the device first (engines and contexts are freed rarely).
    try {
      c10::cuda::device_synchronize();
      c10::cuda::CUDACachingAllocator::raw_delete(p);
    } catch (...) {
      // At interpreter exit CUDA may be gone already; the memory goes with the process.
    }
  }
};

std::shared_ptr<DeviceAllocator> torch_cuda_allocator() {
  static std::shared_ptr<DeviceAllocator> a = std::make_shared<TorchCudaAllocator>();
  return a;
}
#else
std::shared_ptr<DeviceAllocator> torch_cuda_allocator() { return nullptr; }
#endif

class TorchEngine : public torch::CustomClassHolder {
 public:
  // `device` < 0: the current CUDA device (CUDA engines); ignored by the reference backend.
  TorchEngine(const std::string& plan_bytes, const std::string& backend, int64_t device = -1)
      : TorchEngine(rethrow_as_torch([&] {
                      return Plan::deserialize(reinterpret_cast<const uint8_t*>(plan_bytes.data()),
                                               plan_bytes.size());
                    }),
                    backend, device) {}

  // From a plan in memory (a build that just finished): nothing is serialized or parsed. The
  // engine keeps the plan; pickling serializes it then.
  TorchEngine(Plan plan, const std::string& backend, int64_t device = -1) {
    backend_ = backend;
    device_ = device;
    if (plan.weights_stripped()) {  // saved with strip_weights: the engine comes with the weights
      pending_ = std::make_shared<Plan>(std::move(plan));
    } else {
      create_engine(std::move(plan));
    }
    const Network& net = network();
    for (TensorId id : net.inputs()) input_names_.push_back(net.tensor(id).name);
    for (TensorId id : net.outputs()) output_names_.push_back(net.tensor(id).name);
    for (const auto& n : input_names_) input_types_.push_back(torch_dtype(binding(n).dtype));
    for (const auto& n : output_names_) output_types_.push_back(torch_dtype(binding(n).dtype));
  }

  // CUDA graphs for this engine's calls (default on; KILN_CUDA_GRAPHS=0 turns them off
  // process-wide). A runtime option: not saved with the engine.
  void set_cuda_graphs(bool enabled) { cuda_graphs_ = enabled; }
  bool cuda_graphs() const { return cuda_graphs_; }

  // ExecutionContext::GraphStats summed over the pooled contexts (contexts in use right now are
  // not counted): how the calls so far ran.
  c10::Dict<std::string, int64_t> graph_stats() {
    ExecutionContext::GraphStats sum;
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& ctx : pool_) {
      const auto& s = ctx->graph_stats();
      sum.captures += s.captures;
      sum.instantiations += s.instantiations;
      sum.updates += s.updates;
      sum.replays += s.replays;
      sum.plain += s.plain;
    }
    c10::Dict<std::string, int64_t> d;
    d.insert("captures", sum.captures);
    d.insert("instantiations", sum.instantiations);
    d.insert("updates", sum.updates);
    d.insert("replays", sum.replays);
    d.insert("plain", sum.plain);
    return d;
  }

  std::vector<std::string> input_names() const { return input_names_; }
  std::vector<std::string> output_names() const { return output_names_; }
  // Where the engine runs, in the words kiln.Engine uses too: "cuda" or "cpu", and the CUDA
  // device index (-1 on the CPU reference backend).
  std::string device_type() const { return cuda() ? "cuda" : "cpu"; }
  int64_t device_index() const { return cuda() ? device() : -1; }
  // The older names (the engine core's words): "cuda"/"reference" and the device index.
  std::string backend() const {
    return engine_ ? backend_name(engine_->backend()) : backend_name(parse_backend(backend_));
  }
  int64_t device() const {
    return engine_ ? engine_->device() : (cuda() ? std::max<int64_t>(device_, 0) : -1);
  }
  bool cuda() const {
    return engine_ ? engine_->backend() == Backend::kCuda : parse_backend(backend_) == Backend::kCuda;
  }
  std::vector<std::string> describe() const { return engine().describe_layers(); }
  // kiln.save(strip_weights=True): the next pickling leaves the weights out.
  void set_strip_weights(bool strip) { strip_on_save_ = strip; }
  // The plan's bytes as a CPU uint8 tensor (kiln.plans reads it; no base64 to decode).
  at::Tensor serialized_plan() const {
    const std::vector<uint8_t> bytes = plan().serialize();
    at::Tensor t = at::empty({static_cast<int64_t>(bytes.size())}, at::TensorOptions().dtype(at::kByte));
    std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    return t;
  }
  std::vector<std::string> input_dtypes() const { return dtypes(input_names_); }
  std::vector<std::string> output_dtypes() const { return dtypes(output_names_); }
  // Binding dims as built, -1 for dynamic dims.
  std::vector<std::vector<int64_t>> input_dims() const { return dims(input_names_); }
  std::vector<std::vector<int64_t>> output_dims() const { return dims(output_names_); }

  // Output shapes for concrete input shapes (the engine's shape inference; no profile check).
  std::vector<std::vector<int64_t>> output_shapes(
      const std::vector<std::vector<int64_t>>& input_shapes) const {
    return rethrow_as_torch([&] {
      KILN_CHECK(input_shapes.size() == input_names_.size(), "Kiln engine takes "
                                                                 << input_names_.size() << " inputs, got "
                                                                 << input_shapes.size() << " shapes");
      std::map<std::string, Dims> shapes;
      for (size_t i = 0; i < input_names_.size(); ++i) shapes[input_names_[i]] = input_shapes[i];
      std::vector<Dims> all = infer_shapes(network(), shapes);
      std::vector<std::vector<int64_t>> out;
      for (const auto& name : output_names_) out.push_back(all[binding(name).id]);
      return out;
    });
  }

  // Refit (kiln.refit): the weights the engine's constants derive from, and new values for them
  // (every weight, by name, of the engine's dtype and shape; any device). Waits for the device.
  std::vector<std::string> weight_names() const {
    std::vector<std::string> out;
    for (const auto& w : weights()) out.push_back(w.name);
    return out;
  }
  std::vector<std::string> weight_dtypes() const {
    std::vector<std::string> out;
    for (const auto& w : weights()) out.push_back(dtype_name(w.dtype));
    return out;
  }
  // The weights refit needs on the host (a transform reads them); the others may stay on the GPU.
  std::vector<std::string> host_weight_names() {
    const std::set<std::string>& names = host_read();
    return {names.begin(), names.end()};
  }
  const std::set<std::string>& host_read() {
    std::call_once(host_read_once_,
                   [&] { host_read_ = rethrow_as_torch([&] { return host_read_weights(network()); }); });
    return host_read_;
  }
  std::vector<std::vector<int64_t>> weight_dims() const {
    std::vector<std::vector<int64_t>> out;
    for (const auto& w : weights()) out.push_back(w.dims);
    return out;
  }
  // The refittable weights, from the lineage once (the network's structure never changes).
  const std::vector<WeightSpec>& weights() const {
    std::call_once(weights_once_,
                   [&] { weights_ = rethrow_as_torch([&] { return refittable_weights(network()); }); });
    return weights_;
  }

  void refit(const std::vector<std::string>& names, const std::vector<at::Tensor>& values) {
    TORCH_CHECK(names.size() == values.size(), "Kiln refit: ", names.size(), " names for ", values.size(),
                " tensors");
    std::map<std::string, WeightSpec> specs;
    for (const auto& w : weights()) specs[w.name] = w;
    std::map<std::string, ConstantValue> weights;
    // Weights already on this engine's GPU that some constant holds unchanged are copied there
    // device to device; only those a transform reads (BatchNorm folding, a layout, a dtype) come
    // to the host.
    std::map<std::string, const void*> on_device;
    std::vector<at::Tensor> keep;  // the tensors read in place, alive until the refit is done
    keep.reserve(names.size());
    const bool device_refit = engine_ && engine_->backend() == Backend::kCuda;
    const std::set<std::string>& host_read_names = host_read();
    for (size_t i = 0; i < names.size(); ++i) {
      const at::Tensor& v = values[i];
      auto it = specs.find(names[i]);
      if (it != specs.end()) {
        TORCH_CHECK(v.scalar_type() == torch_dtype(it->second.dtype), "Kiln refit: weight '", names[i],
                    "' is ", v.scalar_type(), " but the engine was built from ", dtype_name(it->second.dtype),
                    ": pass it in that dtype");
        if (device_refit && v.is_cuda() && v.device().index() == engine_->device() &&
            !host_read_names.count(names[i])) {
          TORCH_CHECK(v.sizes().vec() == it->second.dims, "Kiln refit: weight '", names[i], "' has shape ",
                      v.sizes(), ", the engine was built for ", to_string(it->second.dims));
          keep.push_back(v.detach().contiguous());
          on_device[names[i]] = keep.back().data_ptr();
          continue;
        }
      }
      // Read in place (the replay copies what a constant keeps): `keep` holds it for the call.
      keep.push_back(v.detach().contiguous().to(at::kCPU));
      const at::Tensor& host = keep.back();
      const DataType dtype = it != specs.end() ? it->second.dtype : DataType::kFloat32;
      ConstantValue value{dtype, host.sizes().vec(), nullptr};
      value.borrowed = static_cast<const uint8_t*>(host.data_ptr());
      value.borrowed_size = host.nbytes();
      weights[names[i]] = std::move(value);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (pending_) {  // a module saved without its weights gets them: the engine can be created
      Plan plan = *pending_;
      rethrow_as_torch([&] {
        refit_plan(plan, weights);
        return 0;
      });
      create_engine(std::move(plan));
      pending_.reset();
      return;
    }
    rethrow_as_torch([&] {
      engine_->refit(weights, on_device);
      return 0;
    });
  }

  EngineState serialize() const {
    std::vector<uint8_t> bytes = plan().serialize(strip_on_save_);
    auto* held = new std::vector<uint8_t>(std::move(bytes));
    at::Tensor t = at::from_blob(
        held->data(), {static_cast<int64_t>(held->size())}, [held](void*) { delete held; },
        at::TensorOptions().dtype(at::kByte));
    return {std::to_string(kRuntimeFormatVersion), t, backend(), device()};
  }

  // Either format (see kRuntimeFormatVersion); anything else is refused as corrupt or foreign.
  static c10::intrusive_ptr<TorchEngine> deserialize(const c10::IValue& state) {
    if (state.isTuple()) {
      const auto& e = state.toTupleRef().elements();
      TORCH_CHECK(e.size() == 4 && e[0].isString(), "saved Kiln engine: its state has ", e.size(),
                  " fields, expected 4: the file is corrupt");
      const std::string version = e[0].toStringRef();
      TORCH_CHECK(version == std::to_string(kRuntimeFormatVersion), "this Kiln runtime reads engine format ",
                  kRuntimeFormatVersion, " (and 1); the saved module has format ", version,
                  ": load it with the Kiln version that saved it, or recompile the model with this one");
      TORCH_CHECK(e[1].isTensor() && e[2].isString() && e[3].isInt(),
                  "saved Kiln engine (format 2): its fields are not (plan bytes, backend, device): the file "
                  "is corrupt");
      const at::Tensor bytes = e[1].toTensor().contiguous().cpu();
      TORCH_CHECK(bytes.scalar_type() == at::kByte && bytes.dim() == 1,
                  "saved Kiln engine: the plan is not a 1-D uint8 tensor: the file is corrupt");
      // Parsed where the unpickler put the bytes (no copy of a plan of hundreds of MB).
      return make(bytes.data_ptr<uint8_t>(), static_cast<size_t>(bytes.numel()), e[2].toStringRef(),
                  e[3].toInt());
    }
    TORCH_CHECK(state.isList(), "saved Kiln engine: its state is a ", state.tagKind(),
                ", not a Kiln engine's: the file is corrupt");
    std::vector<std::string> fields;
    for (const c10::IValue& v : state.toListRef()) {
      TORCH_CHECK(v.isString(), "saved Kiln engine (format 1): a field is not text: the file is corrupt");
      fields.push_back(v.toStringRef());
    }
    return deserialize_format1(fields);
  }

  static c10::intrusive_ptr<TorchEngine> deserialize_format1(const std::vector<std::string>& state) {
    TORCH_CHECK(!state.empty(), "saved Kiln engine: the state is empty");
    int64_t version = -1;
    try {
      version = std::stoll(state[0]);
    } catch (const std::exception&) {
    }
    TORCH_CHECK(version == 1, "this Kiln runtime reads engine format ", kRuntimeFormatVersion,
                " (and 1); the saved module has format ", state[0],
                ": load it with the Kiln version that saved it, or recompile the model with this one");
    TORCH_CHECK(state.size() == 4, "saved Kiln engine (format 1) has ", state.size(),
                " fields, expected 4: the file is corrupt");
    std::string plan = rethrow_as_torch([&] { return decode_plan(state[1]); });
    int64_t saved = -2;
    try {
      size_t used = 0;
      saved = std::stoll(state[3], &used);
      if (used != state[3].size()) saved = -2;
    } catch (const std::exception&) {  // std::stoll's invalid_argument / out_of_range
    }
    TORCH_CHECK(saved >= -1, "saved Kiln engine: the device field '", state[3],
                "' is not a device index: the file is corrupt");
    return make(reinterpret_cast<const uint8_t*>(plan.data()), plan.size(), state[2], saved);
  }

  static c10::intrusive_ptr<TorchEngine> make(const uint8_t* plan, size_t size, const std::string& backend,
                                              int64_t saved) {
    TORCH_CHECK(saved >= -1, "saved Kiln engine: the device field '", saved,
                "' is not a device index: the file is corrupt");
    // Keep the saved CUDA device when it exists here, else take the current one.
    const int64_t device = backend == "cuda" && saved >= 0 && saved < cuda_device_count() ? saved : -1;
    return c10::make_intrusive<TorchEngine>(rethrow_as_torch([&] { return Plan::deserialize(plan, size); }),
                                            backend, device);
  }

  // The per-call path: no lookups by name, shape inference only when input shapes change, and
  // (CUDA) a graph replay with the bindings staged through the context's own buffers.
  std::vector<at::Tensor> execute(at::TensorList inputs) {
    const bool cuda = engine().backend() == Backend::kCuda;
    TORCH_CHECK(inputs.size() == input_names_.size(), "Kiln engine takes ", input_names_.size(), " inputs (",
                c10::Join(", ", input_names_), "), got ", inputs.size());
    const at::Device device =
        cuda ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(engine_->device())) : at::Device(at::kCPU);
    std::vector<at::Tensor> args;  // contiguous inputs; they must outlive the enqueue
    args.reserve(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      const at::Tensor& t = inputs[i];
      if (C10_UNLIKELY(t.scalar_type() != input_types_[i] || t.device() != device)) check_input(i, t, device);
      args.push_back(t.contiguous());
    }

#ifdef KILN_RUNTIME_CUDA
    std::optional<c10::cuda::CUDAGuard> device_guard;
    if (cuda) device_guard.emplace(device.index());
#else
    TORCH_CHECK(
        !cuda, "this libkiln_runtime was built against a torch without CUDA; it runs only reference engines");
#endif
    ContextLease ctx(*this);
    std::vector<at::Tensor> outputs;
    outputs.reserve(output_names_.size());
    rethrow_as_torch([&] {
      select_profile(*ctx, args);
      if (cuda) ctx->set_cuda_graphs(cuda_graphs_);
      const int num_inputs = static_cast<int>(args.size());
      for (int i = 0; i < num_inputs; ++i) ctx->set_tensor_address(i, args[i].data_ptr());
      for (size_t o = 0; o < output_names_.size(); ++o) {
        const int b = num_inputs + static_cast<int>(o);
        at::Tensor out =
            at::empty(ctx->tensor_shape(b), at::TensorOptions().dtype(output_types_[o]).device(device));
        ctx->set_tensor_address(b, out.data_ptr());
        outputs.push_back(std::move(out));
      }
      void* stream = nullptr;
#ifdef KILN_RUNTIME_CUDA
      if (cuda) stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
#endif
      ctx->enqueue(stream);
      return 0;
    });
    return outputs;
  }

 private:
  // An execution context borrowed from the pool for one call: concurrent callers each hold
  // their own, and a context goes back to the pool when the call ends (also on errors).
  class ContextLease {
   public:
    explicit ContextLease(TorchEngine& owner) : owner_(owner) {
      {
        std::lock_guard<std::mutex> lock(owner_.mutex_);
        if (!owner_.pool_.empty()) {
          ctx_ = std::move(owner_.pool_.back());
          owner_.pool_.pop_back();
        }
      }
      if (!ctx_) {
        ctx_ = rethrow_as_torch([&] { return owner_.engine_->create_execution_context(); });
        // Torch hands a fresh output tensor (and often fresh inputs) to every call: staging
        // keeps graph replays valid without a re-capture per call, for two small copies.
        ctx_->set_binding_staging(true);
      }
    }
    ~ContextLease() {
      std::lock_guard<std::mutex> lock(owner_.mutex_);
      if (owner_.pool_.size() < kMaxPooledContexts) owner_.pool_.push_back(std::move(ctx_));
    }
    ExecutionContext* operator->() { return ctx_.get(); }
    ExecutionContext& operator*() { return *ctx_; }

   private:
    TorchEngine& owner_;
    std::unique_ptr<ExecutionContext> ctx_;
  };

  // Contexts kept for reuse; more concurrent callers than this still run, with fresh contexts.
  static constexpr size_t kMaxPooledContexts = 8;

  // Sets the input shapes in the context's current profile when it holds them (the common
  // case: no exception, nothing re-inferred), else in the first profile that holds them all.
  // When none does, the error is profile 0's (it names the input, its shape and the range).
  void select_profile(ExecutionContext& ctx, const std::vector<at::Tensor>& args) const {
    auto try_profile = [&](int p) {
      ctx.set_optimization_profile(p);
      for (size_t i = 0; i < args.size(); ++i) {
        ctx.set_input_shape(static_cast<int>(i), Dims(args[i].sizes().begin(), args[i].sizes().end()));
      }
    };
    const int current = ctx.optimization_profile();
    std::string first_error;
    try {
      try_profile(current);
      return;
    } catch (const kiln::Error& e) {
      if (current == 0) first_error = e.what();
    }
    for (int p = 0; p < engine().num_profiles(); ++p) {
      if (p == current) continue;
      try {
        try_profile(p);
        return;
      } catch (const kiln::Error& e) {
        if (p == 0) first_error = e.what();
      }
    }
    throw kiln::Error(first_error);
  }

  void check_input(size_t i, const at::Tensor& t, const at::Device& device) const {
    const std::string& name = input_names_[i];
    TORCH_CHECK(t.scalar_type() == input_types_[i], "Kiln engine input '", name, "' has dtype ",
                torch_name(t.scalar_type()), ", the engine expects ", torch_name(input_types_[i]),
                "; convert it first (.to(", torch_name(input_types_[i]), "))");
    TORCH_CHECK(t.device() == device, "Kiln engine input '", name, "' is on ", t.device(), ", the ",
                backend(), " engine runs on ", device, "; move it there first (.to(\"", device.str(), "\"))");
  }

  std::vector<std::string> dtypes(const std::vector<std::string>& names) const {
    std::vector<std::string> out;
    for (const auto& n : names) out.push_back(dtype_name(binding(n).dtype));
    return out;
  }
  std::vector<std::vector<int64_t>> dims(const std::vector<std::string>& names) const {
    std::vector<std::vector<int64_t>> out;
    for (const auto& n : names) out.push_back(binding(n).dims);
    return out;
  }

  void create_engine(Plan plan) {
    rethrow_as_torch([&] {
      Backend b = parse_backend(backend_);
      auto load = [&] {
        return Engine::create(std::move(plan), b, b == Backend::kCuda ? torch_cuda_allocator() : nullptr);
      };
      if (b == Backend::kCuda && device_ >= 0) {
        KILN_CHECK(device_ < cuda_device_count(), "cannot create a Kiln CUDA engine on device "
                                                      << device_ << ": " << cuda_device_count()
                                                      << " CUDA device(s) are visible");
        DeviceGuard guard(static_cast<int>(device_));
        engine_ = load();
      } else {
        engine_ = load();
      }
      return 0;
    });
  }

  const Plan& plan() const { return engine_ ? engine_->plan() : *pending_; }
  const Network& network() const { return engine_ ? engine_->network() : pending_->network; }
  const Tensor& binding(const std::string& name) const {
    return network().tensor(network().find_tensor(name));
  }
  // The engine, or an error saying how to give a module saved without its weights its weights.
  Engine& engine() const {
    TORCH_CHECK(engine_ != nullptr,
                "this Kiln engine was saved without its weights (kiln.save(..., strip_weights=True)): "
                "load the module with kiln.load(path, weights=state_dict) (or pass them to "
                "kiln.refitting.refit_engines(module, state_dict)) before running it");
    return *engine_;
  }

  std::string backend_;  // as constructed: "cuda" or "reference"
  int64_t device_ = -1;
  std::shared_ptr<Plan> pending_;  // a plan without its weights, until refit creates engine_
  mutable std::once_flag weights_once_;
  mutable std::vector<WeightSpec> weights_;  // weights()
  std::once_flag host_read_once_;
  std::set<std::string> host_read_;  // weights a transform reads (refit takes them on the host)
  std::atomic<bool> strip_on_save_{false};
  std::shared_ptr<Engine> engine_;
  std::vector<std::string> input_names_, output_names_;
  std::vector<at::ScalarType> input_types_, output_types_;
  std::atomic<bool> cuda_graphs_{true};  // read by every call, set rarely
  std::mutex mutex_;
  std::vector<std::unique_ptr<ExecutionContext>> pool_;
};

std::vector<at::Tensor> execute_engine(at::TensorList inputs, c10::intrusive_ptr<TorchEngine> engine) {
  return engine->execute(inputs);
}

// The backward of an engine call, attached to its outputs when an input requires grad: engines
// compute the forward pass only, so asking for gradients through one is an error, not a
// silently missing .grad.
struct EngineBackward final : torch::autograd::Node {
  torch::autograd::variable_list apply(torch::autograd::variable_list&&) override {
    TORCH_CHECK(false,
                "Kiln: gradients cannot flow through a Kiln engine (kiln::execute_engine computes the "
                "forward pass only). Differentiate the original PyTorch module instead, or compile with "
                "torch.compile(backend=\"kiln\"), which runs calls that need autograd in eager PyTorch.");
  }
  std::string name() const override { return "KilnEngineBackward"; }
};

// Autograd kernel: runs the call below autograd; outputs get an EngineBackward history only when
// grad mode is on and an input requires grad (then .backward() raises, naming Kiln).
std::vector<at::Tensor> execute_engine_autograd(c10::DispatchKeySet keys, at::TensorList inputs,
                                                c10::intrusive_ptr<TorchEngine> engine) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("kiln::execute_engine", "")
          .typed<std::vector<at::Tensor>(at::TensorList, c10::intrusive_ptr<TorchEngine>)>();
  std::vector<at::Tensor> outputs;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    outputs = op.redispatch(keys & c10::after_autograd_keyset, inputs, std::move(engine));
  }
  if (!at::GradMode::is_enabled() ||
      std::none_of(inputs.begin(), inputs.end(), [](const at::Tensor& t) { return t.requires_grad(); })) {
    return outputs;
  }
  auto node = std::shared_ptr<EngineBackward>(new EngineBackward(), torch::autograd::deleteNode);
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  for (auto& out : outputs) {
    if (at::isFloatingType(out.scalar_type())) torch::autograd::set_history(out, node);
  }
  return outputs;
}

}  // namespace

c10::IValue make_engine(Plan plan, const std::string& backend, int64_t device, bool cuda_graphs) {
  auto engine = c10::make_intrusive<TorchEngine>(std::move(plan), backend, device);
  if (!cuda_graphs) engine->set_cuda_graphs(false);
  return c10::IValue(std::move(engine));
}

namespace {
// Kiln dtypes and their torch scalar types: the one C++ table of the pair.
constexpr std::pair<DataType, at::ScalarType> kDtypePairs[] = {
    {DataType::kFloat32, at::kFloat},     {DataType::kFloat16, at::kHalf},
    {DataType::kBFloat16, at::kBFloat16}, {DataType::kInt32, at::kInt},
    {DataType::kInt64, at::kLong},        {DataType::kBool, at::kBool},
    {DataType::kInt8, at::kChar},         {DataType::kFloat8E4M3, at::kFloat8_e4m3fn}};
}  // namespace

at::ScalarType torch_dtype(DataType t) {
  for (const auto& [kiln, torch] : kDtypePairs) {
    if (kiln == t) return torch;
  }
  KILN_FAIL("dtype " << static_cast<int>(t) << " has no torch equivalent");
}

std::optional<DataType> kiln_dtype(at::ScalarType t) {
  for (const auto& [kiln, torch] : kDtypePairs) {
    if (torch == t) return kiln;
  }
  return std::nullopt;
}

c10::ClassTypePtr engine_type() { return torch::getCustomClass("__torch__.torch.classes.kiln.Engine"); }

// ---- torch ops inside engines ------------------------------------------------------------------
// A `torch_op` layer (converters/torch_op.cpp: kiln.compile's torch_ops_in_engine) calls a torch
// op through the dispatcher when the engine runs, on tensors that view the engine's buffers. The
// op is defined here, where torch is: a process without libkiln_runtime cannot load such plans
// (ir/op_schema.cpp says so).
namespace {

// One argument as converters/torch_op.cpp encoded it.
struct OpArg {
  char kind = 'N';  // N B I F S T L
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::vector<OpArg> list;
};

class OpArgReader {
 public:
  explicit OpArgReader(const std::string& text) : text_(text) {}
  std::vector<OpArg> all() {
    std::vector<OpArg> out;
    while (pos_ < text_.size()) out.push_back(next());
    return out;
  }

 private:
  OpArg next() {
    KILN_CHECK(pos_ < text_.size(), "torch_op: its encoded arguments end early");
    OpArg a;
    a.kind = text_[pos_++];
    switch (a.kind) {
      case 'N':
        break;
      case 'B':
        KILN_CHECK(pos_ < text_.size(), "torch_op: its encoded arguments end early");
        a.b = text_[pos_++] == '1';
        break;
      case 'I':
      case 'T':
        a.i = std::stoll(until(';'));
        break;
      case 'F':
        a.f = std::strtod(until(';').c_str(), nullptr);
        break;
      case 'S': {
        const size_t n = std::stoull(until(':'));
        KILN_CHECK(n <= text_.size() - pos_, "torch_op: a string argument runs past the end");
        a.s = text_.substr(pos_, n);
        pos_ += n;
        break;
      }
      case 'L': {
        const size_t n = std::stoull(until(';'));
        for (size_t k = 0; k < n; ++k) a.list.push_back(next());
        break;
      }
      default:
        KILN_FAIL("torch_op: unknown argument kind '" << a.kind << "' in its encoded arguments");
    }
    return a;
  }
  std::string until(char end) {
    const size_t at = text_.find(end, pos_);
    KILN_CHECK(at != std::string::npos, "torch_op: its encoded arguments end early");
    std::string out = text_.substr(pos_, at - pos_);
    pos_ = at + 1;
    return out;
  }
  const std::string& text_;
  size_t pos_ = 0;
};

c10::IValue op_ivalue(const OpArg& a, c10::TypePtr type, const std::vector<at::Tensor>& tensors) {
  if (a.kind == 'N') return c10::IValue();
  if (auto opt = type->cast<c10::OptionalType>()) type = opt->getElementType();
  switch (a.kind) {
    case 'B':
      return c10::IValue(a.b);
    case 'I':
      if (type->kind() == c10::TypeKind::FloatType) return c10::IValue(static_cast<double>(a.i));
      return c10::IValue(a.i);
    case 'F':
      return c10::IValue(a.f);
    case 'S':
      if (type->kind() == c10::TypeKind::ScalarTypeType)  // a dtype, by Kiln's name
        return c10::IValue(static_cast<int64_t>(torch_dtype(parse_dtype(a.s))));
      return c10::IValue(a.s);
    case 'T':
      KILN_CHECK(a.i >= 0 && a.i < static_cast<int64_t>(tensors.size()),
                 "torch_op: tensor argument " << a.i << " out of range");
      return c10::IValue(tensors[static_cast<size_t>(a.i)]);
    case 'L': {
      c10::TypePtr elem = c10::AnyType::get();
      if (auto list = type->cast<c10::ListType>()) elem = list->getElementType();
      if (elem->kind() == c10::TypeKind::TensorType) {
        c10::List<at::Tensor> out;
        for (const OpArg& e : a.list) out.push_back(op_ivalue(e, elem, tensors).toTensor());
        return c10::IValue(out);
      }
      if (elem->kind() == c10::TypeKind::IntType || elem->kind() == c10::TypeKind::SymIntType) {
        c10::List<int64_t> out;
        for (const OpArg& e : a.list) out.push_back(e.i);
        return c10::IValue(out);
      }
      if (elem->kind() == c10::TypeKind::FloatType) {
        c10::List<double> out;
        for (const OpArg& e : a.list) out.push_back(e.kind == 'I' ? static_cast<double>(e.i) : e.f);
        return c10::IValue(out);
      }
      if (elem->kind() == c10::TypeKind::BoolType) {
        c10::List<bool> out;
        for (const OpArg& e : a.list) out.push_back(e.b);
        return c10::IValue(out);
      }
      c10::impl::GenericList out(elem);
      for (const OpArg& e : a.list) out.push_back(op_ivalue(e, elem, tensors));
      return c10::IValue(out);
    }
    default:
      KILN_FAIL("torch_op: unknown argument kind '" << a.kind << "'");
  }
}

// "mylib.myop.default" -> the dispatcher's operator "mylib::myop", overload "" ("default").
c10::OperatorHandle find_torch_op(const std::string& target) {
  const size_t first = target.find('.'), last = target.rfind('.');
  KILN_CHECK(first != std::string::npos && last > first,
             "torch_op: '" << target << "' is not an op overload name (namespace.op.overload)");
  const std::string name = target.substr(0, first) + "::" + target.substr(first + 1, last - first - 1);
  std::string overload = target.substr(last + 1);
  if (overload == "default") overload.clear();
  auto op = c10::Dispatcher::singleton().findSchema({name, overload});
  KILN_CHECK(op.has_value(), "torch_op: the torch op " << name << (overload.empty() ? "" : "." + overload)
                                                       << " is not registered in this process: import the "
                                                          "module that defines it (torch.library) first");
  return *op;
}

// Calls `op` with `args` (tensors from `tensors`) and returns its tensor outputs, flattened.
std::vector<at::Tensor> call_torch_op(const c10::OperatorHandle& op, const std::vector<OpArg>& args,
                                      const std::vector<at::Tensor>& tensors) {
  const auto& schema = op.schema();
  KILN_CHECK(args.size() == schema.arguments().size(), "torch_op " << schema.name() << ": " << args.size()
                                                                   << " arguments for a schema of "
                                                                   << schema.arguments().size());
  torch::jit::Stack stack;
  for (size_t i = 0; i < args.size(); ++i)
    stack.push_back(op_ivalue(args[i], schema.arguments()[i].type(), tensors));
  {
    at::NoGradGuard no_grad;
    op.callBoxed(&stack);
  }
  std::vector<at::Tensor> out;
  for (const c10::IValue& v : stack) {
    if (v.isTensor()) {
      out.push_back(v.toTensor());
    } else if (v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorVector()) out.push_back(t);
    } else if (v.isTuple()) {
      for (const c10::IValue& e : v.toTupleRef().elements()) {
        KILN_CHECK(e.isTensor(), "torch_op " << schema.name() << ": returns a non-tensor value");
        out.push_back(e.toTensor());
      }
    } else {
      KILN_FAIL("torch_op " << schema.name() << ": returns a non-tensor value");
    }
  }
  return out;
}

std::string torch_op_target(const Layer& l) { return l.attrs.get_string("target", describe(l)); }

// The recorded outputs (dtypes and dims as the compile saw them, -1 for dynamic dims).
std::vector<TensorDesc> recorded_outputs(const Layer& l) {
  const std::vector<int64_t> dtypes = l.attrs.get_ints("out_dtypes", describe(l)),
                             ranks = l.attrs.get_ints("out_ranks", describe(l)),
                             dims = l.attrs.get_ints("out_dims", describe(l));
  KILN_CHECK(dtypes.size() == ranks.size(), describe(l) << ": out_dtypes and out_ranks differ in length");
  std::vector<TensorDesc> out;
  size_t at = 0;
  for (size_t k = 0; k < dtypes.size(); ++k) {
    KILN_CHECK(ranks[k] >= 0 && at + static_cast<size_t>(ranks[k]) <= dims.size(),
               describe(l) << ": out_dims is shorter than out_ranks say");
    KILN_CHECK(dtypes[k] >= 0 && dtypes[k] < kNumDataTypes, describe(l)
                                                                << ": out_dtypes holds " << dtypes[k]);
    Dims d(dims.begin() + static_cast<std::ptrdiff_t>(at),
           dims.begin() + static_cast<std::ptrdiff_t>(at + ranks[k]));
    at += static_cast<size_t>(ranks[k]);
    out.push_back({static_cast<DataType>(dtypes[k]), d});
  }
  return out;
}

// Shapes: with concrete input dims the op itself says (on meta tensors: its fake/meta kernel);
// at build time with dynamic dims, or for an op without a meta kernel, what the compile recorded.
std::vector<TensorDesc> infer_torch_op(const Layer& l, const std::vector<TensorDesc>& in) {
  const std::vector<TensorDesc> recorded = recorded_outputs(l);
  // The op computes in the dtypes it was traced with: a builder offering float16 inputs to a
  // float32 op gets an error here, and keeps the layer in float32 with casts around it.
  const std::vector<int64_t> in_dtypes =
      l.attrs.has("in_dtypes") ? l.attrs.get_ints("in_dtypes", describe(l)) : std::vector<int64_t>{};
  KILN_CHECK(
      in_dtypes.empty() || in_dtypes.size() == in.size(),
      describe(l) << ": in_dtypes has " << in_dtypes.size() << " entries for " << in.size() << " inputs");
  for (size_t k = 0; k < in_dtypes.size(); ++k) {
    KILN_CHECK(static_cast<int64_t>(in[k].dtype) == in_dtypes[k],
               describe(l) << ": input " << k << " of the torch op " << torch_op_target(l) << " is "
                           << dtype_name(in[k].dtype) << ", it was compiled for "
                           << dtype_name(static_cast<DataType>(in_dtypes[k])));
  }
  const c10::OperatorHandle op = find_torch_op(torch_op_target(l));
  bool concrete = true;
  for (const TensorDesc& t : in) concrete &= is_static(t.dims);
  if (!concrete) return recorded;
  std::vector<at::Tensor> metas;
  for (const TensorDesc& t : in)
    metas.push_back(at::empty(t.dims, at::TensorOptions().dtype(torch_dtype(t.dtype)).device(at::kMeta)));
  std::vector<at::Tensor> outs;
  try {
    outs = call_torch_op(op, OpArgReader(l.attrs.get_string("args", describe(l))).all(), metas);
  } catch (const c10::Error&) {
    bool all_static = true;
    for (const TensorDesc& t : recorded) all_static &= is_static(t.dims);
    KILN_CHECK(all_static, describe(l)
                               << ": the torch op " << torch_op_target(l)
                               << " has no meta (fake) implementation, which its dynamic shapes need: "
                                  "register one (torch.library's register_fake)");
    return recorded;
  }
  KILN_CHECK(outs.size() == recorded.size(), describe(l) << ": the torch op returned " << outs.size()
                                                         << " tensors, compiled for " << recorded.size());
  std::vector<TensorDesc> result;
  for (size_t k = 0; k < outs.size(); ++k) {
    const std::optional<DataType> dt = kiln_dtype(outs[k].scalar_type());
    KILN_CHECK(dt && *dt == recorded[k].dtype, describe(l) << ": output " << k << " of the torch op is "
                                                           << outs[k].scalar_type() << ", compiled for "
                                                           << dtype_name(recorded[k].dtype));
    result.push_back({*dt, outs[k].sizes().vec()});
  }
  return result;
}

#ifdef KILN_RUNTIME_CUDA
// While an engine with torch ops is captured into a CUDA graph, what the ops allocate on the
// capture stream (their results, their scratch) comes from a private pool of PyTorch's caching
// allocator, as torch.cuda.graphs does: the graph replays on those addresses, and the pool is
// released when the graph is destroyed. Freed blocks are reused within the capture only.
class TorchCapturePool final : public CapturePool {
 public:
  TorchCapturePool(int device, void* stream)
      : device_(static_cast<c10::DeviceIndex>(device)), id_(at::cuda::MemPool::graph_pool_handle(false)) {
    const auto capturing = static_cast<cudaStream_t>(stream);
    c10::cuda::CUDACachingAllocator::beginAllocateToPool(
        device_, id_, [capturing](cudaStream_t s) { return s == capturing; });
  }
  ~TorchCapturePool() override {
    end();
    try {
      c10::cuda::CUDACachingAllocator::releasePool(device_, id_);
    } catch (const std::exception& e) {
      KILN_LOG(kWarning, "torch_op: releasing a CUDA graph's memory pool failed: " << e.what());
    }
  }
  void end() noexcept override {
    if (ended_) return;
    ended_ = true;
    try {
      c10::cuda::CUDACachingAllocator::endAllocateToPool(device_, id_);
    } catch (const std::exception& e) {
      KILN_LOG(kWarning, "torch_op: ending a capture's memory pool failed: " << e.what());
    }
  }

 private:
  c10::DeviceIndex device_;
  c10::MempoolId_t id_;
  bool ended_ = false;
};

class TorchCaptureAllocator final : public CaptureAllocator {
 public:
  std::unique_ptr<CapturePool> begin(int device, void* stream) const override {
    return std::make_unique<TorchCapturePool>(device, stream);
  }
};

const TorchCaptureAllocator kTorchCaptureAllocator;
#endif

class TorchOpKernel final : public Kernel {
 public:
  TorchOpKernel(const Layer& l, Backend backend)
      : layer_(l),
        op_(find_torch_op(torch_op_target(l))),
        args_(OpArgReader(l.attrs.get_string("args", describe(l))).all()),
        backend_(backend) {}

  void run(const std::vector<TensorView>& inputs, const std::vector<TensorView>& outputs,
           const LaunchContext& ctx) const override {
    at::Device device(at::kCPU);
#ifdef KILN_RUNTIME_CUDA
    std::optional<c10::cuda::CUDAStreamGuard> stream_guard;
    if (backend_ == Backend::kCuda) {
      device = at::Device(at::kCUDA, c10::cuda::current_device());
      stream_guard.emplace(
          c10::cuda::getStreamFromExternal(static_cast<cudaStream_t>(ctx.stream), device.index()));
    }
#endif
    auto view = [&device](const TensorView& v) {
      return at::from_blob(v.data, v.dims, at::TensorOptions().dtype(torch_dtype(v.dtype)).device(device));
    };
    std::vector<at::Tensor> in;
    for (const TensorView& v : inputs) in.push_back(view(v));
    std::vector<at::Tensor> outs;
    try {
      outs = call_torch_op(op_, args_, in);
    } catch (const c10::Error& e) {
      KILN_FAIL(describe(layer_) << ": the torch op " << torch_op_target(layer_)
                                 << " failed: " << e.what_without_backtrace());
    }
    KILN_CHECK(outs.size() == outputs.size(), describe(layer_)
                                                  << ": the torch op returned " << outs.size()
                                                  << " tensors for " << outputs.size() << " outputs");
    for (size_t k = 0; k < outs.size(); ++k) {
      KILN_CHECK(
          outs[k].sizes().vec() == outputs[k].dims && outs[k].scalar_type() == torch_dtype(outputs[k].dtype),
          describe(layer_) << ": output " << k << " of the torch op is " << outs[k].scalar_type() << " "
                           << outs[k].sizes() << ", the engine expects " << dtype_name(outputs[k].dtype)
                           << " " << to_string(outputs[k].dims));
      view(outputs[k]).copy_(outs[k]);
    }
  }
  std::string name() const override { return "torch " + torch_op_target(layer_); }
  // On CUDA, captured as any kernel (its allocations into the graph's pool) unless the op says
  // it is not graph-safe or its output shapes depend on its data. The reference backend has no
  // graphs.
  bool capturable() const override {
    return backend_ == Backend::kCuda && !op_.hasTag(at::Tag::cudagraph_unsafe) &&
           !op_.hasTag(at::Tag::dynamic_output_shape) && !op_.hasTag(at::Tag::data_dependent_output);
  }
  const CaptureAllocator* capture_allocator() const override {
#ifdef KILN_RUNTIME_CUDA
    if (backend_ == Backend::kCuda) return &kTorchCaptureAllocator;
#endif
    return nullptr;
  }

 private:
  Layer layer_;
  c10::OperatorHandle op_;
  std::vector<OpArg> args_;
  Backend backend_;
};

const bool kTorchOpRegistered = [] {
  OpSchema schema;
  schema.name = "torch_op";
  schema.min_inputs = 0;
  schema.max_inputs = 1 << 16;
  schema.attributes = {
      {"target", AttrType::kString, std::nullopt, "the torch op overload: namespace.op.overload"},
      {"args", AttrType::kString, std::nullopt, "its arguments, encoded (converters/torch_op.cpp)"},
      {"in_dtypes", AttrType::kInts, AttrValue(std::vector<int64_t>{}),
       "tensor input dtypes as compiled (the op computes in them); empty: any"},
      {"out_dtypes", AttrType::kInts, std::nullopt, "output dtypes as compiled"},
      {"out_ranks", AttrType::kInts, std::nullopt, "output ranks"},
      {"out_dims", AttrType::kInts, std::nullopt, "output dims as compiled (-1: dynamic), concatenated"}};
  schema.infer = infer_torch_op;
  register_schema(std::move(schema));
  register_kernel("torch_op", Backend::kReference,
                  [](const Layer& l) { return std::make_unique<TorchOpKernel>(l, Backend::kReference); });
#ifdef KILN_RUNTIME_CUDA
  register_kernel("torch_op", Backend::kCuda,
                  [](const Layer& l) { return std::make_unique<TorchOpKernel>(l, Backend::kCuda); });
#endif
  return true;
}();

}  // namespace

}  // namespace kiln::runtime

using kiln::runtime::execute_engine;
using kiln::runtime::execute_engine_autograd;
using kiln::runtime::kRuntimeFormatVersion;
using kiln::runtime::TorchEngine;

TORCH_LIBRARY(kiln, m) {
  m.class_<TorchEngine>("Engine")
      .def(torch::init<std::string, std::string>())
      .def("input_names", &TorchEngine::input_names)
      .def("output_names", &TorchEngine::output_names)
      .def("input_dtypes", &TorchEngine::input_dtypes)
      .def("output_dtypes", &TorchEngine::output_dtypes)
      .def("input_dims", &TorchEngine::input_dims)
      .def("output_dims", &TorchEngine::output_dims)
      .def("output_shapes", &TorchEngine::output_shapes)
      .def("device_type", &TorchEngine::device_type)
      .def("device_index", &TorchEngine::device_index)
      .def("backend", &TorchEngine::backend)
      .def("device", &TorchEngine::device)
      .def("describe", &TorchEngine::describe)
      .def("serialized_plan", &TorchEngine::serialized_plan)
      .def("set_cuda_graphs", &TorchEngine::set_cuda_graphs)
      .def("cuda_graphs", &TorchEngine::cuda_graphs)
      .def("graph_stats", &TorchEngine::graph_stats)
      .def("weight_names", &TorchEngine::weight_names)
      .def("weight_dtypes", &TorchEngine::weight_dtypes)
      .def("host_weight_names", &TorchEngine::host_weight_names)
      .def("weight_dims", &TorchEngine::weight_dims)
      .def("refit", &TorchEngine::refit)
      .def("set_strip_weights", &TorchEngine::set_strip_weights)
      // torch.export traces with this real object (no fake class): the fake kernel of
      // execute_engine asks it for dtypes and output shapes.
      .def("tracing_mode", [](const c10::intrusive_ptr<TorchEngine>&) { return std::string("real"); })
      .def_pickle([](const c10::intrusive_ptr<TorchEngine>& self) { return self->serialize(); },
                  [](c10::IValue state) { return TorchEngine::deserialize(state); });
  m.def("execute_engine(Tensor[] inputs, __torch__.torch.classes.kiln.Engine engine) -> Tensor[]");
  m.def("runtime_format_version() -> int", [] { return kRuntimeFormatVersion; });
}

TORCH_LIBRARY_IMPL(kiln, CPU, m) { m.impl("execute_engine", execute_engine); }
TORCH_LIBRARY_IMPL(kiln, CUDA, m) { m.impl("execute_engine", execute_engine); }
TORCH_LIBRARY_IMPL(kiln, Autograd, m) { m.impl("execute_engine", execute_engine_autograd); }
