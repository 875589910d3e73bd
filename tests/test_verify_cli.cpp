// `mogagen verify` end to end: every golden set passes on the CPU at 1e-4 (both weight
// namings for dit and vae), an impossible tolerance fails with exit 1, and a bad folder is
// a clear input error.
#include "test_util.h"
#include <gtest/gtest.h>

#include "e2e_util.h"

using namespace e2e;

namespace {
std::string golden() { return testutil::golden_dir(); }
bool have_golden() { return std::filesystem::exists(golden() + "/wan-a"); }
}  // namespace

class VerifyCli : public ::testing::TestWithParam<std::pair<const char*, const char*>> {};

TEST_P(VerifyCli, PassesAtDefaultTolerance) {
  if (!have_golden()) GTEST_SKIP() << "golden data absent: " << golden();
  const auto [comp, set] = GetParam();
  auto r = sh(bin() + " verify " + comp + " " + q(golden() + "/" + set));
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("0 above tolerance 1.0e-04"), std::string::npos) << r.out;
  if (std::string(comp) == "dit" || std::string(comp) == "vae") {
    EXPECT_NE(r.out.find("[wan]"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("[diffusers]"), std::string::npos) << r.out;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Golden, VerifyCli,
    ::testing::Values(std::make_pair("dit", "wan-a"), std::make_pair("dit", "wan-c"),
                      std::make_pair("t5", "wan-a"), std::make_pair("t5", "wan-c"),
                      std::make_pair("vae", "wan-a"), std::make_pair("vae", "wan-c"),
                      std::make_pair("sched", "wan-a"), std::make_pair("sched", "wan-c"),
                      std::make_pair("moga", "moga-a")));

TEST(VerifyCliErrors, ImpossibleToleranceFails) {
  if (!have_golden()) GTEST_SKIP() << "golden data absent: " << golden();
  auto r = sh(bin() + " verify sched " + q(golden() + "/wan-a") + " --tol 1e-30");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("FAIL"), std::string::npos) << r.out;
}

TEST(VerifyCliErrors, MissingFolderIsAnInputError) {
  auto r = sh(bin() + " verify dit /nonexistent/golden");
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("/nonexistent/golden"), std::string::npos) << r.out;
  r = sh(bin() + " verify foo /tmp");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("unknown component 'foo'"), std::string::npos) << r.out;
}
