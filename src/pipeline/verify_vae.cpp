// `mogagen verify vae`: decode the golden latent with the Wan VAE decoder from both weight
// namings and compare with the reference video before and after the clamp.
#include <filesystem>
#include <utility>

#include "mogagen/checkpoint.h"
#include "models/wan_vae/wan_vae.h"
#include "pipeline/json_locate.h"
#include "pipeline/verify.h"

namespace mg {

namespace {

namespace fs = std::filesystem;

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

Tensor need(const TensorSource& cs, const std::string& name) {
  if (!cs.has(name)) throw input_error(cs.describe() + ": no tensor '" + name + "'");
  return cs.load_f32(name);
}

}  // namespace

std::vector<VerifyLine> verify_vae(const std::string& dir_in, Ops& ops) {
  const fs::path dir = resolve_case_dir(dir_in, "vae");
  if (!is_file(dir / "config.json"))
    throw input_error("verify vae: missing " + (dir / "config.json").string());
  WanVaeConfig cfg = WanVaeConfig::from_json(parse_json_file((dir / "config.json").string()).value);

  const TensorSource cs = TensorSource::open((dir / "case.safetensors").string());
  const Tensor z = need(cs, "z");
  const Tensor mean = need(cs, "latents_mean"), std_ = need(cs, "latents_std");
  if (z.ndim() != 4 || z.dim(0) != cfg.z_dim || mean.numel() != cfg.z_dim || std_.numel() != cfg.z_dim)
    throw input_error(cs.describe() + ": z " + z.str() + ", latents_mean " + mean.str() +
                      " and latents_std " + std_.str() + " do not match z_dim " +
                      std::to_string(cfg.z_dim));
  cfg.latents_mean.assign(mean.f32(), mean.f32() + mean.numel());
  cfg.latents_std.assign(std_.f32(), std_.f32() + std_.numel());
  cfg.validate();
  const Tensor ref_raw = need(cs, "video_unclamped"), ref = need(cs, "video");

  std::vector<std::pair<std::string, std::string>> namings;
  for (const auto& [tag, file] : {std::pair<std::string, std::string>{"wan", "weights_wan.safetensors"},
                                  {"diffusers", "weights_diffusers.safetensors"}})
    if (is_file(dir / file)) namings.push_back({tag, file});
  if (namings.empty())
    throw input_error("verify vae: " + dir.string() +
                      " holds neither weights_wan.safetensors nor weights_diffusers.safetensors");

  std::vector<VerifyLine> lines;
  for (const auto& [tag, file] : namings) {
    const WeightMap m = WeightMap::open((dir / file).string(), Component::VAE);
    WanVaeDecoder dec(cfg, m, ops);
    const std::string p = "vae[" + tag + "] ";
    for (const bool clamp : {false, true}) {
      const Tensor out = dec.decode_all(z, clamp);
      const Tensor& r = clamp ? ref : ref_raw;
      if (out.shape() != r.shape())
        throw internal_error("verify vae: decoded " + out.str() + " but the reference is " + r.str());
      lines.push_back({p + (clamp ? "video" : "video_unclamped"), rel_error(out, r)});
    }
  }
  return lines;
}

}  // namespace mg
