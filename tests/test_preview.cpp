// PNG encoder and contact sheet.
#include "e2e_util.h"
#include "test_util.h"
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "io/preview.h"
#include "mogagen/error.h"

namespace fs = std::filesystem;
using namespace mg;

namespace {

const char* kFfmpeg = "/usr/bin/ffmpeg";

using e2e::capture;

uint32_t be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}

// Bitwise CRC-32, independent of the table-driven one under test.
uint32_t slow_crc(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
  }
  return ~c;
}

// Gradients plus pseudo-random noise: exercises every PNG filter type.
std::vector<uint8_t> test_image(int w, int h) {
  std::vector<uint8_t> v(size_t(w) * h * 3);
  uint32_t s = 12345;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      s = s * 1664525u + 1013904223u;
      uint8_t* p = &v[(size_t(y) * w + x) * 3];
      p[0] = uint8_t(x * 255 / std::max(1, w - 1));
      p[1] = uint8_t(y * 7 + (x > w / 2 ? 100 : 0));
      p[2] = uint8_t(s >> 24);
    }
  return v;
}

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

// Decodes a PNG file to RGB24 with ffmpeg.
std::vector<uint8_t> ffmpeg_decode(const std::string& path, int* code) {
  const std::string raw = capture(std::string(kFfmpeg) + " -v error -i '" + path +
                                      "' -f rawvideo -pix_fmt rgb24 -",
                                  code);
  return std::vector<uint8_t>(raw.begin(), raw.end());
}

}  // namespace

TEST(Preview, PngSignatureHeaderAndChunkCrcs) {
  for (bool compress : {true, false}) {
    const auto png = encode_png(test_image(37, 23), 37, 23, compress);
    ASSERT_GT(png.size(), 8u + 25 + 12 + 12);
    const uint8_t sig[8] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
    EXPECT_TRUE(std::equal(sig, sig + 8, png.begin()));
    EXPECT_EQ(be32(&png[8]), 13u);
    EXPECT_EQ(std::string(png.begin() + 12, png.begin() + 16), "IHDR");
    EXPECT_EQ(be32(&png[16]), 37u);
    EXPECT_EQ(be32(&png[20]), 23u);
    EXPECT_EQ(png[24], 8);  // bit depth
    EXPECT_EQ(png[25], 2);  // colour type RGB
    // Walk every chunk and check its CRC; the file ends with IEND.
    size_t off = 8;
    std::string last;
    while (off + 12 <= png.size()) {
      const uint32_t len = be32(&png[off]);
      ASSERT_LE(off + 12 + len, png.size());
      last = std::string(png.begin() + off + 4, png.begin() + off + 8);
      EXPECT_EQ(be32(&png[off + 8 + len]), slow_crc(&png[off + 4], len + 4)) << last;
      off += 12 + len;
    }
    EXPECT_EQ(off, png.size());
    EXPECT_EQ(last, "IEND");
  }
}

TEST(Preview, PngDecodesToTheSamePixels) {
  if (access(kFfmpeg, X_OK) != 0) GTEST_SKIP() << kFfmpeg << " not installed";
  testutil::TempDir dir("png");
  // 300x200 stored: several 64 KiB deflate blocks; 1x1 and odd sizes; compressed.
  struct Case {
    int w, h;
    bool compress;
  };
  for (const Case& c : {Case{37, 23, true}, Case{37, 23, false}, Case{300, 200, false},
                        Case{300, 200, true}, Case{1, 1, false}, Case{1, 1, true}}) {
    const auto img = test_image(c.w, c.h);
    const std::string path = dir.path + "/t.png";
    const auto png = encode_png(img, c.w, c.h, c.compress);
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(png.data()), std::streamsize(png.size()));
    int code = 0;
    const auto got = ffmpeg_decode(path, &code);
    ASSERT_EQ(code, 0) << c.w << "x" << c.h << " compress " << c.compress;
    EXPECT_EQ(got, img) << c.w << "x" << c.h << " compress " << c.compress;
  }
}

