#include "pipeline/job.h"

#include <cmath>
#include <filesystem>
#include <set>
#include <unistd.h>

#include "mogagen/error.h"

namespace mg {

const char* const kWanNegativePrompt =
    "\xe8\x89\xb2\xe8\xb0\x83\xe8\x89\xb3\xe4\xb8\xbd\xef\xbc\x8c\xe8\xbf\x87\xe6\x9b\x9d\xef"
    "\xbc\x8c\xe9\x9d\x99\xe6\x80\x81\xef\xbc\x8c\xe7\xbb\x86\xe8\x8a\x82\xe6\xa8\xa1\xe7\xb3"
    "\x8a\xe4\xb8\x8d\xe6\xb8\x85\xef\xbc\x8c\xe5\xad\x97\xe5\xb9\x95\xef\xbc\x8c\xe9\xa3\x8e"
    "\xe6\xa0\xbc\xef\xbc\x8c\xe4\xbd\x9c\xe5\x93\x81\xef\xbc\x8c\xe7\x94\xbb\xe4\xbd\x9c\xef"
    "\xbc\x8c\xe7\x94\xbb\xe9\x9d\xa2\xef\xbc\x8c\xe9\x9d\x99\xe6\xad\xa2\xef\xbc\x8c\xe6\x95"
    "\xb4\xe4\xbd\x93\xe5\x8f\x91\xe7\x81\xb0\xef\xbc\x8c\xe6\x9c\x80\xe5\xb7\xae\xe8\xb4\xa8"
    "\xe9\x87\x8f\xef\xbc\x8c\xe4\xbd\x8e\xe8\xb4\xa8\xe9\x87\x8f\xef\xbc\x8cJPEG\xe5\x8e\x8b"
    "\xe7\xbc\xa9\xe6\xae\x8b\xe7\x95\x99\xef\xbc\x8c\xe4\xb8\x91\xe9\x99\x8b\xe7\x9a\x84\xef"
    "\xbc\x8c\xe6\xae\x8b\xe7\xbc\xba\xe7\x9a\x84\xef\xbc\x8c\xe5\xa4\x9a\xe4\xbd\x99\xe7\x9a"
    "\x84\xe6\x89\x8b\xe6\x8c\x87\xef\xbc\x8c\xe7\x94\xbb\xe5\xbe\x97\xe4\xb8\x8d\xe5\xa5\xbd"
    "\xe7\x9a\x84\xe6\x89\x8b\xe9\x83\xa8\xef\xbc\x8c\xe7\x94\xbb\xe5\xbe\x97\xe4\xb8\x8d\xe5"
    "\xa5\xbd\xe7\x9a\x84\xe8\x84\xb8\xe9\x83\xa8\xef\xbc\x8c\xe7\x95\xb8\xe5\xbd\xa2\xe7\x9a"
    "\x84\xef\xbc\x8c\xe6\xaf\x81\xe5\xae\xb9\xe7\x9a\x84\xef\xbc\x8c\xe5\xbd\xa2\xe6\x80\x81"
    "\xe7\x95\xb8\xe5\xbd\xa2\xe7\x9a\x84\xe8\x82\xa2\xe4\xbd\x93\xef\xbc\x8c\xe6\x89\x8b\xe6"
    "\x8c\x87\xe8\x9e\x8d\xe5\x90\x88\xef\xbc\x8c\xe9\x9d\x99\xe6\xad\xa2\xe4\xb8\x8d\xe5\x8a"
    "\xa8\xe7\x9a\x84\xe7\x94\xbb\xe9\x9d\xa2\xef\xbc\x8c\xe6\x9d\x82\xe4\xb9\xb1\xe7\x9a\x84"
    "\xe8\x83\x8c\xe6\x99\xaf\xef\xbc\x8c\xe4\xb8\x89\xe6\x9d\xa1\xe8\x85\xbf\xef\xbc\x8c\xe8"
    "\x83\x8c\xe6\x99\xaf\xe4\xba\xba\xe5\xbe\x88\xe5\xa4\x9a\xef\xbc\x8c\xe5\x80\x92\xe7\x9d"
    "\x80\xe8\xb5\xb0";

namespace {

using nlohmann::json;

const std::set<std::string> kSettingKeys = {
    "prompt", "negative_prompt", "shots", "output", "model", "dit", "t5", "vae", "tokenizer",
    "moga_weights", "size", "fps", "frames", "duration", "steps", "shift", "guidance",
    "sampler", "seed", "attention", "device", "save_latents", "preview", "crf", "_comment"};
const std::set<std::string> kShotKeys = {"prompt", "duration", "frames", "negative_prompt",
                                         "_comment"};

std::string type_name(const json& v) { return v.type_name(); }

[[noreturn]] void bad_type(const JsonDoc& d, const std::string& ptr, const std::string& key,
                           const std::string& expected, const json& got) {
  throw input_error(d.where(ptr) + ": \"" + key + "\" must be " + expected + ", found " +
                    type_name(got) + " " + got.dump());
}

std::string get_str(const JsonDoc& d, const std::string& ptr, const std::string& key,
                    const json& v) {
  if (!v.is_string()) bad_type(d, ptr, key, "a string", v);
  return v.get<std::string>();
}
double get_num(const JsonDoc& d, const std::string& ptr, const std::string& key,
               const json& v) {
  if (!v.is_number()) bad_type(d, ptr, key, "a number", v);
  return v.get<double>();
}
int64_t get_int(const JsonDoc& d, const std::string& ptr, const std::string& key,
                const json& v) {
  if (!v.is_number_integer() && !v.is_number_unsigned()) bad_type(d, ptr, key, "an integer", v);
  return v.get<int64_t>();
}

// Closest allowed key (edit distance <= 2) for "did you mean".
std::string suggest(const std::string& k, const std::set<std::string>& allowed) {
  std::string best;
  size_t bestd = 3;
  for (const auto& a : allowed) {
    std::vector<size_t> prev(a.size() + 1), cur(a.size() + 1);
    for (size_t j = 0; j <= a.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= k.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= a.size(); ++j)
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (k[i - 1] != a[j - 1])});
      std::swap(prev, cur);
    }
    if (prev[a.size()] < bestd) {
      bestd = prev[a.size()];
      best = a;
    }
  }
  return best.empty() ? "" : " (did you mean \"" + best + "\"?)";
}

