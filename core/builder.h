// Builder: Network + BuilderConfig -> Plan, through one pipeline of named passes (builder.cpp).
#pragma once

#include <cstddef>
#include <vector>

#include "core/network.h"
#include "core/plan.h"

namespace kiln {

enum class BuildTarget : uint8_t {
  kAuto = 0,       // the current GPU when there is one, else the reference backend
  kCuda = 1,       // the current GPU; fails where there is none
  kReference = 2,  // portable plan for the CPU reference backend
};

struct BuilderConfig {
  std::vector<OptimizationProfile> profiles;
  size_t workspace_bytes = size_t{32} << 20;
  int optimization_level = 3;  // 0 skips the optional (canonicalizing) passes
  BuildTarget target = BuildTarget::kAuto;
};

class Builder {
 public:
  Plan build(const Network& network, const BuilderConfig& config) const;
};

}  // namespace kiln
