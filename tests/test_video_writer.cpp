// VideoWriter: H.264/MP4 output checked with ffprobe and decoded back with ffmpeg.
#include "e2e_util.h"
#include "test_util.h"
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/video_writer.h"
#include "mogagen/error.h"
#include "mogagen/tensor.h"

namespace fs = std::filesystem;
using namespace mg;

namespace {

const char* kFfprobe = "/usr/bin/ffprobe";
const char* kFfmpeg = "/usr/bin/ffmpeg";

bool tool_present(const char* path) { return access(path, X_OK) == 0; }

using e2e::capture;

std::string quoted(const std::string& s) { return "'" + s + "'"; }

// The names in a folder (what a failed or finished write left there).
std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
  return v;
}

// The synthetic clip: smooth gradients (red along x, green along y, blue in time) and a
// 12x12 square moving 4 pixels right per frame. Frames [t0, t0 + n) as F32 [3, n, H, W].
Tensor pattern(int64_t t0, int64_t n, int H, int W) {
  Tensor t = Tensor::empty({3, n, H, W});
  float* f = t.f32();
  for (int64_t k = 0; k < n; ++k) {
    const int64_t fr = t0 + k;
    const int sx = int(4 + 4 * fr), sy = 18;
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        float rgb[3] = {0.1f + 0.8f * x / (W - 1), 0.1f + 0.8f * y / (H - 1),
                        0.5f + 0.3f * std::sin(0.6f * fr + 3.0f * x / W)};
        if (x >= sx && x < sx + 12 && y >= sy && y < sy + 12) {
          rgb[0] = 0.9f;
          rgb[1] = 0.85f;
          rgb[2] = 0.2f;
        }
        for (int c = 0; c < 3; ++c) f[((c * n + k) * H + y) * W + x] = rgb[c] * 2 - 1;
      }
  }
  return t;
}

using testutil::psnr8;

nlohmann::json probe(const std::string& file) {
  int code = 0;
  const std::string out = capture(std::string(kFfprobe) +
                                          " -v error -count_frames -show_streams -show_format "
                                          "-show_chapters -of json " + quoted(file),
                                      &code);
  if (code != 0) return nlohmann::json();
  return nlohmann::json::parse(out, nullptr, false);
}

double num(const nlohmann::json& j) { return std::stod(j.get<std::string>()); }

#define SKIP_WITHOUT_VIDEO()                                                      \
  do {                                                                            \
    if (!VideoWriter::available())                                                \
      GTEST_SKIP() << "built without FFmpeg (or without libx264): no video output"; \
  } while (0)

}  // namespace

TEST(VideoWriterRgb, RoundsToNearestAndClamps) {
  // [3, 1, 1, 7]: one row of 7 pixels; R carries the interesting values.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> r = {-1.0f, 1.0f, 0.0f, -2.0f, 3.0f, nan, 2.0f / 255 - 1};
  std::vector<float> v = r;
  for (int i = 0; i < 7; ++i) v.push_back(1.0f);   // G
  for (int i = 0; i < 7; ++i) v.push_back(-1.0f);  // B
  const auto rgb = frames_to_rgb8(Tensor::from_vector(v, {3, 1, 1, 7}));
  ASSERT_EQ(rgb.size(), 21u);
  const uint8_t want_r[7] = {0, 255, 128, 0, 255, 0, 1};
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(rgb[size_t(i) * 3], want_r[i]) << "pixel " << i;
    EXPECT_EQ(rgb[size_t(i) * 3 + 1], 255);
    EXPECT_EQ(rgb[size_t(i) * 3 + 2], 0);
  }
}