void check_keys(const JsonDoc& d, const std::string& at, const json& obj,
                const std::set<std::string>& allowed, const char* what) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (!allowed.count(it.key())) {
      std::string list;
      for (const auto& a : allowed)
        if (a != "_comment") list += (list.empty() ? "" : ", ") + a;
      throw input_error(d.where(at + "/" + it.key()) + ": unknown key \"" + it.key() + "\" in " +
                        what + suggest(it.key(), allowed) + "; allowed keys: " + list);
    }
  }
}

Shot parse_shot(const JsonDoc& d, const std::string& ptr, const json& s) {
  if (!s.is_object())
    throw input_error(d.where(ptr) + ": each shot must be an object like {\"prompt\": \"...\", "
                      "\"duration\": 5}, found " + type_name(s));
  check_keys(d, ptr, s, kShotKeys, "a shot");
  Shot shot;
  if (!s.contains("prompt"))
    throw input_error(d.source + ": shot " + ptr + " has no \"prompt\"");
  shot.prompt = get_str(d, ptr + "/prompt", "prompt", s["prompt"]);
  if (s.contains("negative_prompt"))
    shot.negative_prompt = get_str(d, ptr + "/negative_prompt", "negative_prompt",
                                   s["negative_prompt"]);
  if (s.contains("frames"))
    shot.frames = static_cast<int>(get_int(d, ptr + "/frames", "frames", s["frames"]));
  if (s.contains("duration"))
    shot.duration = get_num(d, ptr + "/duration", "duration", s["duration"]);
  if (shot.frames && shot.duration)
    throw input_error(d.where(ptr + "/frames") + ": give either \"frames\" or \"duration\" "
                      "for a shot, not both");
  return shot;
}

}  // namespace

