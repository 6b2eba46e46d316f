#include "core/plugin.h"

#include <dlfcn.h>

#include <exception>
#include <map>
#include <mutex>
#include <set>

#include "ir/error.h"
#include "ir/logging.h"
#include "ir/network.h"
#include "ir/op_schema.h"
#include "kernels/kernel.h"
#include "kernels/reference/host_access.h"

namespace kiln {
namespace {

std::map<std::string, std::shared_ptr<PluginCreator>>& plugins() {
  static std::map<std::string, std::shared_ptr<PluginCreator>> p;
  return p;
}

std::mutex& plugins_mutex() {
  static std::mutex m;
  return m;
}

std::string qualified(const PluginCreator& c) {
  return c.plugin_namespace().empty() ? c.name() : c.plugin_namespace() + "::" + c.name();
}

AttrType attr_type(PluginField::Type t) {
  switch (t) {
    case PluginField::Type::kInt:
      return AttrType::kInt;
    case PluginField::Type::kFloat:
      return AttrType::kFloat;
    case PluginField::Type::kInts:
      return AttrType::kInts;
    case PluginField::Type::kFloats:
      return AttrType::kFloats;
    case PluginField::Type::kString:
      return AttrType::kString;
  }
  KILN_FAIL("unknown plugin field type " << static_cast<int>(t));
}

// Runs plugin code, turning what it throws into a kiln::Error that names the layer and plugin.
template <typename F>
auto guarded(const Layer& layer, const PluginCreator& c, const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    KILN_FAIL(describe(layer) << ": plugin '" << qualified(c) << "' " << what << ": " << e.what());
  } catch (const std::exception& e) {
    KILN_FAIL(describe(layer) << ": plugin '" << qualified(c) << "' " << what << ": " << e.what());
  }
}

void check_version(const Layer& layer, const PluginCreator& c) {
  const std::string made = layer.attrs.has("plugin_version")
                               ? layer.attrs.get_string("plugin_version", describe(layer))
                               : std::string();
  KILN_CHECK(made == c.version(), describe(layer)
                                      << " was made with plugin '" << qualified(c) << "' version '" << made
                                      << "', and this process has version '" << c.version()
                                      << "': load the plugin library of version '" << made
                                      << "', or build the engine again with this one");
}

// The plugin's own fields of `layer`, defaults filled in.
Attributes fields_of(const Layer& layer, const PluginCreator& c) {
  Attributes out;
  for (const PluginField& f : c.fields()) {
    auto it = layer.attrs.values().find(f.name);
    if (it != layer.attrs.values().end()) {
      out.set(f.name, it->second);
    } else {
      KILN_CHECK(f.default_value.has_value(),
                 describe(layer) << ": plugin '" << qualified(c) << "' needs field '" << f.name << "'");
      out.set(f.name, *f.default_value);
    }
  }
  return out;
}

std::vector<TensorDesc> infer(const PluginCreator& c, const Layer& layer, const std::vector<TensorDesc>& in) {
  check_version(layer, c);
  const Attributes fields = fields_of(layer, c);
  std::vector<PluginTensorDesc> descs;
  for (const TensorDesc& t : in) descs.push_back({t.dtype, t.dims});
  const std::vector<PluginTensorDesc> out = guarded(layer, c, "refused its inputs", [&] {
    const std::unique_ptr<PluginLayer> p = c.create(fields, -1);
    KILN_CHECK(p != nullptr, "create() returned null");
    return p->outputs(descs);
  });
  std::vector<TensorDesc> result;
  for (const PluginTensorDesc& t : out) result.push_back({t.dtype, t.dims});
  return result;
}

std::vector<PluginTensor> plugin_tensors(const std::vector<TensorView>& views) {
  std::vector<PluginTensor> out;
  out.reserve(views.size());
  for (const TensorView& v : views) out.push_back({v.data, v.dtype, v.dims});
  return out;
}

// A plugin layer's kernel on one backend: its PluginLayer, created once per engine.
class PluginKernel final : public Kernel {
 public:
  PluginKernel(const Layer& layer, std::shared_ptr<PluginCreator> c, Backend backend)
      : layer_(layer), creator_(std::move(c)), backend_(backend) {
    check_version(layer, *creator_);
    const int tactic = static_cast<int>(layer.attrs.get_int("tactic", int64_t{-1}));
    impl_ = guarded(layer_, *creator_, "could not be created", [&] {
      std::unique_ptr<PluginLayer> p = creator_->create(fields_of(layer_, *creator_), tactic);
      KILN_CHECK(p != nullptr, "create() returned null");
      return p;
    });
    name_ = "plugin " + qualified(*creator_) + " " + creator_->version();
    if (tactic >= 0) name_ += " tactic " + std::to_string(tactic);
  }

  void run(const std::vector<TensorView>& inputs, const std::vector<TensorView>& outputs,
           const LaunchContext& ctx) const override {
    const std::vector<PluginTensor> in = plugin_tensors(inputs), out = plugin_tensors(outputs);
    if (backend_ == Backend::kReference) {
      guarded(layer_, *creator_, "failed", [&] {
        impl_->run_cpu(in, out);
        return 0;
      });
      return;
    }
    const size_t need = guarded(layer_, *creator_, "failed", [&] { return impl_->workspace_bytes(in); });
    KILN_CHECK(need <= ctx.workspace_bytes,
               describe(layer_) << ": plugin '" << qualified(*creator_) << "' needs " << need
                                << " bytes of workspace, the engine has " << ctx.workspace_bytes
                                << ": build with a larger workspace_size");
    guarded(layer_, *creator_, "failed", [&] {
      impl_->enqueue(in, out, need ? ctx.workspace : nullptr, ctx.stream);
      return 0;
    });
  }
  std::string name() const override { return name_; }
  int num_tactics() const override {
    return backend_ == Backend::kCuda ? std::max(1, impl_->num_tactics()) : 1;
  }
  bool capturable() const override { return impl_->capturable(); }

