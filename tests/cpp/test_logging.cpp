#include "ir/logging.h"

#include <gtest/gtest.h>

#include <vector>

#include "ir/error.h"

namespace kiln {
namespace {

TEST(Logging, LevelFiltersAndSinkReceives) {
  std::vector<std::pair<Severity, std::string>> got;
  set_log_sink([&](Severity s, const std::string& m) { got.push_back({s, m}); });
  set_log_level(Severity::kWarning);
  KILN_LOG(kInfo, "hidden " << 1);
  KILN_LOG(kWarning, "shown " << 2);
  set_log_level(Severity::kVerbose);
  KILN_LOG(kVerbose, "verbose " << 3);
  set_log_sink(nullptr);
  set_log_level(Severity::kWarning);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].first, Severity::kWarning);
  EXPECT_EQ(got[0].second, "shown 2");
  EXPECT_EQ(got[1].second, "verbose 3");
}

TEST(Logging, ParseSeverity) {
  EXPECT_EQ(parse_severity("info"), Severity::kInfo);
  EXPECT_THROW(parse_severity("loud"), Error);
}

}  // namespace
}  // namespace kiln
