// Plugins: layers whose implementation lives outside Kiln (docs/plugins.md).
//
// A plugin is a PluginCreator registered under a name, a version and a namespace. Registering it
// makes it an op of the engine like any built-in one: op "plugin:<namespace>::<name>" (or
// "plugin:<name>" without a namespace) with the plugin's fields as typed attributes, shape and
// dtype inference from PluginLayer::outputs, and a kernel per backend the plugin implements
// (enqueue on CUDA, run_cpu on the reference backend). So networks hold plugin layers
// (add_plugin), the builder places them (other layers fuse around them; precision assignment
// keeps float32 where the plugin refuses a reduced dtype), plans serialize their fields, `kiln
// inspect` and profiles show them, and tactic timing chooses among their implementations.
//
// Every plugin layer records the plugin's version (attribute "plugin_version"). Loading a plan
// whose plugin is not registered, or is registered with another version, fails naming the plugin
// and the version. Plugins usually live in their own shared library that registers them when it
// loads (KILN_REGISTER_PLUGIN); load_plugin_library() loads one, and so does every library listed
// in the environment variable KILN_PLUGIN_LIBRARIES (colon-separated), loaded the first time a
// network or plan names a plugin op that is not registered (C++ apps load plans with plugins
// without code of their own).
//
// Registration changes process-wide tables: load plugin libraries before other threads build,
// load or run engines.
//
// This header includes only ir/attributes.h, ir/dims.h and ir/dtype.h: a plugin library builds
// against them and links libkiln_core.so (find_package(Kiln): Kiln::core).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ir/attributes.h"
#include "ir/dims.h"
#include "ir/dtype.h"

namespace kiln {

// A tensor a plugin reads or writes: device memory on CUDA, host memory on the reference
// backend; concrete dims, row-major, contiguous.
struct PluginTensor {
  void* data = nullptr;
  DataType dtype = DataType::kFloat32;
  Dims dims;
};

// The dtype and dims of a tensor at build time: a dim of -1 is dynamic (its size is known only
// when the engine runs; `outputs` is called again then with concrete dims).
struct PluginTensorDesc {
  DataType dtype = DataType::kFloat32;
  Dims dims;
};

// One field of a plugin: a typed attribute of its layers, required or with a default.
struct PluginField {
  enum class Type { kInt, kFloat, kInts, kFloats, kString };
  std::string name;
  Type type = Type::kFloat;
  std::optional<AttrValue> default_value;  // none: required
  std::string doc;
};

// One plugin layer's implementation, created from the layer's fields. Engines create one per
// layer when they load and share it between execution contexts: the run methods are const and
// keep no per-call state.
class PluginLayer {
 public:
  virtual ~PluginLayer() = default;
  // The outputs' dtypes and dims from the inputs'. Throw (kiln::Error, or any std::exception)
  // to refuse inputs: a dtype the plugin does not implement (the builder then keeps the layer in
  // float32), a rank it does not take. Dims may be -1 (dynamic) at build time.
  virtual std::vector<PluginTensorDesc> outputs(const std::vector<PluginTensorDesc>& inputs) const = 0;
  // Scratch memory enqueue needs for these inputs (at most the engine's workspace_size).
  virtual size_t workspace_bytes(const std::vector<PluginTensor>& inputs) const { return 0; }
  // CUDA: enqueues the computation on `stream` (a cudaStream_t); device memory throughout. It
  // must only enqueue (no synchronization, no allocation) when capturable() is true, as it may
  // be recorded into a CUDA graph.
  virtual void enqueue(const std::vector<PluginTensor>& inputs, const std::vector<PluginTensor>& outputs,
                       void* workspace, void* stream) const;
  // The reference backend: computes on host memory.
  virtual void run_cpu(const std::vector<PluginTensor>& inputs,
                       const std::vector<PluginTensor>& outputs) const;
  // Several CUDA implementations: how many. The creator's create() gets the one the builder
  // timed fastest (`tactic` in [0, num_tactics()); -1 for its default).
  virtual int num_tactics() const { return 1; }
  // False when enqueue does anything a CUDA graph cannot record: engines then launch plainly.
  virtual bool capturable() const { return true; }
};

class PluginCreator {
 public:
  virtual ~PluginCreator() = default;
  virtual std::string name() const = 0;
  virtual std::string version() const = 0;
  virtual std::string plugin_namespace() const { return ""; }
  virtual std::vector<PluginField> fields() const { return {}; }
  virtual int min_inputs() const { return 1; }
  virtual int max_inputs() const { return 1; }
  // The backends it implements: CUDA (PluginLayer::enqueue) and the reference backend
  // (PluginLayer::run_cpu).
  virtual bool has_cuda() const = 0;
  virtual bool has_cpu() const = 0;
  // A layer's implementation from its fields (each declared field present: a default filled
  // in), for `tactic` (-1: the default). Throw to refuse field values.
  virtual std::unique_ptr<PluginLayer> create(const Attributes& fields, int tactic) const = 0;
};

// The op name of plugin `name` in `plugin_namespace`: "plugin:ns::name" ("plugin:name").
std::string plugin_op(const std::string& name, const std::string& plugin_namespace = "");

// Registers `creator`: its op, attributes and kernels. Refused when a plugin of that name and
// namespace is registered already (another version, or another library defining it).
void register_plugin(std::shared_ptr<PluginCreator> creator);

// The creator registered for plugin op `op` ("plugin:..."), or nullptr.
const PluginCreator* find_plugin(const std::string& op);

// "namespace::name version" of every registered plugin, sorted.
std::vector<std::string> registered_plugins();

// Loads a plugin library (dlopen): its registrations run as it loads. Loading the same file
// twice does nothing the second time. Throws kiln::Error naming the file and dlopen's reason.
void load_plugin_library(const std::string& path);

// Adds a layer of plugin `name` (namespace `plugin_namespace`) to `net` and returns it. The
// plugin must be registered (its version is recorded in the layer's "plugin_version").
class Network;
struct Layer;
Layer& add_plugin(Network& net, const std::string& name, const std::vector<int32_t>& inputs,
                  const Attributes& fields, const std::string& plugin_namespace = "",
                  const std::string& layer_name = "");

// Element conversions for CPU implementations, with the rounding of Kiln's own kernels (to
// nearest even; NaN stays NaN): float16 and bfloat16 elements as their 16-bit patterns.
float half_to_float(uint16_t bits);
uint16_t float_to_half(float value);
float bfloat16_to_float(uint16_t bits);
uint16_t float_to_bfloat16(float value);

// Registers a creator class when the library defining it loads:
//   KILN_REGISTER_PLUGIN(ErfinvCreator);
#define KILN_REGISTER_PLUGIN(Creator)                       \
  static const bool kiln_plugin_registered_##Creator = [] { \
    ::kiln::register_plugin(std::make_shared<Creator>());   \
    return true;                                            \
  }()

}  // namespace kiln