TEST(VideoWriterRgb, FrameMajorInterleavedLayout) {
  const Tensor t = pattern(0, 3, 6, 8);
  const auto rgb = frames_to_rgb8(t);
  ASSERT_EQ(rgb.size(), size_t(3 * 6 * 8 * 3));
  const float* f = t.f32();
  for (int k = 0; k < 3; ++k)
    for (int p = 0; p < 48; ++p)
      for (int c = 0; c < 3; ++c) {
        const float x = f[(c * 3 + k) * 48 + p];
        EXPECT_EQ(int(rgb[size_t((k * 48 + p) * 3 + c)]), int(std::lround((x + 1) * 127.5)));
      }
  EXPECT_THROW(frames_to_rgb8(Tensor::zeros({4, 1, 2, 2})), Error);
}

#ifndef MOGAGEN_HAVE_FFMPEG
TEST(VideoWriter, WithoutFfmpegSaysHowToGetVideo) {
  try {
    VideoWriter w("/tmp/x.mp4", 64, 48, 24, VideoMeta{});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::Usage);
    EXPECT_NE(std::string(e.what()).find("built without FFmpeg"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("--save-latents"), std::string::npos);
  }
}
#endif

TEST(VideoWriter, WritesH264WithTagsChaptersAndExactFrames) {
  SKIP_WITHOUT_VIDEO();
  testutil::TempDir dir("video");
  const std::string out = dir.path + "/clip.mp4";
  const int W = 64, H = 48;
  VideoMeta meta;
  meta.tags["title"] = "a red circle | a blue square";
  meta.tags["comment"] = "prompts: a red circle | a blue square";
  meta.tags["description"] = "mogagen test; seed 42; model wan2.1-t2v-1.3b";
  meta.tags["mogagen_seed"] = "42";
  meta.chapters = {{"Shot 1: red", 0, 3}, {"Shot 2: blue", 3, 7}, {"Shot 3: green", 7, 10}};
  std::vector<uint8_t> want;
  {
    VideoWriter w(out, W, H, 24.0, meta);
    const Tensor first = pattern(0, 1, H, W), rest = pattern(1, 9, H, W);
    w.write_frames(first);
    EXPECT_FALSE(fs::exists(out)) << "the final name must not exist before finish()";
    EXPECT_TRUE(fs::exists(w.temp_path()));
    EXPECT_EQ(fs::path(w.temp_path()).parent_path(), fs::path(out).parent_path());
    w.write_frames(rest);
    EXPECT_EQ(w.frames_written(), 10);
    EXPECT_FALSE(fs::exists(out));
    w.finish();
    EXPECT_TRUE(fs::exists(out));
    EXPECT_FALSE(fs::exists(w.temp_path()));
    w.finish();  // a second call does nothing
    for (const Tensor* t : {&first, &rest}) {
      const auto b = frames_to_rgb8(*t);
      want.insert(want.end(), b.begin(), b.end());
    }
  }
  EXPECT_EQ(entries(dir.path), std::vector<std::string>{"clip.mp4"});

  if (!tool_present(kFfprobe)) {
    std::cerr << "[ SKIPPED  ] ffprobe checks: " << kFfprobe << " not installed\n";
  } else {
    const auto j = probe(out);
    ASSERT_TRUE(j.is_object()) << "ffprobe failed on " << out;
    // One video stream; the chapters add a QuickTime text track (a "data" stream).
    nlohmann::json s;
    int videos = 0;
    for (const auto& st : j["streams"])
      if (st["codec_type"] == "video") {
        s = st;
        ++videos;
      } else {
        EXPECT_EQ(st["codec_type"], "data") << st.dump(1);
      }
    ASSERT_EQ(videos, 1) << j.dump(1);
    EXPECT_EQ(s["codec_name"], "h264");
    EXPECT_EQ(s["width"], W);
    EXPECT_EQ(s["height"], H);
    EXPECT_EQ(s["pix_fmt"], "yuv420p");
    EXPECT_EQ(s["r_frame_rate"], "24/1");
    EXPECT_EQ(s["avg_frame_rate"], "24/1");
    EXPECT_EQ(s["nb_frames"], "10");
    EXPECT_EQ(s["nb_read_frames"], "10");
    EXPECT_EQ(s["color_primaries"], "bt709");
    EXPECT_EQ(s["color_transfer"], "bt709");
    EXPECT_EQ(s["color_space"], "bt709");
    EXPECT_EQ(s["color_range"], "tv");
    EXPECT_NEAR(num(s["duration"]), 10.0 / 24, 1e-3);
    const auto& tags = j["format"]["tags"];
    EXPECT_EQ(tags.value("title", ""), meta.tags["title"]) << tags.dump(1);
    EXPECT_EQ(tags.value("comment", ""), meta.tags["comment"]);
    EXPECT_EQ(tags.value("description", ""), meta.tags["description"]);
    EXPECT_EQ(tags.value("mogagen_seed", ""), "42");
    // +faststart: the index (moov) comes before the media data (mdat).
    std::ifstream f(out, std::ios::binary);
    std::string head(4096, '\0');
    f.read(head.data(), std::streamsize(head.size()));
    ASSERT_NE(head.find("moov"), std::string::npos);
    EXPECT_LT(head.find("moov"), head.find("mdat"));
    const auto& ch = j["chapters"];
    ASSERT_EQ(ch.size(), 3u) << j.dump(1);
    for (size_t i = 0; i < 3; ++i) {
      const Chapter& c = meta.chapters[i];
      EXPECT_EQ(ch[i]["tags"].value("title", ""), c.title);
      EXPECT_NEAR(num(ch[i]["start_time"]), c.start_frame / 24.0, 1e-3) << "chapter " << i;
      EXPECT_NEAR(num(ch[i]["end_time"]), c.end_frame / 24.0, 1e-3) << "chapter " << i;
    }
  }

  if (!tool_present(kFfmpeg)) {
    std::cerr << "[ SKIPPED  ] decode check: " << kFfmpeg << " not installed\n";
    return;
  }
  int code = 0;
  const std::string raw = capture(std::string(kFfmpeg) + " -v error -i " + quoted(out) +
                                          " -vsync passthrough -f rawvideo -pix_fmt rgb24 -",
                                      &code);
  ASSERT_EQ(code, 0);
  ASSERT_EQ(raw.size(), want.size()) << "decoded a different number of frames";
  const std::vector<uint8_t> got(raw.begin(), raw.end());
  const double db = psnr8(got, want);
  EXPECT_GE(db, 35.0);
  std::cerr << "[   INFO   ] decoded PSNR " << db << " dB\n";
  for (int k = 0; k < 10; ++k) {  // every frame on its own, so none is swapped or repeated
    const size_t per = size_t(W) * H * 3;
    const std::vector<uint8_t> a(got.begin() + k * per, got.begin() + (k + 1) * per),
        b(want.begin() + k * per, want.begin() + (k + 1) * per);
    EXPECT_GE(psnr8(a, b), 30.0) << "frame " << k;
  }
}

