// The Wan2.1 text-to-video DiT (WanModel), with MoGA self-attention and per-shot captions.
//
// Math: ../shared/wan-notes.md §1 (the dense Wan forward) and ../shared/moga-spec.md
// (Mixture-of-Groups attention, multi-shot cross-attention). Written only against mg::Ops;
// host-side work is limited to index bookkeeping (RoPE tables, routing, window plans).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mogagen/checkpoint.h"
#include "mogagen/ops.h"
#include "mogagen/profile.h"

namespace mg {

enum class AttentionMode { Dense, Moga };

struct MogaConfig {
  int groups = 0;             // M: router outputs; 0 = the checkpoint has no routers
  int windows[2] = {2, 2};    // spatial windows (rows, columns) of the window branch
  int temporal_group = 4;     // latent frames per window chunk
  int kv_extend = 2;          // neighbouring-shot frames added as keys at shot boundaries
};

struct WanDitConfig {
  int dim = 1536;
  int ffn_dim = 8960;
  int freq_dim = 256;
  int num_heads = 12;
  int num_layers = 30;
  int text_len = 512;
  int text_dim = 4096;
  int in_dim = 16;
  int out_dim = 16;
  int patch[3] = {1, 2, 2};  // (t, h, w)
  double eps = 1e-6;
  AttentionMode attention = AttentionMode::Dense;  // what the config asks for ("attention.type")
  MogaConfig moga;

  int head_dim() const { return dim / num_heads; }
  int patch_volume() const { return patch[0] * patch[1] * patch[2]; }

  // Original Wan config.json names (dim, num_heads, in_dim, ...) or diffusers ones
  // (num_attention_heads, attention_head_dim, in_channels, ...), plus the optional
  // "attention": {"type": "moga", "groups", "windows", "temporal_group", "kv_extend"}
  // (or "attention": "moga"). Throws BadInput naming the bad field.
  static WanDitConfig from_json(const nlohmann::json& j);
  // From tensor shapes (canonical names). Heads assume head_dim 128 (every Wan2.1 model);
  // other head dims need a config.json.
  static WanDitConfig infer(const WeightMap& map);
  // Every canonical tensor with its shape; routers are optional per block (weight [M, dim]
  // and bias [M]) when moga.groups > 0.
  std::vector<WeightSpec> expected_weights() const;
  // Throws BadInput when the numbers cannot describe a Wan DiT.
  void validate() const;
};

// Routing of one block for one forward. The per-token ids and probabilities come to the
// host for block 0 only (layer0_routing(), verify); every block reports its group sizes.
struct MogaRouting {
  std::vector<int> gid;               // group id per token (block 0 only)
  std::vector<float> p_win;           // winning probability per token (block 0 only)
  std::vector<int64_t> group_sizes;   // tokens per group
};

class WanDit {
 public:
  // Cross-attention keys/values of every block for one conditioning (one caption per shot).
  struct TextCache {
    int shots = 0;                // captions
    int64_t rows_per_shot = 0;    // text_len
    std::vector<Tensor> k, v;     // per block [shots * text_len, H, hd] (k RMS-normed)
  };

  WanDit(const WanDitConfig& cfg, const WeightMap& map, Ops& ops);

  const WanDitConfig& config() const { return cfg_; }
  bool has_routers() const { return has_routers_; }
  // Window-branch settings (windows, temporal_group, kv_extend) for later forwards; the
  // group count stays the checkpoint's.
  void set_moga_options(const MogaConfig& m);

  // A block's router bias (host, M values; zeros when the checkpoint has none) and its
  // replacement: the bias shifts each group's logit for every token, which is how a
  // balancing procedure evens out the group sizes without touching the weights
  // (mogagen_bench calibrates random routers this way). Throws on a wrong block or size.
  std::vector<float> router_bias(int block) const;
  void set_router_bias(int block, const std::vector<float>& bias);

  // ctx: host F32 [L, text_dim], L <= text_len -> zero-padded to text_len rows ->
  // text_embedding MLP -> backend [text_len, dim].
  Tensor embed_text(const Tensor& ctx);
  // One raw caption context per shot (host [L_s, text_dim]) -> per-block K/V, reused for
  // every step (wan-notes §1.7).
  TextCache prepare_context(const std::vector<Tensor>& ctx_per_shot);
  // Same from already embedded text: backend [shots * text_len, dim].
  TextCache cache_from_embedded(const Tensor& embedded, int shots);

  // x: host F32 [in_dim, T, h, w]; t: the timestep (kept in double up to the sinusoid);
  // shots: latent frames per shot ({} = one shot of all T frames); text: one caption per
  // shot, or one caption for all shots. Returns host F32 velocity [out_dim, T, h, w].
  Tensor forward(const Tensor& x, double t, const TextCache& text, const std::vector<int>& shots,
                 AttentionMode mode);

  // MoGA routing of the last forward run with AttentionMode::Moga.
  const MogaRouting& layer0_routing() const { return layer0_routing_; }
  const std::vector<std::vector<int64_t>>& group_sizes() const { return group_sizes_; }
  // Called for every block during a MoGA forward (for --verbose statistics, tests).
  void set_routing_callback(std::function<void(int block, const MogaRouting&)> cb) {
    routing_cb_ = std::move(cb);
  }
  // One human-readable paragraph on the last MoGA forward's group sizes per block.
  std::string routing_report() const;

