// The frame analysis behind the default model's semantic tests, on drawn clips whose
// answer is known.
#include <gtest/gtest.h>

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