void parse_size(const std::string& s, int& w, int& h, const std::string& where) {
  const auto x = s.find_first_of("x*");
  try {
    if (x == std::string::npos) throw std::invalid_argument("no x");
    size_t p1 = 0, p2 = 0;
    const std::string a = s.substr(0, x), b = s.substr(x + 1);
    w = std::stoi(a, &p1);
    h = std::stoi(b, &p2);
    if (p1 != a.size() || p2 != b.size()) throw std::invalid_argument("junk");
  } catch (const std::exception&) {
    throw usage_error(where + ": size must look like WIDTHxHEIGHT (e.g. 832x480), found '" + s +
                      "'");
  }
}

void apply_settings(JobSpec& job, const JsonDoc& d, const std::string& at, bool allow_shots) {
  const json& o = at.empty() ? d.value : d.value.at(json::json_pointer(at));
  if (!o.is_object())
    throw input_error(d.where(at) + ": expected a JSON object of settings, found " +
                      type_name(o));
  check_keys(d, at, o, kSettingKeys, "the settings");
  auto P = [&](const std::string& k) { return at + "/" + k; };
  for (auto it = o.begin(); it != o.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    if (k == "_comment") continue;
    if (k == "prompt") {
      job.shots = {Shot{get_str(d, P(k), k, v), {}, {}, {}, 0, 0}};
    } else if (k == "shots") {
      if (!allow_shots)
        throw input_error(d.where(P(k)) + ": \"shots\" is not allowed here; put the shot list "
                          "in its own file and pass it with --shots");
      if (!v.is_array() || v.empty())
        throw input_error(d.where(P(k)) + ": \"shots\" must be a non-empty array of shots");
      job.shots.clear();
      for (size_t i = 0; i < v.size(); ++i)
        job.shots.push_back(parse_shot(d, P(k) + "/" + std::to_string(i), v[i]));
    } else if (k == "negative_prompt") {
      job.negative_prompt = get_str(d, P(k), k, v);
    } else if (k == "output") {
      job.output = get_str(d, P(k), k, v);
    } else if (k == "model") {
      job.model = get_str(d, P(k), k, v);
    } else if (k == "dit") {
      job.dit = get_str(d, P(k), k, v);
    } else if (k == "t5") {
      job.t5 = get_str(d, P(k), k, v);
    } else if (k == "vae") {
      job.vae = get_str(d, P(k), k, v);
    } else if (k == "tokenizer") {
      job.tokenizer = get_str(d, P(k), k, v);
    } else if (k == "moga_weights") {
      job.moga_weights = get_str(d, P(k), k, v);
    } else if (k == "size") {
      parse_size(get_str(d, P(k), k, v), job.width, job.height, d.where(P(k)));
    } else if (k == "fps") {
      job.fps = get_num(d, P(k), k, v);
    } else if (k == "frames") {
      job.frames = static_cast<int>(get_int(d, P(k), k, v));
      job.duration.reset();
    } else if (k == "duration") {
      job.duration = get_num(d, P(k), k, v);
      job.frames.reset();
    } else if (k == "steps") {
      job.steps = static_cast<int>(get_int(d, P(k), k, v));
    } else if (k == "shift") {
      job.shift = get_num(d, P(k), k, v);
    } else if (k == "guidance") {
      job.guidance = get_num(d, P(k), k, v);
    } else if (k == "sampler") {
      job.sampler = get_str(d, P(k), k, v);
    } else if (k == "seed") {
      job.seed = get_int(d, P(k), k, v);
    } else if (k == "attention") {
      job.attention = get_str(d, P(k), k, v);
    } else if (k == "device") {
      job.device = get_str(d, P(k), k, v);
    } else if (k == "save_latents") {
      job.save_latents = get_str(d, P(k), k, v);
    } else if (k == "preview") {
      job.preview = get_str(d, P(k), k, v);
    } else if (k == "crf") {
      job.crf = static_cast<int>(get_int(d, P(k), k, v));
    }
  }
}

