// validate_network: the first builder stage. Layers were checked when they were added, but a
// network can be edited afterwards (renamed outputs, restored from a plan), so everything is
// checked again here, together with the optimization profiles.
#include "core/passes/passes.h"

namespace kiln {

void validate_network(Network& net, const std::vector<OptimizationProfile>& profiles) {
  net.revalidate();
  validate_profiles(net, profiles);
}

}  // namespace kiln