  // Seconds per part of the forwards run while profiling is on, summed over the blocks:
  // "moga routing" (router GEMM, argmax/p_win, sort), "moga permute" (index uploads,
  // gathers into group/window order, scatters back), "self-attention" (the dense attention
  // call) or "self-attention: groups" / ": windows" / ": frames" (MoGA's three calls),
  // "cross-attention" (the whole sub-block), and the block's other steps: "norm and
  // modulation", "q k v projections", "q k RMSNorm and RoPE", "output projection and
  // residual", "FFN up (GELU)", "FFN down and residual". Each part is bracketed by
  // Ops::synchronize, so profiling slows the forward; turning it on clears the totals.
  void set_profiling(bool on) { profile_.enable(on); }
  const std::map<std::string, double>& profile() const { return profile_.seconds(); }
  // Attention FLOPs the last forward executed (4 nq nk dim per attended segment, self- and
  // cross-attention over all blocks): what MoGA's routing left to compute.
  double attention_flops() const { return attention_flops_; }

 private:
  struct Block {
    Tensor modulation;  // [6, dim] (f32)
    Tensor sq_w, sq_b, sk_w, sk_b, sv_w, sv_b, so_w, so_b, s_norm_q, s_norm_k;
    Tensor router_w, router_b;  // [M, dim], [M] (bias may be undefined)
    Tensor norm3_w, norm3_b;
    Tensor cq_w, cq_b, ck_w, ck_b, cv_w, cv_b, co_w, co_b, c_norm_q, c_norm_k;
    Tensor ffn1_w, ffn1_b, ffn2_w, ffn2_b;
  };
  // Static token layout of one forward: grid and shots (in patch-grid frames).
  struct Grid {
    int64_t F = 0, H = 0, W = 0, N = 0;
    std::vector<int64_t> shot_f0;  // first grid frame per shot, plus F at the end
  };
  // Index sets of the static MoGA branches for one layout.
  struct WindowPlan {
    std::vector<int64_t> q_idx, kv_idx;
    Tensor q_dev, kv_dev;  // the same lists on the backend (Ops::index), once per forward
    CuSeqlens cu_q, cu_kv;
  };

  Tensor embed_padded(const std::vector<Tensor>& ctx_per_shot);
  void rope_tables(const Grid& g, Tensor& cos, Tensor& sin);
  WindowPlan window_plan(const Grid& g) const;
  Tensor self_attention_dense(const Tensor& q, const Tensor& k, const Tensor& v);
  // r: this block's routing (route()), made before the modulated input is released.
  Tensor self_attention_moga(int block, Ops::GroupRouting& r, const Tensor& q, const Tensor& k,
                             const Tensor& v, const Grid& g, const WindowPlan& wp);
  Ops::GroupRouting route(const Block& b, const Tensor& x_in, bool host_copy) const;
  // Cross-attention of the residual stream x, its output projection added to x in place.
  void cross_attention_(const Block& b, int bi, Tensor& x, const TextCache& text, const Grid& g);

  WanDitConfig cfg_;
  Ops& ops_;
  bool has_routers_ = false;
  Tensor patch_w, patch_b;
  Tensor text0_w, text0_b, text2_w, text2_b;
  Tensor time0_w, time0_b, time2_w, time2_b, tproj_w, tproj_b;
  Tensor head_mod, head_w, head_b;  // head_mod [2, dim]
  std::vector<Block> blocks_;
  // RoPE tables of the last grid (reused across steps).
  int64_t rope_key_[3] = {-1, -1, -1};
  Tensor rope_cos_, rope_sin_;

  using Section = PartProfile::Scope;
  void count_attention(const CuSeqlens& cu_q, const CuSeqlens& cu_kv);
  double attention_flops_ = 0;
  PartProfile profile_{ops_};

  MogaRouting layer0_routing_;
  std::vector<std::vector<int64_t>> group_sizes_;
  std::function<void(int, const MogaRouting&)> routing_cb_;
};

// Re-exported so callers can write WanDit::TextCache or TextCache.
using TextCache = WanDit::TextCache;

// The largest group's token count over the fair share N/M, for one block's group sizes
// (0 when there are no groups or no tokens).
double largest_group_share(const std::vector<int64_t>& sizes);

// MoGA's balance over many forwards (mogagen --verbose: the whole sampling, cond and uncond
// forwards): per block, the largest group's share of the tokens against the fair share N/M,
// at worst (with its step) and on average.
class RoutingTally {
 public:
  // group_sizes: WanDit::group_sizes() after a forward; step: the sampling step it belongs to
  void add(const std::vector<std::vector<int64_t>>& group_sizes, int step);
  // One line per block, "block b: largest X.XXx fair share at worst (step k), Y.YYx on
  // average"; empty when nothing was added.
  std::string report() const;
  double worst() const;  // over every block and forward (0 when nothing was added)

 private:
  struct Block {
    double worst = 0, sum = 0;
    int count = 0, worst_step = -1;
  };
  std::vector<Block> blocks_;
  int forwards_ = 0;
};

}  // namespace mg