TEST(VideoWriter, StandardTagsAndNtscRate) {
  SKIP_WITHOUT_VIDEO();
  if (!tool_present(kFfprobe)) GTEST_SKIP() << kFfprobe << " not installed";
  testutil::TempDir dir("video");
  const std::string out = dir.path + "/ntsc.mp4";
  VideoMeta meta;
  meta.tags["title"] = "only standard tags";
  {
    VideoWriter w(out, 32, 16, 29.97, meta, 23, "ultrafast");
    w.write_frames(pattern(0, 3, 16, 32));
    w.finish();
  }
  const auto j = probe(out);
  ASSERT_TRUE(j.is_object());
  ASSERT_EQ(j["streams"].size(), 1u) << "no chapters: no chapter track";
  EXPECT_EQ(j["streams"][0]["r_frame_rate"], "30000/1001");
  EXPECT_EQ(j["streams"][0]["nb_read_frames"], "3");
  EXPECT_EQ(j["format"]["tags"].value("title", ""), "only standard tags");
  EXPECT_TRUE(j["chapters"].empty());
}

TEST(VideoWriter, DestroyedWithoutFinishLeavesNothing) {
  SKIP_WITHOUT_VIDEO();
  testutil::TempDir dir("video");
  const std::string out = dir.path + "/gone.mp4";
  std::string tmp;
  {
    VideoWriter w(out, 64, 48, 24.0, VideoMeta{});
    tmp = w.temp_path();
    w.write_frames(pattern(0, 1, 48, 64));
    w.write_frames(pattern(1, 4, 48, 64));
    EXPECT_TRUE(fs::exists(tmp));
  }  // no finish(): as after an error or Ctrl-C
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_TRUE(entries(dir.path).empty());

  // An exception while streaming: the writer unwinds and removes its file too.
  try {
    VideoWriter w(out, 64, 48, 24.0, VideoMeta{});
    w.write_frames(pattern(0, 1, 48, 64));
    w.write_frames(pattern(0, 1, 32, 64));  // wrong size: throws
    FAIL() << "expected an error";
  } catch (const Error&) {
  }
  EXPECT_TRUE(entries(dir.path).empty());
}

