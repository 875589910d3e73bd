#include "cli/commands.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "mogagen/error.h"
#include "mogagen/log.h"
#include "mogagen/ops.h"
#include "pipeline/batch.h"
#include "pipeline/job.h"
#include "pipeline/random_model.h"
#include "pipeline/render.h"
#include "pipeline/verify.h"

namespace mg::cli {
namespace {

const char* kExamples = R"(
Examples:
  mogagen -p "a red circle moves left on a blue background" -o circle.mp4
  mogagen --shots configs/example-shots.json -o film.mp4 --preview film.png
  mogagen --batch jobs.jsonl                    # one JSON job per line; rerun resumes
  mogagen --model Wan2.1-T2V-1.3B-Diffusers -p "a cat surfing" --size 832x480 --frames 81 \
          --steps 50 --guidance 5 --seed 42 --device cuda -o cat.mp4
  mogagen verify dit ../shared/golden/wan-a     # engine vs reference outputs
  mogagen make-random-model --config configs/tiny-t2v.json --seed 1 -o tiny-model
Exit codes: 0 ok, 1 failed check/job, 2 usage, 3 bad input file, 4 weights, 5 output,
6 device, 130 interrupted (see README.md).)";

struct VerifyArgs {
  std::string component;
  std::string dir;
  std::string device = "cpu";
  double tol = -1;  // default per device
};

int run_verify(const VerifyArgs& a) {
  auto ops = make_ops(a.device);
  const double tol = a.tol > 0 ? a.tol : (ops->device().is_cpu() ? 1e-4 : 2e-2);
  std::vector<VerifyLine> lines;
  if (a.component == "dit")
    lines = verify_dit(a.dir, *ops);
  else if (a.component == "t5")
    lines = verify_t5(a.dir, *ops);
  else if (a.component == "vae")
    lines = verify_vae(a.dir, *ops);
  else if (a.component == "sched")
    lines = verify_sched(a.dir, *ops);
  else if (a.component == "moga")
    lines = verify_moga(a.dir, *ops);
  else
    throw usage_error("verify: unknown component '" + a.component +
                      "' (expected dit, t5, vae, sched or moga)");
  int bad = 0;
  for (const auto& l : lines) {
    const bool ok = l.rel_err <= tol;
    bad += !ok;
    std::printf("%-44s rel_err %.3e  %s\n", l.name.c_str(), l.rel_err, ok ? "ok" : "FAIL");
  }
  std::printf("%s: %zu outputs, %d above tolerance %.1e on %s\n", a.component.c_str(),
              lines.size(), bad, tol, ops->name().c_str());
  return bad ? static_cast<int>(ExitCode::Failure) : 0;
}

// Render flags: strings so "given or not" is known; applied over config/shot-list values.
struct RenderFlags {
  std::string prompt, negative, shots, batch, config, model, dit, t5, vae, tokenizer, moga,
      size, sampler, attention, device, output, save_latents, decode_latents, preview, dump_rgb;
  double fps = 0, duration = 0, shift = 0, guidance = 0;
  int frames = 0, steps = 0, crf = 0;
  int64_t seed = 0;
};

}  // namespace

