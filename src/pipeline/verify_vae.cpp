#include "mogagen/checkpoint.h"
#include "models/wan_vae/wan_vae.h"
#include "pipeline/json_locate.h"
#include "pipeline/verify.h"

namespace mg {

std::vector<VerifyLine> verify_vae(const std::string& dir_in, Ops& ops) {
  const std::string dir = resolve_case_dir(dir_in, "vae");
  WanVaeConfig cfg = WanVaeConfig::from_json(parse_json_file(dir + "/config.json").value);
  TensorSource cs = TensorSource::open(dir + "/case.safetensors");
  Tensor mean = cs.load_f32("latents_mean"), std_ = cs.load_f32("latents_std");
  cfg.latents_mean.assign(mean.f32(), mean.f32() + mean.numel());
  cfg.latents_std.assign(std_.f32(), std_.f32() + std_.numel());
  const Tensor z = cs.load_f32("z");
  std::vector<VerifyLine> lines;
  for (const auto& [tag, file] : {std::pair{"wan", "weights_wan.safetensors"},
                                  std::pair{"diffusers", "weights_diffusers.safetensors"}}) {
    WeightMap m = WeightMap::open(dir + "/" + file, Component::VAE);
    WanVaeDecoder dec(cfg, m, ops);
    Tensor raw = dec.decode_all(z, false);
    lines.push_back({std::string("vae[") + tag + "] video_unclamped", rel_error(raw, cs.load_f32("video_unclamped"))});
    Tensor clamped = ops.download(ops.clamp(ops.upload(raw), -1.0f, 1.0f));
    lines.push_back({std::string("vae[") + tag + "] video", rel_error(clamped, cs.load_f32("video"))});
  }
  return lines;
}

}  // namespace mg
