// clip_report: what a rendered clip shows, read the way the default model's semantic tests
// read it (tests/video_analysis.h): the object's colour name, its share of the pixels and
// its motion. For sweeps over seeds and settings (tools/train/sweep.sh).
//
//   clip_report FRAMES.rgb WIDTH HEIGHT [FIRST LAST]   (raw RGB8, as mogagen --dump-rgb writes)
//
// Prints one line: colour=<name> rgb=<r>,<g>,<b> share=<object share> dx=<px/frame> dy=<px/frame>
// frames=<count>. Exit 3 where the file is missing, empty or not whole frames of that size.
#include <cstdio>
#include <filesystem>
#include <string>

#include "../tests/video_analysis.h"

int main(int argc, char** argv) {
  if (argc != 4 && argc != 6) {
    std::fprintf(stderr, "usage: clip_report FRAMES.rgb WIDTH HEIGHT [FIRST LAST]\n");
    return 2;
  }
  const std::string path = argv[1];
  int w = 0, h = 0, f0 = 0, f1 = -1;
  if (std::sscanf(argv[2], "%d", &w) != 1 || std::sscanf(argv[3], "%d", &h) != 1 || w <= 0 || h <= 0 ||
      (argc == 6 && (std::sscanf(argv[4], "%d", &f0) != 1 || std::sscanf(argv[5], "%d", &f1) != 1))) {
    std::fprintf(stderr, "clip_report: WIDTH, HEIGHT, FIRST and LAST are whole numbers, WIDTH and HEIGHT > 0\n");
    return 2;
  }
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(path, ec);
  const uintmax_t frame = uintmax_t(w) * uintmax_t(h) * 3;
  if (ec || bytes == 0 || bytes % frame) {
    std::fprintf(stderr, "clip_report: %s: expected whole %dx%d RGB8 frames (%ju bytes each), found %s\n",
                 path.c_str(), w, h, frame, ec ? "no readable file" : (std::to_string(bytes) + " bytes").c_str());
    return 3;
  }
  const video::Clip c = video::read_rgb(path, w, h);
  if (f1 < 0) f1 = c.frames;
  if (f0 < 0 || f1 > c.frames || f0 + 2 > f1) {
    std::fprintf(stderr, "clip_report: frames %d to %d: the clip has %d frames (at least two needed)\n", f0, f1,
                 c.frames);
    return 3;
  }
  const video::Scene s = video::analyse(c, f0, f1);
  const auto mv = video::motion(s);
  std::printf("colour=%s rgb=%.3f,%.3f,%.3f share=%.4f dx=%.3f dy=%.3f frames=%d\n",
              video::colour_name(s.object).c_str(), s.object[0], s.object[1], s.object[2], s.object_share, mv[0],
              mv[1], f1 - f0);
  return 0;
}