 private:
  Layer layer_;
  std::shared_ptr<PluginCreator> creator_;
  Backend backend_;
  std::unique_ptr<PluginLayer> impl_;
  std::string name_;
};

}  // namespace

void PluginLayer::enqueue(const std::vector<PluginTensor>&, const std::vector<PluginTensor>&, void*,
                          void*) const {
  KILN_FAIL("this plugin has no CUDA implementation");
}

void PluginLayer::run_cpu(const std::vector<PluginTensor>&, const std::vector<PluginTensor>&) const {
  KILN_FAIL("this plugin has no CPU implementation (the reference backend)");
}

float half_to_float(uint16_t bits) { return half_bits_to_float(bits); }
uint16_t float_to_half(float value) { return float_to_half_bits(value); }
float bfloat16_to_float(uint16_t bits) { return bf16_bits_to_float(bits); }
uint16_t float_to_bfloat16(float value) { return float_to_bf16_bits(value); }

std::string plugin_op(const std::string& name, const std::string& plugin_namespace) {
  return "plugin:" + (plugin_namespace.empty() ? name : plugin_namespace + "::" + name);
}

void register_plugin(std::shared_ptr<PluginCreator> creator) {
  KILN_CHECK(creator != nullptr, "register_plugin: null creator");
  const std::string name = creator->name(), version = creator->version();
  KILN_CHECK(!name.empty() && name.find(':') == std::string::npos,
             "register_plugin: plugin name '" << name << "' must be non-empty and without ':'");
  KILN_CHECK(!version.empty(), "register_plugin: plugin '" << name << "' has no version");
  KILN_CHECK(creator->has_cuda() || creator->has_cpu(),
             "register_plugin: plugin '" << qualified(*creator) << "' implements no backend");
  const std::string op = plugin_op(name, creator->plugin_namespace());
  std::lock_guard<std::mutex> lock(plugins_mutex());
  auto found = plugins().find(op);
  KILN_CHECK(found == plugins().end(), "register_plugin: plugin '"
                                           << qualified(*creator) << "' version '" << version
                                           << "' is registered already (version '" << found->second->version()
                                           << "'): one version of a plugin per process");
  OpSchema schema;
  schema.name = op;
  schema.min_inputs = creator->min_inputs();
  schema.max_inputs = creator->max_inputs();
  std::set<std::string> names;
  for (const PluginField& f : creator->fields()) {
    KILN_CHECK(
        names.insert(f.name).second && f.name != "plugin_version" && f.name != "tactic" && f.name != "fused",
        "register_plugin: plugin '" << qualified(*creator) << "': field '" << f.name
                                    << "' is declared twice or uses a reserved name");
    schema.attributes.push_back({f.name, attr_type(f.type), f.default_value, f.doc});
  }
  schema.attributes.push_back({"plugin_version", AttrType::kString, std::nullopt,
                               "the version of the plugin the layer was made with (add_plugin sets it)"});
  schema.attributes.push_back(
      {"tactic", AttrType::kInt, AttrValue{int64_t{-1}}, "the plugin implementation tactic timing chose"});
  std::shared_ptr<PluginCreator> c = creator;
  schema.infer = [c](const Layer& layer, const std::vector<TensorDesc>& in) { return infer(*c, layer, in); };
  register_schema(std::move(schema));
  if (creator->has_cpu()) {
    register_kernel(op, Backend::kReference, [c](const Layer& l) {
      return std::make_unique<PluginKernel>(l, c, Backend::kReference);
    });
  }
  if (creator->has_cuda()) {
    register_kernel(op, Backend::kCuda,
                    [c](const Layer& l) { return std::make_unique<PluginKernel>(l, c, Backend::kCuda); });
  }
  plugins().emplace(op, std::move(creator));
  KILN_LOG(kInfo, "plugin " << op.substr(7) << " version " << version << " registered");
}

const PluginCreator* find_plugin(const std::string& op) {
  std::lock_guard<std::mutex> lock(plugins_mutex());
  auto it = plugins().find(op);
  return it == plugins().end() ? nullptr : it->second.get();
}

std::vector<std::string> registered_plugins() {
  std::lock_guard<std::mutex> lock(plugins_mutex());
  std::vector<std::string> out;
  for (const auto& [op, c] : plugins()) out.push_back(qualified(*c) + " " + c->version());
  return out;
}

void load_plugin_library(const std::string& path) {
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* why = dlerror();
    KILN_FAIL("cannot load plugin library " << path << ": " << (why ? why : "dlopen failed"));
  }
}

Layer& add_plugin(Network& net, const std::string& name, const std::vector<int32_t>& inputs,
                  const Attributes& fields, const std::string& plugin_namespace,
                  const std::string& layer_name) {
  const std::string op = plugin_op(name, plugin_namespace);
  find_schema(op);  // loads KILN_PLUGIN_LIBRARIES when the plugin is not registered yet
  const PluginCreator* c = find_plugin(op);
  KILN_CHECK(c != nullptr, "add_plugin: plugin '"
                               << op.substr(7)
                               << "' is not registered: load its library first "
                                  "(kiln.load_plugin_library / kiln::load_plugin_library)");
  Attributes attrs = fields;
  KILN_CHECK(!attrs.has("plugin_version") && !attrs.has("tactic"),
             "add_plugin: 'plugin_version' and 'tactic' are set by Kiln, not given as fields");
  attrs.set("plugin_version", c->version());
  return net.add_layer(op, inputs, std::move(attrs),
                       layer_name.empty() ? net.unique_layer_name(name) : layer_name);
}

}  // namespace kiln