TEST(VideoWriter, UnwritableFolderNamesThePath) {
  SKIP_WITHOUT_VIDEO();
  testutil::TempDir dir("video");
  std::ofstream(dir.path + "/a-file") << "x";
  std::vector<std::string> bad = {dir.path + "/no-such-folder/out.mp4",
                                  dir.path + "/a-file/out.mp4"};
  if (geteuid() != 0) {  // root writes anywhere
    fs::create_directory(dir.path + "/ro");
    fs::permissions(dir.path + "/ro", fs::perms::owner_read | fs::perms::owner_exec);
    bad.push_back(dir.path + "/ro/out.mp4");
  }
  if (fs::is_directory("/proc/self")) bad.push_back("/proc/self/mogagen-out.mp4");  // EACCES even for root
  for (const auto& path : bad) {
    try {
      VideoWriter w(path, 64, 48, 24.0, VideoMeta{});
      ADD_FAILURE() << "expected an error for " << path;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::Io) << e.what();
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  if (geteuid() != 0) fs::permissions(dir.path + "/ro", fs::perms::owner_all);
}

TEST(VideoWriter, BadArgumentsAreUsageErrors) {
  SKIP_WITHOUT_VIDEO();
  testutil::TempDir dir("video");
  const std::string out = dir.path + "/x.mp4";
  auto code_of = [&](auto make) {
    try {
      make();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(out), std::string::npos) << e.what();
      return e.code();
    }
    return ExitCode::Ok;
  };
  EXPECT_EQ(code_of([&] { VideoWriter(out, 63, 48, 24.0, VideoMeta{}); }), ExitCode::Usage);
  EXPECT_EQ(code_of([&] { VideoWriter(out, 64, 47, 24.0, VideoMeta{}); }), ExitCode::Usage);
  EXPECT_EQ(code_of([&] { VideoWriter(out, 64, 48, 0.0, VideoMeta{}); }), ExitCode::Usage);
  EXPECT_EQ(code_of([&] { VideoWriter(out, 64, 48, 24.0, VideoMeta{}, 60); }), ExitCode::Usage);
  EXPECT_EQ(code_of([&] { VideoWriter(out, 64, 48, 24.0, VideoMeta{}, 18, "warp-speed"); }),
            ExitCode::Usage);
  VideoMeta bad_chapter;
  bad_chapter.chapters = {{"empty", 5, 5}};
  EXPECT_EQ(code_of([&] { VideoWriter(out, 64, 48, 24.0, bad_chapter); }), ExitCode::Usage);
  try {
    VideoWriter(out, 63, 48, 24.0, VideoMeta{});
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("even"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(entries(dir.path).empty());
}
