// identity: y = x. Exists so that graphs can name a tensor twice; remove_noops drops it.
// Tracked shape values pass through with the rest of the description.
#include "core/op_schema.h"
#include "core/ops/ops.h"

namespace kiln {

void register_identity_schema() {
  register_schema({"identity", 1, 1, [](const Layer&, const std::vector<TensorDesc>& in) {
                     return std::vector<TensorDesc>{in[0]};
                   }});
}

}  // namespace kiln