TEST(Preview, WritePngCreatesTheFileAtomically) {
  testutil::TempDir dir("png");
  const std::string path = dir.path + "/sheet.png";
  write_png(path, test_image(16, 8), 16, 8);
  EXPECT_EQ(read_all(path), encode_png(test_image(16, 8), 16, 8));
  EXPECT_FALSE(fs::exists(path + ".partial"));
  if (access(kFfmpeg, X_OK) == 0) {
    int code = 0;
    EXPECT_EQ(ffmpeg_decode(path, &code), test_image(16, 8));
  }
  const std::string bad = dir.path + "/missing/x.png";
  try {
    write_png(bad, test_image(2, 2), 2, 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::Io);
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  EXPECT_THROW(write_png(path, std::vector<uint8_t>(5), 2, 2), Error);
}

TEST(Preview, PickEvenlySpaced) {
  using V = std::vector<int64_t>;
  EXPECT_EQ(pick_evenly_spaced(10, 4), (V{0, 3, 6, 9}));
  EXPECT_EQ(pick_evenly_spaced(81, 4), (V{0, 27, 53, 80}));
  EXPECT_EQ(pick_evenly_spaced(5, 4), (V{0, 1, 3, 4}));
  EXPECT_EQ(pick_evenly_spaced(3, 4), (V{0, 1, 2}));
  EXPECT_EQ(pick_evenly_spaced(7, 1), (V{0}));
  EXPECT_EQ(pick_evenly_spaced(0, 4), V{});
}

TEST(Preview, ResizeBoxAverages) {
  // 4x2 -> 2x1: each output pixel is the mean of a 2x2 block.
  std::vector<uint8_t> img(4 * 2 * 3);
  for (size_t i = 0; i < img.size(); ++i) img[i] = uint8_t(i * 10);
  const auto out = resize_box(img.data(), 4, 2, 2, 1);
  ASSERT_EQ(out.size(), 6u);
  for (int x = 0; x < 2; ++x)
    for (int c = 0; c < 3; ++c) {
      const int a = img[size_t(2 * x * 3 + c)], b = img[size_t((2 * x + 1) * 3 + c)],
                d = img[size_t((4 + 2 * x) * 3 + c)], e = img[size_t((4 + 2 * x + 1) * 3 + c)];
      EXPECT_EQ(out[size_t(x * 3 + c)], (a + b + d + e + 2) / 4);
    }
  // A flat image stays flat at a fractional ratio.
  const std::vector<uint8_t> flat(64 * 48 * 3, 77);
  for (uint8_t v : resize_box(flat.data(), 64, 48, 45, 34)) ASSERT_EQ(v, 77);
}

TEST(Preview, ContactSheetOneRowPerShotEvenlySpaced) {
  const int W = 64, H = 48;
  auto solid = [&](uint8_t r, uint8_t g, uint8_t b) {
    std::vector<uint8_t> f(size_t(W) * H * 3);
    for (size_t i = 0; i < f.size(); i += 3) {
      f[i] = r;
      f[i + 1] = g;
      f[i + 2] = b;
    }
    return f;
  };
  std::vector<std::vector<std::vector<uint8_t>>> shots(3);
  for (int i = 0; i < 10; ++i) shots[0].push_back(solid(uint8_t(20 * i), 0, 0));  // 10 frames
  for (int i = 0; i < 2; ++i) shots[1].push_back(solid(0, uint8_t(100 + 50 * i), 0));  // 2
  // shots[2]: no frames
  ContactSheetOptions o;
  o.max_width = 200;
  const RgbImage s = contact_sheet(shots, W, H, o);
  const int tw = (200 - 5 * 4) / 4, th = (48 * tw + 32) / 64;  // 45 x 34
  ASSERT_EQ(s.width, 4 * tw + 5 * 4);
  ASSERT_EQ(s.height, 3 * th + 4 * 4);
  ASSERT_LE(s.width, 200);
  auto px = [&](int col, int row) {  // centre of a cell
    const int x = 4 + col * (tw + 4) + tw / 2, y = 4 + row * (th + 4) + th / 2;
    const uint8_t* p = &s.rgb[(size_t(y) * s.width + x) * 3];
    return std::vector<int>{p[0], p[1], p[2]};
  };
  const int frame_of_col[4] = {0, 3, 6, 9};
  for (int c = 0; c < 4; ++c) EXPECT_EQ(px(c, 0), (std::vector<int>{20 * frame_of_col[c], 0, 0}));
  EXPECT_EQ(px(0, 1), (std::vector<int>{0, 100, 0}));
  EXPECT_EQ(px(1, 1), (std::vector<int>{0, 150, 0}));
  EXPECT_EQ(px(2, 1), (std::vector<int>{32, 32, 32}));  // empty cell
  EXPECT_EQ(px(0, 2), (std::vector<int>{32, 32, 32}));  // empty shot
  EXPECT_EQ(s.rgb[0], 32);                              // border

  // Passing only the picked frames gives the same sheet.
  std::vector<std::vector<std::vector<uint8_t>>> picked = shots;
  picked[0] = {shots[0][0], shots[0][3], shots[0][6], shots[0][9]};
  EXPECT_EQ(contact_sheet(picked, W, H, o).rgb, s.rgb);

  // Small frames are never enlarged.
  const RgbImage full = contact_sheet(shots, W, H);
  EXPECT_EQ(full.width, 4 * W + 5 * 4);
  EXPECT_EQ(full.height, 3 * H + 4 * 4);
  EXPECT_THROW(contact_sheet({}, W, H), Error);
  std::vector<std::vector<std::vector<uint8_t>>> wrong_size(1);
  wrong_size[0].push_back(std::vector<uint8_t>(7));
  EXPECT_THROW(contact_sheet(wrong_size, W, H), Error);
}

TEST(Preview, WriteContactSheetRowsOfConsecutiveFrames) {
  testutil::TempDir dir("png");
  const int W = 32, H = 16;
  std::vector<std::vector<uint8_t>> frames;
  for (int i = 0; i < 6; ++i) frames.push_back(std::vector<uint8_t>(size_t(W) * H * 3, uint8_t(40 * i)));
  const std::string path = dir.path + "/p.png";
  write_contact_sheet(path, frames, W, H, 2, 3);  // rows {0,1,2} and {3,4,5}
  const auto png = read_all(path);
  ASSERT_GT(png.size(), 24u);
  const int sw = 3 * W + 4 * 4, sh = 2 * H + 3 * 4;
  EXPECT_EQ(be32(&png[16]), uint32_t(sw));
  EXPECT_EQ(be32(&png[20]), uint32_t(sh));
  if (access(kFfmpeg, X_OK) != 0) return;
  int code = 0;
  const auto rgb = ffmpeg_decode(path, &code);
  ASSERT_EQ(rgb.size(), size_t(sw) * sh * 3);
  for (int i = 0; i < 6; ++i) {
    const int x = 4 + (i % 3) * (W + 4) + 5, y = 4 + (i / 3) * (H + 4) + 5;
    EXPECT_EQ(rgb[(size_t(y) * sw + x) * 3], 40 * i) << "frame " << i;
  }
}
