#include "pipeline/render.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "io/preview.h"
#include "io/tokenizer.h"
#include "io/video_writer.h"
#include "mogagen/checkpoint.h"
#include "mogagen/log.h"
#include "mogagen/ops.h"
#include "models/umt5/umt5.h"
#include "models/wan_dit/wan_dit.h"
#include "models/wan_vae/wan_vae.h"
#include "pipeline/scheduler.h"

namespace fs = std::filesystem;

namespace mg {

namespace {

const char* kWeightsHelp = " (see README.md, section \"Getting Wan2.1 weights\")";

std::string find_first(const fs::path& dir, const std::vector<std::string>& rel) {
  for (const auto& r : rel) {
    std::error_code ec;
    if (fs::exists(dir / r, ec)) return (dir / r).string();
  }
  return "";
}

// config.json beside the weights (diffusers component folder or Wan folder), or "".
std::string config_beside(const WeightMap& m) {
  if (m.source().files().empty()) return "";
  fs::path p = fs::path(m.source().files()[0]).parent_path() / "config.json";
  std::error_code ec;
  return fs::exists(p, ec) ? p.string() : "";
}

nlohmann::json read_json(const std::string& path) {
  return parse_json_file(path).value;
}

}  // namespace

std::string default_model_dir() {
  if (const char* env = std::getenv("MOGAGEN_MODEL")) return env;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  for (fs::path base : {exe.parent_path() / ".." / "models" / "default",
                        exe.parent_path() / ".." / "share" / "mogagen" / "models" / "default"}) {
    if (fs::exists(base / "model_index.json", ec)) return fs::weakly_canonical(base, ec).string();
  }
  return "";
}

std::optional<JsonDoc> model_defaults(const JobSpec& job) {
  std::string root = job.model;
  if (root.empty() &&
      (job.dit.empty() || job.t5.empty() || job.vae.empty() || job.tokenizer.empty()))
    root = default_model_dir();
  if (root.empty()) return std::nullopt;
  std::error_code ec;
  const fs::path idx = fs::path(root) / "model_index.json";
  if (!fs::is_regular_file(idx, ec)) return std::nullopt;
  JsonDoc doc = parse_json_file(idx.string());
  const nlohmann::json& j = doc.value;
  if (!j.is_object() || !j.contains("_mogagen") || !j["_mogagen"].is_object() ||
      !j["_mogagen"].contains("defaults"))
    return std::nullopt;
  return doc;
}

ModelPaths resolve_model_paths(const JobSpec& job) {
  ModelPaths p;
  p.dit = job.dit;
  p.t5 = job.t5;
  p.vae = job.vae;
  p.tokenizer = job.tokenizer;
  p.moga_weights = job.moga_weights;
  std::string root = job.model;
  if (root.empty() && (p.dit.empty() || p.t5.empty() || p.vae.empty() || p.tokenizer.empty()))
    root = default_model_dir();
  if (!root.empty()) {
    std::error_code ec;
    if (!fs::exists(root, ec))
      throw weights_error("--model: '" + root + "' does not exist" + kWeightsHelp);
    if (fs::is_directory(root, ec)) {
      if (p.dit.empty()) p.dit = root;
      if (p.t5.empty()) p.t5 = root;
      if (p.vae.empty()) p.vae = root;
      if (p.tokenizer.empty())
        p.tokenizer = find_first(root, {"tokenizer/spiece.model", "google/umt5-xxl/spiece.model",
                                        "spiece.model", "text_encoder/spiece.model"});
    } else if (p.dit.empty()) {
      p.dit = root;  // a single DiT file (ComfyUI)
    }
  }
  std::vector<std::string> missing;
  if (p.dit.empty()) missing.push_back("the DiT (--dit)");
  if (p.t5.empty()) missing.push_back("the umT5 text encoder (--t5)");
  if (p.vae.empty()) missing.push_back("the VAE (--vae)");
  if (p.tokenizer.empty()) missing.push_back("the tokenizer's spiece.model (--tokenizer)");
  if (!missing.empty()) {
    std::string m = "no weights for ";
    for (size_t i = 0; i < missing.size(); ++i) m += (i ? ", " : "") + missing[i];
    m += ": pass --model DIR (a diffusers folder) or the per-component flags";
    throw weights_error(m + kWeightsHelp);
  }
  return p;
}

struct Engine::Impl {
  ModelPaths paths;
  std::string device;
  Progress& progress;
  std::unique_ptr<Ops> ops;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<UMT5Encoder> t5;
  std::unique_ptr<WanDit> dit;
  std::unique_ptr<WanVaeDecoder> vae;
  WanDitConfig dit_cfg;
  std::string dit_desc;

