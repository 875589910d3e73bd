// The frame analysis behind the default model's semantic tests, on drawn clips whose
// answer is known.
#include <gtest/gtest.h>

#include <fstream>

#include "e2e_util.h"
#include "mogagen/ops.h"
#include "video_analysis.h"

namespace {

// A disc of colour fg, radius r, centre (x0 + vx t, y0 + vy t), on a plain background.
video::Clip draw(int frames, int w, int h, video::Rgb bg, video::Rgb fg, double r, double x0,
                 double y0, double vx, double vy, int hide_frame = -1) {
  video::Clip c;
  c.frames = frames;
  c.width = w;
  c.height = h;
  c.rgb.resize(size_t(frames) * w * h * 3);
  for (int f = 0; f < frames; ++f)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const double dx = x - (x0 + vx * f), dy = y - (y0 + vy * f);
        const bool in = f != hide_frame && dx * dx + dy * dy <= r * r;
        uint8_t* p = c.rgb.data() + ((size_t(f) * h + y) * w + x) * 3;
        for (int k = 0; k < 3; ++k) p[k] = uint8_t(std::lround(255 * (in ? fg[k] : bg[k])));
      }
  return c;
}

}  // namespace

TEST(VideoAnalysis, PaletteColoursAreNamedAsThemselves) {
  for (const auto& [name, rgb] : video::palette()) EXPECT_EQ(video::colour_name(rgb), name);
  EXPECT_EQ(video::colour_name({0.45, 0.45, 0.47}), "none");  // the grey background
  EXPECT_EQ(video::colour_name({0.04, 0.04, 0.05}), "none");  // black
  EXPECT_EQ(video::colour_name({0.45, 0.08, 0.07}), "red");   // the dark red background
}

TEST(VideoAnalysis, FindsTheObjectItsColourAndItsMotion) {
  const video::Clip c = draw(12, 64, 48, {0.10, 0.14, 0.45}, {0.90, 0.12, 0.10}, 7, 12, 24, 2.5, 0);
  const video::Scene s = video::analyse(c, 0, c.frames);
  EXPECT_EQ(video::colour_name(s.background), "blue");
  EXPECT_EQ(video::colour_name(s.object), "red");
  EXPECT_NEAR(s.object_share, 3.14159 * 49 / (64 * 48), 0.01);
  const auto m = video::motion(s);
  EXPECT_NEAR(m[0], 2.5, 0.05);
  EXPECT_NEAR(m[1], 0.0, 0.05);
}

TEST(VideoAnalysis, MotionSkipsFramesWithoutTheObjectAndReadsUpward) {
  const video::Clip c =
      draw(10, 48, 64, {0.88, 0.88, 0.86}, {0.10, 0.75, 0.20}, 6, 24, 50, 0, -3.0, /*hide=*/4);
  const video::Scene s = video::analyse(c, 0, c.frames);
  EXPECT_EQ(s.centroid[4][0], -1);
  EXPECT_EQ(video::colour_name(s.object), "green");
  const auto m = video::motion(s);
  EXPECT_NEAR(m[1], -3.0, 0.05);
  EXPECT_NEAR(m[0], 0.0, 0.05);
}

TEST(VideoAnalysis, FramesOfOneShotOnly) {
  // shot 1 (frames 0-5): white disc on green; shot 2 (frames 6-11): cyan disc on black
  video::Clip a = draw(6, 40, 32, {0.08, 0.35, 0.12}, {0.95, 0.95, 0.95}, 5, 20, 16, 0, 0);
  const video::Clip b = draw(6, 40, 32, {0.04, 0.04, 0.05}, {0.10, 0.80, 0.85}, 5, 10, 16, 1, 0);
  a.rgb.insert(a.rgb.end(), b.rgb.begin(), b.rgb.end());
  a.frames = 12;
  EXPECT_EQ(video::colour_name(video::analyse(a, 0, 6).object), "white");
  EXPECT_EQ(video::colour_name(video::analyse(a, 6, 12).object), "cyan");
  EXPECT_EQ(video::colour_name(video::analyse(a, 6, 12).background), "none");
}

