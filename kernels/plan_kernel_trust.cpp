#include "kernels/plan_kernel_trust.h"

#include <cstdlib>
#include <cstring>

namespace kiln {
namespace {

// -1: no scope on this thread (the process default applies); else the innermost scope's value.
thread_local int t_override = -1;

bool process_default() {
  static const bool trusted = [] {
    const char* env = std::getenv("KILN_TRUST_PLAN_KERNELS");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return trusted;
}

}  // namespace

bool trust_plan_kernels() { return t_override >= 0 ? t_override == 1 : process_default(); }

ScopedPlanKernelTrust::ScopedPlanKernelTrust(bool trusted) : previous_(t_override) {
  t_override = trusted ? 1 : 0;
}

ScopedPlanKernelTrust::~ScopedPlanKernelTrust() { t_override = previous_; }

}  // namespace kiln
