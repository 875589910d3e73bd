// H.264 / MP4 writer (libavformat, libavcodec, libswscale).
//
// Output: libx264, yuv420p, BT.709 colour tags (primaries, transfer, matrix) with the
// limited ("tv") range, the requested frame rate as an exact rational time base, the moov
// atom moved to the front (movflags +faststart), MP4 metadata tags and one chapter per
// shot.
//
// Frames go to a temporary file in the same folder (".<name>.partial.mp4"), which finish()
// renames to the final name atomically (same file system). A writer destroyed without a
// successful finish() (an exception, Ctrl-C) removes the temporary file, so no
// half-written video ever looks finished.
//
// Built without FFmpeg (MOGAGEN_HAVE_FFMPEG undefined) the class still compiles, and its
// constructor throws mg::Error(ExitCode::Usage) explaining how to get video output.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mogagen/tensor.h"

namespace mg {

// One chapter, in output frames: [start_frame, end_frame).
struct Chapter {
  std::string title;
  int64_t start_frame = 0, end_frame = 0;
};

struct VideoMeta {
  // MP4 metadata (title, comment, description, or any key: prompts, seed, model, settings).
  // Only standard keys (title, comment, description, artist, ...) go to iTunes-style "ilst"
  // atoms, which every player shows. With any other key (e.g. "mogagen_seed"), every tag is
  // written as a QuickTime "mdta" key instead, so no tag is lost (ffprobe, exiftool, mpv and
  // VLC read those; Apple players may not show the title).
  std::map<std::string, std::string> tags;
  // One per shot; written as MP4 chapters (QuickTime chapter track and Nero "chpl").
  std::vector<Chapter> chapters;
};

// Frames to bytes. frames: host F32 [3, n, H, W] in [-1, 1] (channel-major, as the VAE
// decodes them). Returns n*H*W*3 bytes: frame after frame, row-major RGB triplets.
//
// Conversion: byte = floor((x + 1) * 127.5 + 0.5) clamped to [0, 255], i.e.
// round-to-nearest (halves up) of ((x + 1) / 2) * 255. Wan's reference code truncates
// instead, which is biased by -0.5 on average; rounding halves that error. NaN maps to 0.
std::vector<uint8_t> frames_to_rgb8(const Tensor& frames);

class VideoWriter {
 public:
  // width and height must be even (H.264 4:2:0); fps > 0 (23.976, 29.97, 59.94, ... are
  // taken as 24000/1001, 30000/1001, 60000/1001; other values as the closest rational
  // with a denominator <= 2^20, which is exact for integers and short decimals);
  // crf 0..51; preset is an x264 preset name (ultrafast ... placebo).
  // Throws mg::Error: Usage for bad arguments, a missing libx264 or FFmpeg; Io (with the
  // path) when the folder is missing or not writable.
  VideoWriter(const std::string& final_path, int width, int height, double fps,
              const VideoMeta& meta, int crf = 18, const std::string& preset = "medium");
  ~VideoWriter();
  VideoWriter(const VideoWriter&) = delete;
  VideoWriter& operator=(const VideoWriter&) = delete;

  // frames: host F32 [3, n, H, W] in [-1, 1], n >= 1. Call as often as needed (the VAE
  // streams 1 frame, then 4 at a time); frames are encoded as they come.
  void write_frames(const Tensor& frames);
  // Same, from RGB8 bytes as produced by frames_to_rgb8 (n whole frames).
  void write_rgb8(const uint8_t* rgb, int64_t n);
  // Flushes the encoder, writes the trailer (index, chapters, metadata), closes the file
  // and renames it to the final path. Needs at least one frame. A second call is a no-op.
  void finish();

  int64_t frames_written() const { return frames_; }
  const std::string& final_path() const { return final_; }
  const std::string& temp_path() const { return tmp_; }

  // True when this build can write videos (FFmpeg present and its libx264 encoder found).
  static bool available();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string final_, tmp_;
  int64_t frames_ = 0;
  bool finished_ = false;
};

}  // namespace mg