  Impl(const ModelPaths& p, const std::string& dev, Progress& pr)
      : paths(p), device(dev), progress(pr) {}

  void load() {
    const auto t0 = std::chrono::steady_clock::now();
    ops = make_ops(device);
    tok = std::make_unique<Tokenizer>(Tokenizer::open(paths.tokenizer));

    WeightMap t5map = WeightMap::open(paths.t5, Component::T5);
    const std::string t5cfg = config_beside(t5map);
    UMT5Config tc = t5cfg.empty() ? UMT5Config::infer(t5map) : UMT5Config::from_json(read_json(t5cfg));
    t5 = std::make_unique<UMT5Encoder>(tc, t5map, *ops);

    WeightMap ditmap = WeightMap::open(paths.dit, Component::DiT);
    if (!paths.moga_weights.empty()) ditmap.merge(paths.moga_weights);
    const std::string dcfg = config_beside(ditmap);
    const WanDitConfig asked =
        dcfg.empty() ? WanDitConfig::infer(ditmap) : WanDitConfig::from_json(read_json(dcfg));
    dit = std::make_unique<WanDit>(asked, ditmap, *ops);
    dit_cfg = dit->config();  // the router count comes from the checkpoint
    if (!dit->has_routers()) dit_cfg.moga.groups = 0;
    dit_desc = paths.dit + " (" + layout_name(ditmap.layout()) + ", dim " +
               std::to_string(dit_cfg.dim) + ", " + std::to_string(dit_cfg.num_layers) +
               " layers" + (dit_cfg.moga.groups ? ", MoGA M=" + std::to_string(dit_cfg.moga.groups) : "") +
               ")";

    WeightMap vaemap = WeightMap::open(paths.vae, Component::VAE);
    const std::string vcfg = config_beside(vaemap);
    WanVaeConfig vc = vcfg.empty() ? WanVaeConfig::infer(vaemap) : WanVaeConfig::from_json(read_json(vcfg));
    vae = std::make_unique<WanVaeDecoder>(vc, vaemap, *ops);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    progress.info("loaded " + dit_desc + " on " + ops->name() + " in " +
                  std::to_string(secs).substr(0, 5) + " s");
  }

