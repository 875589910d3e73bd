// The umT5-XXL encoder as Wan2.1 uses it (wan-notes §2): pre-norm T5 blocks with a
// relative position bias table in every layer, no attention scaling, gated tanh-GELU FFN,
// T5 RMSNorm, no biases. Written only against mg::Ops.
#pragma once
#include <nlohmann/json.hpp>
#include <vector>

#include "mogagen/checkpoint.h"
#include "mogagen/ops.h"
#include "mogagen/profile.h"

namespace mg {

struct UMT5Config {
  int vocab_size = 256384, d_model = 4096, d_kv = 64, d_ff = 10240, num_layers = 24,
      num_heads = 64;
  int relative_attention_num_buckets = 32, relative_attention_max_distance = 128;
  double layer_norm_epsilon = 1e-6;
  static UMT5Config from_json(const nlohmann::json& j);  // Hugging Face UMT5Config
  static UMT5Config infer(const WeightMap& m);
  std::vector<WeightSpec> expected_weights() const;
};

// Bidirectional relative-position bucket of rel = key - query (T5, exact integer table).
int t5_relative_bucket(int64_t rel, int num_buckets, int max_distance);

// How the encoder's float32 GEMMs run where the backend has TF32 tensor cores (the CPU
// backend is always exact):
//   Exact          float32 products everywhere;
//   Tf32ExceptQK   TF32 for the v and o projections and the FFN (83% of the FLOPs), float32
//                  for q and k, whose products are T5's unscaled attention logits;
//   SplitQK        TF32 as Tf32ExceptQK, and q and k as three bf16 GEMMs of split operands
//                  (Ops::linear_split: about 16 mantissa bits, at bf16 speed);
//   Tf32           TF32 everywhere.
enum class T5Matmul { Exact, Tf32ExceptQK, SplitQK, Tf32 };
// MOGAGEN_T5_MATMUL=exact|tf32-except-qk|split-qk|tf32 (a measurement override,
// docs/performance.md); unset: SplitQK (`verify t5 --device cuda` passes on both golden sets
// under it, and it takes 25.7 ms against 38.4 ms for Tf32ExceptQK at 512 tokens). Any other
// value is an input error naming the variable.
T5Matmul t5_matmul_from_env();

class UMT5Encoder {
 public:
  UMT5Encoder(const UMT5Config& cfg, const WeightMap& weights, Ops& ops,
              T5Matmul matmul = t5_matmul_from_env());
  const UMT5Config& config() const { return cfg_; }
  // ids: the real tokens including EOS (no padding). Returns host F32 [L, d_model]; equal to
  // the reference's masked run over a padded batch (masked keys get zero weight).
  Tensor encode(const std::vector<int64_t>& ids);

  // Seconds per part of the encodes run while profiling is on (mogagen_bench t5 --profile
  // on): "embedding" (host lookup and upload), "position bias", "q k v o GEMMs",
  // "attention", "FFN GEMMs", "norms and adds", "download". Each part is bracketed by a
  // synchronize; turning it on clears the totals.
  void set_profiling(bool on) { profile_.enable(on); }
  const std::map<std::string, double>& profile() const { return profile_.seconds(); }

 private:
  struct Block {
    Tensor norm1, q, k, v, o, rel_bias, norm2, wi0, wi1, wo;
    Ops::SplitWeight q_split, k_split;  // SplitQK: q and k held split (q, k released)
  };
  UMT5Config cfg_;
  Ops& ops_;
  T5Matmul matmul_;
  Tensor embed_;  // [vocab, d_model] host, stored dtype (gathered row by row on the host)
  std::vector<Block> blocks_;
  Tensor final_norm_;
  PartProfile profile_{ops_};
};

}  // namespace mg
