// Fuzz target: the plan parser, Plan::deserialize, behind its checksum (not verified here, so
// mutations reach the parser rather than the checksum check), and what follows a successful
// parse: re-serialization, engine and context creation and one run on the reference backend
// when the plan is small (fuzz_util.h). Seeds: plans built by fuzz_make_seeds.
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    kiln::Plan plan = kiln::Plan::deserialize(data, size, /*verify_checksum=*/false);
    kiln::fuzz::check_round_trip(plan);
    kiln::fuzz::run_plan_if_small(std::move(plan));
  } catch (const kiln::Error&) {
    // a clean refusal: the expected outcome for most inputs
  }
  return 0;
}
