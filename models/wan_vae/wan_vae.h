// The Wan2.1 video VAE decoder (wan-notes §3): latent de-normalisation, causal 3D
// convolutions with the two-frame feature cache, frame-by-frame decoding, resampling, mid
// attention, clamp. Memory stays bounded: only the cache (at most two frames per causal
// conv) and the current chunk live at once; frames are streamed to a sink. Written only
// against mg::Ops.
#pragma once
#include <cstddef>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mogagen/checkpoint.h"
#include "mogagen/ops.h"
#include "mogagen/profile.h"

namespace mg {

struct WanVaeConfig {
  int base_dim = 96, z_dim = 16;
  std::vector<int> dim_mult{1, 2, 4, 4};
  int num_res_blocks = 2;
  std::vector<bool> temperal_downsample{false, true, true};  // encoder order (Wan spelling)
  std::vector<float> latents_mean, latents_std;  // z_dim each; Wan2.1's constants by default

  WanVaeConfig();
  // WanVAE_ names (dim or base_dim, z_dim, dim_mult, num_res_blocks, attn_scales,
  // temperal_downsample) or the diffusers AutoencoderKLWan ones (the same, plus
  // latents_mean / latents_std). Unknown keys are ignored. Throws BadWeights when a field
  // has the wrong type or the values are inconsistent, and when attn_scales is not empty
  // (Wan's decoder cannot run attention inside the up stages).
  static WanVaeConfig from_json(const nlohmann::json& j);
  // From the tensor shapes of a VAE weight map (canonical names). base_dim comes from the
  // encoder when present, else dim_mult[0] = 1 is assumed. Latent constants: Wan's.
  static WanVaeConfig infer(const WeightMap& m);
  // Throws BadWeights when the configuration cannot describe a Wan decoder.
  void validate() const;
  // The decoder's tensors (conv2 + decoder.*), canonical (original Wan) names. Encoder
  // tensors in a file are not listed: check them with allow_extra.
  std::vector<WeightSpec> expected_weights() const;
  // Decoder channel widths: base_dim * ([dim_mult.back()] + reversed(dim_mult)).
  std::vector<int64_t> decoder_dims() const;
  // The decoder's temporal upsampling flags per up stage (reversed temperal_downsample).
  std::vector<bool> temperal_upsample() const;
  // Spatial and temporal factors: H = 8h, frames = 1 + 4(T-1) for Wan's configuration.
  int spatial_factor() const;
  int temporal_factor() const;
};

class WanVaeDecoder {
 public:
  using Sink = std::function<void(const Tensor& frames)>;  // host F32 [3, n, H, W]
  // Binds every decoder tensor once (fp32: the VAE runs in float32 in Wan). Checks the
  // weight map against cfg.expected_weights() first (encoder tensors are allowed).
  WanVaeDecoder(const WanVaeConfig& cfg, const WeightMap& weights, Ops& ops);
  const WanVaeConfig& config() const { return cfg_; }

  // z_norm: host F32 [z_dim, T, h, w], the DiT's normalised latent. De-normalises with the
  // config's latents_mean / latents_std, applies conv2 to all frames, then decodes one
  // latent frame at a time with the causal cache. Emits 1 frame for the first latent frame
  // and temporal_factor() frames for each later one, in order (clamped to [-1, 1] when
  // `clamp`). Frames are the sink's to keep: each call gets a fresh host tensor.
  void decode(const Tensor& z_norm, const Sink& sink, bool clamp = true);
  // decode() with the chunks concatenated in time: [3, 1 + 4(T-1), 8h, 8w].
  Tensor decode_all(const Tensor& z_norm, bool clamp = true);
  // Number of frames the decode of T latent frames yields.
  int64_t output_frames(int64_t T) const;

  // Introspection of the last decode (tests, memory accounting).
  int max_cached_frames() const { return max_cached_; }  // largest slot, in frames (2)
  int cache_slots() const { return slots_used_; }        // slots per chunk (32 for Wan)
  size_t max_cache_bytes() const { return max_cache_bytes_; }  // peak total cache size

  // Seconds per part of the decodes run while profiling is on (mogagen_bench vae --profile
  // on): "conv3d" (without a cache), "conv3d after the cache" (Ops::conv3d_after: the
  // concatenation with the cached frames and the conv), "norm and SiLU", "causal cache
  // copies" (the next caches, slices, held frames), "upsample", "middle attention",
  // "residual adds", "download". Each part is
  // bracketed by synchronizes, so a profiled decode is slower than a plain one.
  void set_profiling(bool on) { profile_.enable(on); }
  const std::map<std::string, double>& profile() const { return profile_.seconds(); }

 private:
  struct Conv {
    Tensor w, b;  // w [Co, Ci, kt, kh, kw]; b may be undefined
    int kt = 1, kh = 1, kw = 1;
  };
  struct ResBlock {
    Tensor gamma1, gamma2;
    Conv conv1, conv2, shortcut;  // shortcut.w undefined when in == out
  };
  struct Attn {
    Tensor gamma, wq, bq, wk, bk, wv, bv, wo, bo;
  };
  struct Stage {  // one entry of decoder.upsamples
    enum Kind { Res, Up2d, Up3d } kind = Res;
    ResBlock res;
    Conv spatial, time_conv;
  };
  // One slot per causal-conv visit, in visit order; `rep` marks a time_conv slot whose
  // first chunk skipped the conv (Wan's "Rep").
  struct Cache {
    std::vector<Tensor> slot;
    std::vector<bool> rep;
    int idx = 0;
    int next();  // the next slot index, growing the lists on the first chunk
  };

  Conv bind_conv(const WeightMap& m, const std::string& prefix, bool is2d = false);
  ResBlock bind_res(const WeightMap& m, const std::string& prefix);
  Tensor bind_gamma(const WeightMap& m, const std::string& name);
  Tensor conv(const Tensor& x, const Conv& c, int pad_t_front);
  // conv() over [cached, x] (Ops::conv3d_after), profiled as "conv3d after the cache"
  Tensor conv_after(const Tensor& cached, const Tensor& x, const Conv& c, int pad_t_front,
                    const Tensor* residual = nullptr);
  // The causal conv of x with its cache; plus `residual` when given (a residual block's
  // second conv and its skip connection, one pass on CUDA's bf16 convolutions).
  Tensor causal(const Tensor& x, const Conv& c, Cache& cache, const Tensor* residual = nullptr);
  Tensor norm_silu(const Tensor& x, const Tensor& gamma);  // SiLU(channel RMS norm), profiled
  Tensor resblock(const Tensor& x, const ResBlock& r, Cache& cache);
  Tensor attention(const Tensor& x, const Attn& a);
  Tensor upsample(const Tensor& x, const Stage& s, Cache& cache);
  Tensor chunk(const Tensor& x, Cache& cache);
  void note_cache(const Cache& cache);

  WanVaeConfig cfg_;
  Ops& ops_;
  Conv conv2_, conv_in_, head_conv_;
  ResBlock mid0_, mid2_;
  Attn mid_attn_;
  std::vector<Stage> stages_;
  Tensor head_gamma_;
  int max_cached_ = 0, slots_used_ = 0;
  size_t max_cache_bytes_ = 0;
  PartProfile profile_{ops_};
};

}  // namespace mg
