// H.264 / MP4 writer (libavformat, libavcodec, libswscale): libx264, yuv420p, BT.709 tags,
// the exact requested frame rate, +faststart, MP4 metadata and one chapter per shot.
// Frames go to a temporary file in the same folder, renamed to the final name only by
// finish(); a writer destroyed without finish() (an error, Ctrl-C) removes it, so no
// half-written video ever looks finished.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mogagen/tensor.h"

namespace mg {

struct Chapter {
  std::string title;
  int64_t start_frame = 0, end_frame = 0;  // [start, end)
};

struct VideoMeta {
  std::map<std::string, std::string> tags;  // MP4 metadata (title, comment, description, ...)
  std::vector<Chapter> chapters;
};

// [3, n, H, W] floats in [-1, 1] -> n*H*W*3 RGB bytes, frame by frame:
// byte = round((x + 1) * 127.5) clamped to [0, 255].
std::vector<uint8_t> frames_to_rgb8(const Tensor& frames);

class VideoWriter {
 public:
  VideoWriter(const std::string& final_path, int width, int height, double fps,
              const VideoMeta& meta, int crf = 18, const std::string& preset = "medium");
  ~VideoWriter();
  VideoWriter(const VideoWriter&) = delete;
  VideoWriter& operator=(const VideoWriter&) = delete;

  // frames: host F32 [3, n, H, W] in [-1, 1]; may be called many times (streamed chunks).
  void write_frames(const Tensor& frames);
  // Flushes the encoder, writes the trailer, closes, and renames into place.
  void finish();
  int64_t frames_written() const { return frames_; }
  const std::string& temp_path() const { return tmp_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string final_, tmp_;
  int64_t frames_ = 0;
  bool finished_ = false;
};

}  // namespace mg
