// Reading what a rendered video shows, for the semantic tests of the default model: the
// background colour, the object's pixels, their colour name and where they move.
// Frames are raw RGB8 as `mogagen --dump-rgb` writes them.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace video {

struct Clip {
  int frames = 0, height = 0, width = 0;
  std::vector<uint8_t> rgb;  // [frames][height][width][3]
  const uint8_t* px(int f, int y, int x) const {
    return rgb.data() + ((int64_t(f) * height + y) * width + x) * 3;
  }
};

// Reads a --dump-rgb file of the given frame size; frames = file size / frame bytes.
inline Clip read_rgb(const std::string& path, int width, int height) {
  Clip c;
  c.width = width;
  c.height = height;
  std::ifstream f(path, std::ios::binary);
  c.rgb.assign(std::istreambuf_iterator<char>(f), {});
  c.frames = int(c.rgb.size() / (size_t(width) * height * 3));
  return c;
}

using Rgb = std::array<double, 3>;  // each in [0, 1]

// Hue in degrees [0, 360) and saturation, value in [0, 1] (HSV).
inline std::array<double, 3> hsv(const Rgb& c) {
  const double mx = std::max({c[0], c[1], c[2]}), mn = std::min({c[0], c[1], c[2]});
  const double d = mx - mn;
  double h = 0;
  if (d > 1e-9) {
    if (mx == c[0])
      h = std::fmod((c[1] - c[2]) / d + 6.0, 6.0);
    else if (mx == c[1])
      h = (c[2] - c[0]) / d + 2.0;
    else
      h = (c[0] - c[1]) / d + 4.0;
  }
  return {60.0 * h, mx > 0 ? d / mx : 0.0, mx};
}

// What frames [f0, f1) show: the background (per-channel median), the pixels that differ
// from it (L1 distance over 0.35 on a 0..3 scale), their mean colour and, per frame, their
// centroid (x, y; negative when a frame shows none).
struct Scene {
  Rgb background{};
  Rgb object{};
  double object_share = 0;  // of all pixels
  std::vector<std::array<double, 2>> centroid;
};

inline Scene analyse(const Clip& c, int f0, int f1) {
  Scene s;
  std::array<std::vector<uint8_t>, 3> ch;
  for (int f = f0; f < f1; ++f)
    for (int y = 0; y < c.height; ++y)
      for (int x = 0; x < c.width; ++x)
        for (int k = 0; k < 3; ++k) ch[k].push_back(c.px(f, y, x)[k]);
  for (int k = 0; k < 3; ++k) {
    auto mid = ch[k].begin() + ch[k].size() / 2;
    std::nth_element(ch[k].begin(), mid, ch[k].end());
    s.background[k] = *mid / 255.0;
  }
  double sum[3] = {0, 0, 0};
  int64_t n = 0, total = 0;
  for (int f = f0; f < f1; ++f) {
    double cx = 0, cy = 0;
    int64_t m = 0;
    for (int y = 0; y < c.height; ++y)
      for (int x = 0; x < c.width; ++x) {
        const uint8_t* p = c.px(f, y, x);
        double d = 0;
        for (int k = 0; k < 3; ++k) d += std::fabs(p[k] / 255.0 - s.background[k]);
        ++total;
        if (d <= 0.35) continue;
        for (int k = 0; k < 3; ++k) sum[k] += p[k] / 255.0;
        cx += x;
        cy += y;
        ++m;
      }
    n += m;
    s.centroid.push_back(m ? std::array<double, 2>{cx / m, cy / m} : std::array<double, 2>{-1, -1});
  }
  if (n) s.object = {sum[0] / n, sum[1] / n, sum[2] / n};
  s.object_share = total ? double(n) / double(total) : 0;
  return s;
}

// The caption grammar's object colours (tools/train/shapes.py) and their hues; "white"
// is told apart by low saturation and high value.
inline const std::vector<std::pair<std::string, Rgb>>& palette() {
  static const std::vector<std::pair<std::string, Rgb>> p = {
      {"red", {0.90, 0.12, 0.10}},   {"orange", {0.98, 0.55, 0.05}}, {"yellow", {0.95, 0.90, 0.10}},
      {"green", {0.10, 0.75, 0.20}}, {"cyan", {0.10, 0.80, 0.85}},   {"blue", {0.12, 0.25, 0.90}},
      {"purple", {0.60, 0.20, 0.85}}, {"white", {0.95, 0.95, 0.95}}};
  return p;
}

// The palette colour name nearest to c: white when unsaturated and bright, else the
// nearest hue on the colour wheel; "none" for dark or grey pixels.
inline std::string colour_name(const Rgb& c) {
  const auto h = hsv(c);
  if (h[1] < 0.25) return h[2] > 0.7 ? "white" : "none";
  std::string best = "none";
  double bd = 1e9;
  for (const auto& [name, rgb] : palette()) {
    if (name == "white") continue;
    const double ph = hsv(rgb)[0];
    double d = std::fabs(h[0] - ph);
    d = std::min(d, 360.0 - d);
    if (d < bd) {
      bd = d;
      best = name;
    }
  }
  return best;
}

// Mean horizontal / vertical motion (pixels per frame) of the object's centroid over the
// frames where it is seen: slope of a least-squares line.
inline std::array<double, 2> motion(const Scene& s) {
  double n = 0, st = 0, stt = 0, sx = 0, sy = 0, stx = 0, sty = 0;
  for (size_t t = 0; t < s.centroid.size(); ++t) {
    if (s.centroid[t][0] < 0) continue;
    n += 1;
    st += double(t);
    stt += double(t) * double(t);
    sx += s.centroid[t][0];
    sy += s.centroid[t][1];
    stx += double(t) * s.centroid[t][0];
    sty += double(t) * s.centroid[t][1];
  }
  const double den = n * stt - st * st;
  if (n < 2 || den == 0) return {0, 0};
  return {(n * stx - st * sx) / den, (n * sty - st * sy) / den};
}

}  // namespace video