  Tensor encode_text(const std::string& text) {
    auto ids = tok->encode(text, dit_cfg.text_len);
    return t5->encode(ids);
  }
};

Engine::Engine(const ModelPaths& paths, const std::string& device, Progress& progress)
    : impl_(std::make_unique<Impl>(paths, device, progress)) {
  impl_->load();
}
Engine::~Engine() = default;
const ModelPaths& Engine::paths() const { return impl_->paths; }
const std::string& Engine::device() const { return impl_->device; }

RenderResult Engine::render(const JobSpec& job) {
  Impl& m = *impl_;
  Progress& pr = m.progress;
  const auto t0 = std::chrono::steady_clock::now();
  RenderResult res;
  res.output = job.output;
  uint64_t seed = job.seed >= 0 ? uint64_t(job.seed) : std::random_device{}() * 2654435761ull;
  seed &= 0x7fffffffffffffffull;
  res.seed = seed;
  for (const auto& n : job.notes) pr.info("note: " + n);

  const int64_t lt = job.latent_frames, lh = job.height / 8, lw = job.width / 8;
  const std::vector<int> shots = job.shot_latent_frames();
  AttentionMode mode = AttentionMode::Dense;
  if (job.attention == "moga" || (job.attention == "auto" && m.dit_cfg.moga.groups > 0))
    mode = AttentionMode::Moga;
  if (mode == AttentionMode::Moga && m.dit_cfg.moga.groups == 0)
    throw weights_error("--attention moga: the DiT checkpoint " + m.paths.dit +
                        " has no MoGA router weights (blocks.N.self_attn.router.weight); use "
                        "--attention dense or add routers with --moga-weights FILE");

  Tensor latents;
  if (!job.decode_latents.empty()) {
    TensorSource src;
    try {
      src = TensorSource::open(job.decode_latents);
    } catch (const Error& e) {
      throw input_error(std::string("--decode-latents: ") + e.what());
    }
    if (!src.has("latents"))
      throw input_error(job.decode_latents + ": no tensor named 'latents' (write it with "
                        "--save-latents)");
    latents = src.load_f32("latents");
    if (latents.ndim() != 4 || latents.dim(0) != 16)
      throw input_error(job.decode_latents + ": 'latents' must be [16, T, H/8, W/8], found " +
                        latents.str());
  } else {
    // Text: one embedding per shot caption, and per shot negative prompt.
    pr.stage_begin("text encoder", int64_t(job.shots.size()) * 2, "captions");
    std::vector<Tensor> cond, uncond;
    for (const auto& s : job.shots) {
      cond.push_back(m.encode_text(s.prompt));
      pr.advance();
      uncond.push_back(m.encode_text(s.negative_prompt.value_or(job.negative_prompt)));
      pr.advance();
    }
    pr.stage_end();
    auto cache_c = m.dit->prepare_context(cond);
    auto cache_u = m.dit->prepare_context(uncond);

    const Schedule sched = make_schedule(parse_sampler(job.sampler), job.steps, job.shift);
    FlowSampler sampler(parse_sampler(job.sampler), sched);
    Tensor x = gaussian_noise({16, lt, lh, lw}, seed);
    const bool cfg = job.guidance != 1.0;
    pr.stage_begin("denoising", job.steps, "steps");
    RoutingTally tally;  // --verbose: MoGA's balance over every forward of the sampling
    const bool tally_routing = pr.is_verbose() && mode == AttentionMode::Moga;
    for (int k = 0; k < job.steps; ++k) {
      throw_if_interrupted();
      const double t = sched.timesteps[k];
      Tensor vc = m.dit->forward(x, t, cache_c, shots, mode);
      if (tally_routing) tally.add(m.dit->group_sizes(), k);
      Tensor v = vc;
      if (cfg) {
        Tensor vu = m.dit->forward(x, t, cache_u, shots, mode);
        if (tally_routing) tally.add(m.dit->group_sizes(), k);
        v = cfg_combine(vc, vu, float(job.guidance));
      }
      x = sampler.step(x, v);
      pr.advance();
      if (k == 0 && tally_routing) pr.verbose(m.dit->routing_report());
    }
    pr.stage_end();
    if (tally_routing) pr.verbose(tally.report());
    latents = x;
    if (!job.save_latents.empty()) {
      const std::string tmp = job.save_latents + ".partial";
      write_safetensors(tmp, {{"latents", latents}},
                        {{"seed", std::to_string(seed)}, {"size", std::to_string(job.width) + "x" + std::to_string(job.height)}});
      fs::rename(tmp, job.save_latents);
      pr.info("latents written to " + job.save_latents);
    }
  }
  if (job.output.empty() && job.dump_rgb.empty()) {
    res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return res;
  }

  // Decode, streaming frames into the writer.
  VideoMeta meta;
  std::string prompts;
  for (size_t i = 0; i < job.shots.size(); ++i)
    prompts += (i ? " | " : "") + job.shots[i].prompt;
  meta.tags["title"] = job.shots[0].prompt;
  meta.tags["comment"] = prompts;
  std::ostringstream desc;
  desc << "mogagen " << MOGAGEN_VERSION << "; model " << m.dit_desc << "; seed " << seed
       << "; steps " << job.steps << "; sampler " << job.sampler << "; shift " << job.shift
       << "; guidance " << job.guidance << "; attention "
       << (mode == AttentionMode::Moga ? "moga" : "dense") << "; size " << job.width << "x"
       << job.height << "; fps " << job.fps;
  meta.tags["description"] = desc.str();
  meta.tags["mogagen_seed"] = std::to_string(seed);
  meta.tags["mogagen_prompts"] = nlohmann::json([&] {
    std::vector<std::string> v;
    for (const auto& s : job.shots) v.push_back(s.prompt);
    return v;
  }()).dump();
  int64_t start = 0;
  for (size_t i = 0; i < job.shots.size(); ++i) {
    const int64_t n = latents.dim(1) == lt ? job.shots[i].video_frames : 0;
    if (n) meta.chapters.push_back({"Shot " + std::to_string(i + 1) + ": " + job.shots[i].prompt, start, start + n});
    start += n;
  }
  const int64_t out_frames = 1 + 4 * (latents.dim(1) - 1);
  const int out_w = int(latents.dim(3) * 8), out_h = int(latents.dim(2) * 8);
  // Without --output (only --dump-rgb) frames are decoded but no video is written.
  std::unique_ptr<VideoWriter> writer;
  if (!job.output.empty())
    writer = std::make_unique<VideoWriter>(job.output, out_w, out_h, job.fps, meta, job.crf);
  // Preview: up to 4 evenly spaced frames of every shot (one sheet row per shot).
  std::vector<std::pair<int64_t, size_t>> keep_index;  // (frame, shot row)
  if (!job.preview.empty()) {
    if (meta.chapters.empty()) {
      for (int64_t f : pick_evenly_spaced(out_frames, 4)) keep_index.push_back({f, 0});
    } else {
      for (size_t c = 0; c < meta.chapters.size(); ++c) {
        const auto& ch = meta.chapters[c];
        for (int64_t f : pick_evenly_spaced(ch.end_frame - ch.start_frame, 4))
          keep_index.push_back({ch.start_frame + f, c});
      }
    }
  }
  std::vector<std::vector<std::vector<uint8_t>>> sheet_rows(
      meta.chapters.empty() ? size_t(1) : meta.chapters.size());
  std::ofstream dump;
  if (!job.dump_rgb.empty()) {
    dump.open(job.dump_rgb, std::ios::binary);
    if (!dump) throw io_error(job.dump_rgb + ": cannot open for writing");
  }
  int64_t frame_no = 0;
  pr.stage_begin("decoding", out_frames, "frames");
  m.vae->decode(latents, [&](const Tensor& frames) {
    throw_if_interrupted();
    if (writer) writer->write_frames(frames);
    if (dump.is_open() || !keep_index.empty()) {
      const auto rgb = frames_to_rgb8(frames);  // once for the dump and the preview
      if (dump.is_open())
        dump.write(reinterpret_cast<const char*>(rgb.data()), std::streamsize(rgb.size()));
      const size_t per = size_t(out_w) * out_h * 3;
      for (int64_t j = 0; j < frames.dim(1) && !keep_index.empty(); ++j)
        for (const auto& [want, row] : keep_index)
          if (want == frame_no + j)
            sheet_rows[row].emplace_back(rgb.begin() + j * per, rgb.begin() + (j + 1) * per);
    }
    frame_no += frames.dim(1);
    pr.advance(frames.dim(1));
  });
  pr.stage_end();
  res.frames = frame_no;
  if (writer) writer->finish();
  if (!job.preview.empty()) {
    const RgbImage sheet = contact_sheet(sheet_rows, out_w, out_h);
    write_png(job.preview, sheet.rgb, sheet.width, sheet.height);
    pr.info("preview written to " + job.preview);
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace mg
