#include <algorithm>
#include <map>

#include "ir/error.h"
#include "ir/op_schema.h"
#include "kernels/kernel.h"

namespace kiln {
namespace {

std::map<std::pair<std::string, Backend>, KernelFactory>& registry() {
  static std::map<std::pair<std::string, Backend>, KernelFactory> r;
  return r;
}

}  // namespace

int variant_code(const std::vector<std::string>& variants, const std::string& name) {
  auto it = std::find(variants.begin(), variants.end(), name);
  KILN_CHECK(it != variants.end(), "unknown op variant '" << name << "'");
  return static_cast<int>(it - variants.begin());
}

const char* backend_name(Backend b) { return b == Backend::kCuda ? "cuda" : "reference"; }

void register_kernel(const std::string& op, Backend backend, KernelFactory factory) {
  auto key = std::make_pair(op, backend);
  KILN_CHECK(registry().count(key) == 0,
             "kernel for op '" << op << "' on " << backend_name(backend) << " registered twice");
  registry().emplace(key, std::move(factory));
}

bool has_kernel(const std::string& op, Backend backend) { return registry().count({op, backend}) != 0; }

namespace {
// A view layer (alias = 1): the engine points its output at its input's memory; nothing to run.
class AliasKernel final : public Kernel {
 public:
  void run(const std::vector<TensorView>&, const std::vector<TensorView>&,
           const LaunchContext&) const override {}
  std::string name() const override { return "alias (no copy)"; }
};
}  // namespace

std::unique_ptr<Kernel> create_kernel(const Layer& layer, Backend backend) {
  if (is_alias_layer(layer)) return std::make_unique<AliasKernel>();
  auto it = registry().find({layer.op, backend});
  KILN_CHECK(it != registry().end(), describe(layer) << ": no " << backend_name(backend)
                                                     << " kernel implements op '" << layer.op << "'");
  return it->second(layer);
}

}  // namespace kiln