// tools/clip_report reads a --dump-rgb file as these tests read clips (tools/train/sweep.sh).
TEST(ClipReport, ReportsWhatTheAnalysisSees) {
  const video::Clip c = draw(12, 64, 48, {0.05, 0.05, 0.05}, {0.90, 0.12, 0.10}, 7, 12, 24, 2.5, 0);
  const std::string path = e2e::tmpdir("clip-report") + "/clip.rgb";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(c.rgb.data()),
                                              std::streamsize(c.rgb.size()));
  const video::Scene s = video::analyse(c, 0, c.frames);
  const auto mv = video::motion(s);
  char want[160];
  std::snprintf(want, sizeof want, "colour=red rgb=%.3f,%.3f,%.3f share=%.4f dx=%.3f dy=%.3f frames=12\n",
                s.object[0], s.object[1], s.object[2], s.object_share, mv[0], mv[1]);
  const e2e::Run r = e2e::sh(e2e::q(MOGAGEN_CLIP_REPORT) + " " + e2e::q(path) + " 64 48");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out, want);
  EXPECT_NEAR(mv[0], 2.5, 0.1);
  // a frame range: the first six frames
  const e2e::Run part = e2e::sh(e2e::q(MOGAGEN_CLIP_REPORT) + " " + e2e::q(path) + " 64 48 0 6");
  ASSERT_EQ(part.code, 0) << part.out;
  EXPECT_NE(part.out.find("frames=6"), std::string::npos) << part.out;
}

TEST(ClipReport, BadInputsGiveClearMessagesAndExitCodes) {
  const std::string dir = e2e::tmpdir("clip-report-bad");
  const std::string tool = e2e::q(MOGAGEN_CLIP_REPORT) + " ";
  std::ofstream(dir + "/odd.rgb", std::ios::binary) << std::string(100, 'x');
  std::ofstream(dir + "/two.rgb", std::ios::binary) << std::string(2 * 8 * 6 * 3, 'x');
  struct Case {
    std::string args;
    int code;
    std::string says;
  };
  const Case cases[] = {
      {"", 2, "usage: clip_report"},
      {e2e::q(dir + "/two.rgb") + " eight 6", 2, "WIDTH, HEIGHT, FIRST and LAST are whole numbers"},
      {e2e::q(dir + "/none.rgb") + " 8 6", 3, "none.rgb: expected whole 8x6 RGB8 frames (144 bytes each), found no readable file"},
      {e2e::q(dir + "/odd.rgb") + " 8 6", 3, "odd.rgb: expected whole 8x6 RGB8 frames (144 bytes each), found 100 bytes"},
      {e2e::q(dir + "/two.rgb") + " 8 6 0 3", 3, "frames 0 to 3: the clip has 2 frames"},
      {e2e::q(dir + "/two.rgb") + " 8 6 1 2", 3, "(at least two needed)"},
  };
  for (const Case& c : cases) {
    const e2e::Run r = e2e::sh(tool + c.args);
    EXPECT_EQ(r.code, c.code) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.says), std::string::npos) << c.args << "\n" << r.out;
  }
}

// mogagen_bench's option values are checked before any device is touched.
TEST(BenchOptions, BadValuesAreUsageErrors) {
  const std::string bench = e2e::q(MOGAGEN_BENCH);
  const struct {
    std::string args, says;
  } cases[] = {
      {"attention --operands big", "--operands: expected normal, unit or small, found 'big'"},
      {"dit --norm-weights two", "--norm-weights: expected one or small, found 'two'"},
      {"dit --log loud", "--log: expected quiet, info or verbose, found 'loud'"},
  };
  for (const auto& c : cases) {
    const e2e::Run r = e2e::sh(bench + " " + c.args);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.says), std::string::npos) << c.args << "\n" << r.out;
  }
}

// MOGAGEN_TUNE_MS (kernels/kernels.cuh): candidates timed sustained, every candidate's time
// logged; a bad value is a warning and the burst timing. On the GPU only (the CPU backend
// times no candidates).
TEST(BenchOptions, SustainedTuningOnTheGpu) {
  if (!mg::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::string bench = e2e::q(MOGAGEN_BENCH);
  // attention: each cuDNN configuration timed and logged, then the bench's own timing
  e2e::Run r = e2e::sh("MOGAGEN_TUNE_MS=20 " + bench +
                       " attention --tokens 2048 --segment 0 --heads 4 --iters 3 --log verbose");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("cuDNN SDPA: configuration 0: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" is the fastest ("), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("attention dense"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("MOGAGEN_TUNE_MS="), std::string::npos) << "no warning for a good value\n" << r.out;
  // a DiT block: the cuBLASLt algorithms of its GEMMs, each with its time
  r = e2e::sh("MOGAGEN_TUNE_MS=5 " + bench +
              " dit --model 1.3b --layers 1 --frames 1 --height 8 --width 8 --iters 1 --log verbose");
  ASSERT_EQ(r.code, 0) << r.out;
  const size_t at = r.out.find("cuBLASLt m=1536 n=16 k=1536: algorithm ");
  ASSERT_NE(at, std::string::npos) << r.out;
  EXPECT_NE(r.out.find("is the fastest; ms: ", at), std::string::npos) << r.out;
  r = e2e::sh("MOGAGEN_TUNE_MS=soon " + bench + " attention --tokens 1024 --segment 0 --heads 2 --iters 3");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("MOGAGEN_TUNE_MS='soon' is not a count of milliseconds from 0 to 5000; using 0"),
            std::string::npos)
      << r.out;
}