void load_shot_list(JobSpec& job, const std::string& path) {
  JsonDoc d = parse_json_file(path);
  if (!d.value.is_object() || !d.value.contains("shots"))
    throw input_error(path + ": a shot list is a JSON object with a \"shots\" array (see "
                      "docs/shot-list.md)");
  apply_settings(job, d, "", true);
}

std::vector<int> JobSpec::shot_latent_frames() const {
  std::vector<int> r;
  for (const auto& s : shots) r.push_back(s.latent_frames);
  return r;
}

bool JobSpec::is_shot_list() const {
  return shots.size() > 1 || (!shots.empty() && (shots[0].frames || shots[0].duration));
}

void finalize(JobSpec& job) {
  job.notes.clear();
  if (job.shots.empty())
    throw usage_error("nothing to render: give --prompt \"...\", --shots FILE or --batch FILE");
  for (size_t i = 0; i < job.shots.size(); ++i)
    if (job.shots[i].prompt.find_first_not_of(" \t\r\n") == std::string::npos)
      throw usage_error("shot " + std::to_string(i + 1) + ": the prompt is empty");
  if (job.width <= 0 || job.height <= 0 || job.width % 16 || job.height % 16)
    throw usage_error("--size: width and height must be positive multiples of 16 (the VAE "
                      "downsamples by 8 and the DiT patches by 2), found " +
                      std::to_string(job.width) + "x" + std::to_string(job.height) +
                      "; e.g. 832x480");
  if (!(job.fps > 0 && job.fps <= 240))
    throw usage_error("--fps: expected a number in (0, 240], found " + std::to_string(job.fps));
  if (job.steps < 1 || job.steps > 1000)
    throw usage_error("--steps: expected 1..1000, found " + std::to_string(job.steps));
  if (!(job.shift > 0)) throw usage_error("--shift: expected a positive number");
  if (!(job.guidance >= 0)) throw usage_error("--guidance: expected a number >= 0");
  if (job.sampler != "unipc" && job.sampler != "euler")
    throw usage_error("--sampler: expected unipc or euler, found '" + job.sampler + "'");
  if (job.attention != "auto" && job.attention != "dense" && job.attention != "moga")
    throw usage_error("--attention: expected auto, dense or moga, found '" + job.attention + "'");
  if (job.crf < 0 || job.crf > 51)
    throw usage_error("crf: expected 0..51, found " + std::to_string(job.crf));
  if (job.seed < -1) throw usage_error("--seed: expected a non-negative integer (or -1 for random)");

  // Frame counts. A video of 1 + 4K frames has 1 + K latent frames; the first shot owns the
  // first latent frame, later shots own n/4 latent frames for n video frames.
  auto frames_of = [&](std::optional<int> f, std::optional<double> d, const std::string& what)
      -> std::optional<double> {
    if (f) {
      if (*f < 1) throw usage_error(what + ": frames must be at least 1, found " + std::to_string(*f));
      return double(*f);
    }
    if (d) {
      if (!(*d > 0)) throw usage_error(what + ": duration must be positive, found " + std::to_string(*d));
      return *d * job.fps;
    }
    return std::nullopt;
  };
  if (!job.is_shot_list()) {
    auto n = frames_of(job.frames, job.duration, "--frames/--duration");
    double want = n ? *n : 81.0;
    if (job.frames && (*job.frames - 1) % 4 != 0)
      throw usage_error("--frames: the Wan VAE makes 4k+1 frames (e.g. 81, 121, 1441), found " +
                        std::to_string(*job.frames) + "; nearest valid: " +
                        std::to_string(1 + 4 * std::max(0, int(std::lround((*job.frames - 1) / 4.0)))));
    const int k = std::max(0, int(std::lround((want - 1) / 4.0)));
    job.shots[0].latent_frames = 1 + k;
    if (!job.frames && job.duration && std::fabs(1 + 4 * k - want) > 1e-6)
      job.notes.push_back("duration " + std::to_string(*job.duration) + " s at " +
                          std::to_string(job.fps) + " fps rounded to " + std::to_string(1 + 4 * k) +
                          " frames (4k+1)");
  } else {
    if (job.frames || job.duration)
      job.notes.push_back("a shot list sets each shot's length; the job's frames/duration are "
                          "ignored");
    for (size_t i = 0; i < job.shots.size(); ++i) {
      Shot& s = job.shots[i];
      const std::string what = "shot " + std::to_string(i + 1);
      auto n = frames_of(s.frames, s.duration, what);
      if (!n)
        throw usage_error(what + ": give its length as \"duration\" (seconds) or \"frames\"");
      int lf;
      double exact;
      if (i == 0) {
        exact = 1.0 + (*n - 1.0) / 4.0;
        lf = 1 + std::max(0, int(std::lround((*n - 1.0) / 4.0)));
      } else {
        exact = *n / 4.0;
        lf = std::max(1, int(std::lround(*n / 4.0)));
      }
      s.latent_frames = lf;
      if (std::fabs(exact - lf) > 1e-6) {
        const int got = i == 0 ? 1 + 4 * (lf - 1) : 4 * lf;
        job.notes.push_back(what + ": " + std::to_string(*n) + " frames rounded to " +
                            std::to_string(got) + " (" + std::to_string(lf) +
                            " latent frames; the first shot has 4k+1 frames, later shots "
                            "multiples of 4)");
      }
    }
  }
  job.latent_frames = 0;
  for (auto& s : job.shots) {
    job.latent_frames += s.latent_frames;
  }
  for (size_t i = 0; i < job.shots.size(); ++i)
    job.shots[i].video_frames = i == 0 ? 1 + 4 * (job.shots[i].latent_frames - 1)
                                       : 4 * job.shots[i].latent_frames;
  job.video_frames = 1 + 4 * (job.latent_frames - 1);
  if (job.latent_frames > 1024)
    throw usage_error("the video is too long: " + std::to_string(job.video_frames) +
                      " frames (" + std::to_string(job.latent_frames) +
                      " latent frames); the DiT's position table holds 1024 latent frames");

  if (!job.decode_latents.empty() && !std::filesystem::is_regular_file(job.decode_latents))
    throw input_error("--decode-latents: '" + job.decode_latents +
                      "' does not exist (expected a latents file written by --save-latents)");
  if (job.device != "auto" && job.device != "cpu" && job.device != "cuda" &&
      !(job.device.rfind("cuda:", 0) == 0 && job.device.size() > 5 &&
        job.device.find_first_not_of("0123456789", 5) == std::string::npos))
    throw usage_error("--device: expected auto, cpu, cuda or cuda:N, found '" + job.device + "'");

  // Outputs.
  if (job.output.empty() && job.save_latents.empty() && job.dump_rgb.empty())
    throw usage_error("no output: give --output FILE.mp4 (or --save-latents FILE)");
  for (const std::string* p : {&job.output, &job.save_latents, &job.preview, &job.dump_rgb}) {
    if (p->empty()) continue;
    std::filesystem::path path(*p);
    std::filesystem::path dir = path.parent_path();
    if (dir.empty()) dir = ".";
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec))
      throw Error(ExitCode::Io, "output folder '" + dir.string() + "' for '" + *p +
                                    "' does not exist");
    if (access(dir.c_str(), W_OK) != 0)
      throw Error(ExitCode::Io, "output folder '" + dir.string() + "' for '" + *p +
                                    "' is not writable");
  }
  if (!job.output.empty() && std::filesystem::path(job.output).extension() != ".mp4")
    throw usage_error("--output: expected a .mp4 file name, found '" + job.output + "'");
  if (!job.preview.empty() && std::filesystem::path(job.preview).extension() != ".png")
    throw usage_error("--preview: expected a .png file name, found '" + job.preview + "'");
}

}  // namespace mg
