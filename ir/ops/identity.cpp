// identity: y = x. Exists so that graphs can name a tensor twice; remove_noops drops it.
// Tracked shape values pass through with the rest of the description.
#include "ir/op_schema.h"

namespace kiln {

namespace {

// identity has no attributes.
const SchemaRegistration kRegistered{
    {"identity", 1, 1,
     [](const Layer&, const std::vector<TensorDesc>& in) { return std::vector<TensorDesc>{in[0]}; }},
};

}  // namespace

}  // namespace kiln