int run(int argc, char** argv) {
  CLI::App app{"mogagen: text to long multi-shot video (Wan2.1 DiT with MoGA attention)",
               "mogagen"};
  app.footer(kExamples);
  app.require_subcommand(0, 1);
  app.set_version_flag("--version", std::string("mogagen ") + MOGAGEN_VERSION);

  RenderFlags f;
  std::map<std::string, CLI::Option*> o;
  o["prompt"] = app.add_option("-p,--prompt", f.prompt, "text prompt (one shot)");
  o["negative"] = app.add_option("-n,--negative-prompt", f.negative,
                                 "negative prompt (default: Wan2.1's own)");
  o["shots"] = app.add_option("--shots", f.shots, "shot list JSON (docs/shot-list.md)");
  o["batch"] = app.add_option("--batch", f.batch, "JSON Lines batch file (docs/batch.md)");
  o["config"] = app.add_option("--config", f.config, "JSON file with defaults for every flag");
  o["model"] = app.add_option("--model", f.model,
                              "model folder (diffusers layout) or DiT file; default: "
                              "models/default");
  o["dit"] = app.add_option("--dit", f.dit, "DiT weights (file, index.json or folder)");
  o["t5"] = app.add_option("--t5", f.t5, "umT5 encoder weights");
  o["vae"] = app.add_option("--vae", f.vae, "VAE weights");
  o["tokenizer"] = app.add_option("--tokenizer", f.tokenizer, "umT5 spiece.model");
  o["moga"] = app.add_option("--moga-weights", f.moga, "MoGA router tensors merged by name");
  o["size"] = app.add_option("--size", f.size, "WIDTHxHEIGHT, multiples of 16 (832x480)");
  o["fps"] = app.add_option("--fps", f.fps, "frames per second (24)");
  o["frames"] = app.add_option("--frames", f.frames, "video frames, 4k+1 (81)");
  o["duration"] = app.add_option("--duration", f.duration, "seconds (rounded to 4k+1 frames)");
  o["steps"] = app.add_option("--steps", f.steps, "sampling steps (50)");
  o["shift"] = app.add_option("--shift", f.shift, "timestep shift (5.0)");
  o["guidance"] = app.add_option("--guidance", f.guidance, "classifier-free guidance (5.0)");
  o["sampler"] = app.add_option("--sampler", f.sampler, "unipc | euler (unipc)");
  o["seed"] = app.add_option("--seed", f.seed, "random seed; -1 picks one (-1)");
  o["attention"] = app.add_option("--attention", f.attention,
                                  "auto | dense | moga (auto: moga when the model has routers)");
  o["device"] = app.add_option("--device", f.device, "auto | cpu | cuda | cuda:N (auto)");
  o["output"] = app.add_option("-o,--output", f.output, "output .mp4");
  o["save_latents"] = app.add_option("--save-latents", f.save_latents,
                                     "also write the final latents (safetensors)");
  o["decode_latents"] = app.add_option("--decode-latents", f.decode_latents,
                                       "skip sampling: decode saved latents");
  o["preview"] = app.add_option("--preview", f.preview, "contact sheet PNG (frames per shot)");
  o["crf"] = app.add_option("--crf", f.crf, "H.264 quality, 0..51 (18)");
  o["dump_rgb"] = app.add_option("--dump-rgb", f.dump_rgb,
                                 "also write the encoded frames as raw RGB8 (for tests)");
  // A later occurrence of a flag overrides an earlier one (handy for wrapper scripts).
  for (auto& kv : o) kv.second->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  bool quiet = false, verbose = false;
  app.add_flag("-q,--quiet", quiet, "errors only");
  app.add_flag("-v,--verbose", verbose, "per-stage times, memory, routing statistics");

  VerifyArgs va;
  auto* verify = app.add_subcommand(
      "verify", "Run one component on a golden case directory and report relative errors");
  verify->add_option("component", va.component, "dit | t5 | vae | sched | moga")->required();
  verify->add_option("golden-dir", va.dir, "golden set (e.g. ../shared/golden/wan-a)")
      ->required();
  verify->add_option("--device", va.device, "cpu | cuda | cuda:N")->capture_default_str();
  verify->add_option("--tol", va.tol, "tolerance (default 1e-4 on cpu, 2e-2 on cuda)");

  RandomModelArgs ra;
  auto* rnd = app.add_subcommand(
      "make-random-model", "Write a random-weight model folder (for tests and trying the engine)");
  rnd->add_option("--config", ra.config, "model config (e.g. configs/tiny-t2v.json)")->required();
  rnd->add_option("--seed", ra.seed, "seed")->capture_default_str();
  rnd->add_option("-o,--output", ra.output, "folder to create")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return static_cast<int>(ExitCode::Usage);
  }
  set_log_level(quiet ? "quiet" : verbose ? "verbose" : "info");
  if (app.got_subcommand(verify)) return run_verify(va);
  if (app.got_subcommand(rnd)) {
    make_random_model(ra);
    return 0;
  }

  auto given = [&](const char* k) { return o[k]->count() > 0; };
  const int modes = given("prompt") + given("shots") + given("batch") + given("decode_latents");
  if (modes == 0 && !given("config")) {
    std::fputs(app.help().c_str(), stdout);
    return static_cast<int>(ExitCode::Usage);
  }
  if (given("prompt") + given("shots") + given("batch") > 1)
    throw usage_error("give only one of --prompt, --shots and --batch");

  // Settings in rising precedence: built-in defaults, the model's own defaults
  // (model_index.json "_mogagen.defaults"), --config, the shot list, command-line flags.
  auto build = [&](JobSpec& job) {
    if (given("config")) apply_settings(job, parse_json_file(f.config), "", false);
    if (given("shots")) load_shot_list(job, f.shots);
    // Command-line flags override the config file and the shot list's global settings.
    if (given("prompt")) job.shots = {Shot{f.prompt, {}, {}, {}, 0, 0}};
    if (given("negative")) job.negative_prompt = f.negative;
    if (given("model")) job.model = f.model;
    if (given("dit")) job.dit = f.dit;
    if (given("t5")) job.t5 = f.t5;
    if (given("vae")) job.vae = f.vae;
    if (given("tokenizer")) job.tokenizer = f.tokenizer;
    if (given("moga")) job.moga_weights = f.moga;
    if (given("size")) parse_size(f.size, job.width, job.height, "--size");
    if (given("fps")) job.fps = f.fps;
    if (given("frames")) {
      job.frames = f.frames;
      job.duration.reset();
    }
    if (given("duration")) {
      job.duration = f.duration;
      job.frames.reset();
    }
    if (given("steps")) job.steps = f.steps;
    if (given("shift")) job.shift = f.shift;
    if (given("guidance")) job.guidance = f.guidance;
    if (given("sampler")) job.sampler = f.sampler;
    if (given("seed")) job.seed = f.seed;
    if (given("attention")) job.attention = f.attention;
    if (given("device")) job.device = f.device;
    if (given("output")) job.output = f.output;
    if (given("save_latents")) job.save_latents = f.save_latents;
    if (given("decode_latents")) job.decode_latents = f.decode_latents;
    if (given("preview")) job.preview = f.preview;
    if (given("crf")) job.crf = f.crf;
    if (given("dump_rgb")) job.dump_rgb = f.dump_rgb;
  };
  JobSpec job;
  build(job);
  if (const auto defaults = model_defaults(job)) {
    JobSpec with_model;
    apply_settings(with_model, *defaults, "/_mogagen/defaults", false);
    build(with_model);
    // A shot list gives every shot its length: a frame count from the model's defaults
    // does not apply to it (one set by the user still draws finalize()'s note).
    if (with_model.is_shot_list() && !job.frames && !job.duration) {
      with_model.frames.reset();
      with_model.duration.reset();
    }
    job = with_model;
  }

  install_interrupt_handler();
  Progress progress(quiet, verbose);
  if (given("batch")) {
    BatchSummary s = run_batch(f.batch, job, progress);
    if (s.interrupted) return static_cast<int>(ExitCode::Interrupted);
    return s.failed ? static_cast<int>(ExitCode::Failure) : 0;
  }
  if (job.shots.empty() && !job.decode_latents.empty())
    job.shots = {Shot{"(decoded from " + job.decode_latents + ")", {}, {}, {}, 0, 0}};
  finalize(job);
  const ModelPaths mp = resolve_model_paths(job);
  Engine engine(mp, job.device, progress);
  RenderResult r = engine.render(job);
  if (!r.output.empty())
    progress.info("wrote " + r.output + " (" + std::to_string(r.frames) + " frames, seed " +
                  std::to_string(r.seed) + ", " + std::to_string(int(r.seconds)) + " s)");
  return 0;
}

}  // namespace mg::cli
