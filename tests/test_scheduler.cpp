#include "test_util.h"
#include <gtest/gtest.h>

#include <filesystem>

#include "pipeline/scheduler.h"
#include "pipeline/verify.h"

using namespace mg;

static std::string golden() { return testutil::golden_dir(); }

TEST(Scheduler, WanGridMatchesReferenceValues) {
  // wan-notes 4.2: N = 50, shift 5 on Wan's grid.
  Schedule s = make_schedule(SamplerKind::UniPC, 50, 5.0, SigmaGrid::Wan);
  ASSERT_EQ(s.steps(), 50);
  std::vector<double> head{999, 995, 991, 987, 982, 978, 973, 968};
  for (size_t i = 0; i < head.size(); ++i) EXPECT_EQ(s.timesteps[i], head[i]);
  std::vector<double> tail{405, 356, 302, 241, 172, 92};
  for (size_t i = 0; i < tail.size(); ++i) EXPECT_EQ(s.timesteps[44 + i], tail[i]);
  EXPECT_NEAR(s.sigmas[0], 0.999800, 1e-6);
  EXPECT_NEAR(s.sigmas[1], 0.995732, 1e-6);
  EXPECT_NEAR(s.sigmas[49], 0.092507, 1e-6);
  EXPECT_EQ(s.sigmas[50], 0.0f);
  Schedule s3 = make_schedule(SamplerKind::UniPC, 50, 3.0, SigmaGrid::Wan);
  EXPECT_EQ(s3.timesteps[1], 992);
  EXPECT_EQ(s3.timesteps[49], 57);
}

TEST(Scheduler, DiffusersGridLastSteps) {
  // wan-notes 4.2: diffusers' grid ends 244, 175, 96 at shift 5.
  Schedule s = make_schedule(SamplerKind::UniPC, 50, 5.0, SigmaGrid::Diffusers);
  EXPECT_EQ(s.timesteps[47], 244);
  EXPECT_EQ(s.timesteps[48], 175);
  EXPECT_EQ(s.timesteps[49], 96);
}

TEST(Scheduler, EulerOneStepIsExactForLinearFlow) {
  // For x_sigma = (1 - sigma) x0 + sigma eps with the exact velocity eps - x0, any Euler
  // schedule lands on x0.
  Tensor x0 = Tensor::from_vector({0.5f, -1.0f}, {2}), eps = Tensor::from_vector({1.0f, 2.0f}, {2});
  Schedule s = make_schedule(SamplerKind::Euler, 4, 3.0);
  FlowSampler fs(SamplerKind::Euler, s);
  Tensor x = Tensor::empty({2});
  for (int i = 0; i < 2; ++i) x.f32()[i] = (1 - s.sigmas[0]) * x0.f32()[i] + s.sigmas[0] * eps.f32()[i];
  Tensor v = Tensor::from_vector({eps.f32()[0] - x0.f32()[0], eps.f32()[1] - x0.f32()[1]}, {2});
  for (int k = 0; k < 4; ++k) x = fs.step(x, v);
  EXPECT_NEAR(x.f32()[0], 0.5f, 1e-5);
  EXPECT_NEAR(x.f32()[1], -1.0f, 1e-5);
  EXPECT_THROW(fs.step(x, v), Error);
}

TEST(Scheduler, UniPCFollowsExactLinearFlow) {
  // With the exact velocity eps - x0, every x0 prediction is x0, the UniPC corrections
  // vanish, and each state lies on the flow path (1 - sigma_k) x0 + sigma_k eps; the last
  // step returns x0 exactly.
  const float x0v = 0.75f, ev = -1.25f;
  Schedule s = make_schedule(SamplerKind::UniPC, 6, 5.0);
  FlowSampler fs(SamplerKind::UniPC, s);
  Tensor v = Tensor::from_vector({ev - x0v}, {1});
  Tensor x = Tensor::from_vector({(1 - s.sigmas[0]) * x0v + s.sigmas[0] * ev}, {1});
  for (int k = 0; k < 6; ++k) {
    x = fs.step(x, v);
    const float expect = (1 - s.sigmas[k + 1]) * x0v + s.sigmas[k + 1] * ev;
    EXPECT_NEAR(x.f32()[0], expect, 2e-6) << "step " << k;
  }
  EXPECT_NEAR(x.f32()[0], x0v, 2e-6);
}

TEST(Scheduler, NoiseIsSeededAndStandardNormal) {
  Tensor a = gaussian_noise({4, 1000}, 42), b = gaussian_noise({4, 1000}, 42), c = gaussian_noise({4, 1000}, 43);
  EXPECT_EQ(rel_error(a, b), 0.0);
  EXPECT_GT(rel_error(a, c), 0.5);
  double m = 0, v = 0;
  for (int i = 0; i < 4000; ++i) m += a.f32()[i];
  m /= 4000;
  for (int i = 0; i < 4000; ++i) v += (a.f32()[i] - m) * (a.f32()[i] - m);
  v /= 4000;
  EXPECT_NEAR(m, 0.0, 0.06);
  EXPECT_NEAR(v, 1.0, 0.08);
  // a prefix of a longer draw is the same draw (counter-based)
  Tensor d = gaussian_noise({7}, 42);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(d.f32()[i], a.f32()[i]);
}

TEST(Scheduler, CfgCombine) {
  Tensor c = Tensor::from_vector({2.0f}, {1}), u = Tensor::from_vector({1.0f}, {1});
  EXPECT_FLOAT_EQ(cfg_combine(c, u, 5.0f).f32()[0], 6.0f);
}

class SchedGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(SchedGolden, MatchesReference) {
  const std::string dir = golden() + "/" + GetParam() + "/sched";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "golden set absent: " << dir;
  auto ops = make_cpu_ops();
  auto lines = verify_sched(dir, *ops);
  ASSERT_GE(lines.size(), 8u);
  for (const auto& l : lines) EXPECT_LE(l.rel_err, 1e-4) << l.name;
}

INSTANTIATE_TEST_SUITE_P(Sets, SchedGolden, ::testing::Values("wan-a", "wan-c"));
