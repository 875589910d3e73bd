// The Wan2.1 video VAE decoder (wan-notes §3): latent de-normalisation, causal 3D
// convolutions with the two-frame feature cache, frame-by-frame decoding, resampling, mid
// attention, clamp. Memory stays bounded: only the cache (two frames per conv) and the
// current chunk live at once; frames are streamed to a sink. Written only against mg::Ops.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mogagen/checkpoint.h"
#include "mogagen/ops.h"

namespace mg {

struct WanVaeConfig {
  int base_dim = 96, z_dim = 16;
  std::vector<int> dim_mult{1, 2, 4, 4};
  int num_res_blocks = 2;
  std::vector<bool> temperal_downsample{false, true, true};
  std::vector<float> latents_mean, latents_std;  // 16 each; Wan2.1's by default

  WanVaeConfig();
  // WanVAE_ names (base_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample) or the
  // diffusers AutoencoderKLWan ones (same names, plus latents_mean / latents_std).
  static WanVaeConfig from_json(const nlohmann::json& j);
  static WanVaeConfig infer(const WeightMap& m);
  // The decoder's tensors (conv2 + decoder.*), canonical (original Wan) names.
  std::vector<WeightSpec> expected_weights() const;
};

class WanVaeDecoder {
 public:
  using Sink = std::function<void(const Tensor& frames)>;  // host F32 [3, n, H, W]
  WanVaeDecoder(const WanVaeConfig& cfg, const WeightMap& weights, Ops& ops);
  const WanVaeConfig& config() const { return cfg_; }
  // z_norm: host F32 [z_dim, T, h, w] (the DiT's normalised latent). Emits 1 frame for the
  // first latent frame and 4 for each later one, in order.
  void decode(const Tensor& z_norm, const Sink& sink, bool clamp = true);
  Tensor decode_all(const Tensor& z_norm, bool clamp = true);
  // Largest number of frames any cache slot held during the last decode (2 by design).
  int max_cached_frames() const { return max_cached_; }

 private:
  struct Conv {
    Tensor w, b;
    int kt = 1, kh = 1, kw = 1;
  };
  struct ResBlock {
    Tensor gamma1, gamma2;
    Conv conv1, conv2, shortcut;  // shortcut.w empty when in == out
  };
  struct Attn {
    Tensor gamma, wq, bq, wk, bk, wv, bv, wo, bo;
  };
  struct Stage {  // one entry of decoder.upsamples
    enum Kind { Res, Up2d, Up3d } kind;
    ResBlock res;
    Conv spatial, time_conv;
  };
  struct Cache {
    std::vector<Tensor> slot;
    std::vector<bool> rep;
    int idx = 0;
  };
  Conv conv(const WeightMap& m, const std::string& p, bool is2d = false);
  Tensor causal(const Tensor& x, const Conv& c, Cache& cache);
  Tensor resblock(const Tensor& x, const ResBlock& r, Cache& cache);
  Tensor attention(const Tensor& x, const Attn& a);
  Tensor upsample(const Tensor& x, const Stage& s, Cache& cache);
  Tensor chunk(const Tensor& x, Cache& cache);

  WanVaeConfig cfg_;
  Ops& ops_;
  Conv conv2_, conv_in_, head_conv_;
  ResBlock mid0_, mid2_;
  Attn mid_attn_;
  std::vector<Stage> stages_;
  Tensor head_gamma_;
  int max_cached_ = 0;
};

}  // namespace mg
