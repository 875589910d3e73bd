// A render job: what to render and how, validated with every default filled in before any
// heavy work starts. Built from (lowest to highest precedence) built-in defaults, the
// --config file, a shot list's global settings, command-line flags, and a batch line.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pipeline/json_locate.h"

namespace mg {

// Wan2.1's default negative prompt (wan/configs/shared_config.py), used when none is given.
extern const char* const kWanNegativePrompt;

struct Shot {
  std::string prompt;
  std::optional<std::string> negative_prompt;  // falls back to the job's
  std::optional<int> frames;                   // video frames requested
  std::optional<double> duration;              // seconds requested
  int latent_frames = 0;                       // derived
  int video_frames = 0;                        // derived (what the shot really gets)
};

struct JobSpec {
  std::vector<Shot> shots;
  std::string negative_prompt = kWanNegativePrompt;
  // weights
  std::string model;  // folder or file; empty: the default model (models/)
  std::string dit, t5, vae, tokenizer, moga_weights;
  // video
  int width = 832, height = 480;
  double fps = 24.0;
  std::optional<int> frames;        // total video frames (one-prompt jobs)
  std::optional<double> duration;   // total seconds (one-prompt jobs)
  // sampling
  int steps = 50;
  double shift = 5.0;
  double guidance = 5.0;
  std::string sampler = "unipc";
  int64_t seed = -1;  // -1: pick one at random (recorded in the video's metadata)
  std::string attention = "auto";  // auto | dense | moga
  std::string device = "auto";     // auto | cpu | cuda | cuda:N
  // outputs
  std::string output;
  std::string save_latents;    // write the final latents (safetensors) here too
  std::string decode_latents;  // skip sampling: decode these latents
  std::string preview;         // PNG contact sheet
  std::string dump_rgb;        // raw RGB8 frames as encoded (tests, tools)
  int crf = 18;

  // derived by finalize()
  int latent_frames = 0;
  int video_frames = 0;
  std::vector<std::string> notes;  // roundings and other adjustments, shown to the user
  std::vector<int> shot_latent_frames() const;
  // A shot list: several shots, or one shot with its own length. Its shots set the video's
  // length; the job's frames/duration do not apply.
  bool is_shot_list() const;
};

// Applies the settings object `doc` at JSON pointer `at` (e.g. "" or "/0") onto `job`.
// allow_shots: whether "shots" may appear; allow_io: prompt/output/shots allowed
// (false for --config files, which hold defaults only... prompts are allowed there too).
// Unknown keys and wrong types are errors naming the file, line and column.
void apply_settings(JobSpec& job, const JsonDoc& doc, const std::string& at, bool allow_shots);

// Parses "832x480".
void parse_size(const std::string& s, int& w, int& h, const std::string& where);

// Validates and derives: size multiple of 16, frame counts (4k+1 overall; shot lengths
// turned into latent frames as moga-spec.md says, with notes when rounded), steps, shift,
// guidance, sampler, attention, output path ends in .mp4, ... Throws mg::Error(Usage or
// BadInput) naming the field.
void finalize(JobSpec& job);

// Loads a shot list file: {global settings..., "shots": [{prompt, duration|frames,
// negative_prompt?}, ...]} onto job.
void load_shot_list(JobSpec& job, const std::string& path);

}  // namespace mg
