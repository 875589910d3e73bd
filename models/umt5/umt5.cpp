#include "models/umt5/umt5.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

namespace mg {

UMT5Config UMT5Config::from_json(const nlohmann::json& j) {
  UMT5Config c;
  try {
    auto get = [&](const char* k, auto& dst) {
      if (j.contains(k) && !j[k].is_null()) dst = j[k].get<std::decay_t<decltype(dst)>>();
    };
    get("vocab_size", c.vocab_size);
    get("d_model", c.d_model);
    get("d_kv", c.d_kv);
    get("d_ff", c.d_ff);
    get("num_layers", c.num_layers);
    get("num_heads", c.num_heads);
    get("relative_attention_num_buckets", c.relative_attention_num_buckets);
    get("relative_attention_max_distance", c.relative_attention_max_distance);
    get("layer_norm_epsilon", c.layer_norm_epsilon);
  } catch (const nlohmann::json::exception& e) {
    throw weights_error(std::string("umT5 config.json: a field has the wrong type: ") + e.what());
  }
  if (c.d_model <= 0 || c.num_heads <= 0 || c.d_kv <= 0 || c.num_layers <= 0 || c.d_ff <= 0)
    throw weights_error("umT5 config.json: d_model, d_kv, d_ff, num_heads and num_layers must be positive");
  return c;
}

UMT5Config UMT5Config::infer(const WeightMap& m) {
  UMT5Config c;
  const Shape e = m.shape("shared.weight");
  c.vocab_size = int(e[0]);
  c.d_model = int(e[1]);
  const Shape rb = m.shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
  c.relative_attention_num_buckets = int(rb[0]);
  c.num_heads = int(rb[1]);
  c.d_kv = int(m.shape("encoder.block.0.layer.0.SelfAttention.q.weight")[0]) / c.num_heads;
  c.d_ff = int(m.shape("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0]);
  int n = 0;
  while (m.has("encoder.block." + std::to_string(n) + ".layer.0.SelfAttention.q.weight")) ++n;
  c.num_layers = n;
  return c;
}

std::vector<WeightSpec> UMT5Config::expected_weights() const {
  const int64_t d = d_model, inner = int64_t(num_heads) * d_kv, f = d_ff;
  std::vector<WeightSpec> w = {{"shared.weight", {vocab_size, d}},
                               {"encoder.final_layer_norm.weight", {d}}};
  for (int i = 0; i < num_layers; ++i) {
    const std::string p = "encoder.block." + std::to_string(i) + ".";
    w.push_back({p + "layer.0.layer_norm.weight", {d}});
    w.push_back({p + "layer.0.SelfAttention.q.weight", {inner, d}});
    w.push_back({p + "layer.0.SelfAttention.k.weight", {inner, d}});
    w.push_back({p + "layer.0.SelfAttention.v.weight", {inner, d}});
    w.push_back({p + "layer.0.SelfAttention.o.weight", {d, inner}});
    w.push_back({p + "layer.0.SelfAttention.relative_attention_bias.weight",
                 {relative_attention_num_buckets, num_heads}});
    w.push_back({p + "layer.1.layer_norm.weight", {d}});
    w.push_back({p + "layer.1.DenseReluDense.wi_0.weight", {f, d}});
    w.push_back({p + "layer.1.DenseReluDense.wi_1.weight", {f, d}});
    w.push_back({p + "layer.1.DenseReluDense.wo.weight", {d, f}});
  }
  return w;
}

int t5_relative_bucket(int64_t rel, int num_buckets, int max_distance) {
  const int nb = num_buckets / 2;  // bidirectional
  int bucket = rel > 0 ? nb : 0;
  const int64_t n = rel < 0 ? -rel : rel;
  const int max_exact = nb / 2;
  if (n < max_exact) return bucket + int(n);
  // float32 arithmetic as the reference, truncated toward zero
  const float v = std::log(float(n) / float(max_exact)) /
                  std::log(float(max_distance) / float(max_exact)) * float(nb - max_exact);
  int large = max_exact + int(v);
  if (large > nb - 1) large = nb - 1;
  return bucket + large;
}

T5Matmul t5_matmul_from_env() {
  const char* v = std::getenv("MOGAGEN_T5_MATMUL");
  if (!v || !*v) return T5Matmul::SplitQK;
  const std::string s(v);
  if (s == "exact") return T5Matmul::Exact;
  if (s == "tf32-except-qk") return T5Matmul::Tf32ExceptQK;
  if (s == "split-qk") return T5Matmul::SplitQK;
  if (s == "tf32") return T5Matmul::Tf32;
  throw input_error("MOGAGEN_T5_MATMUL: expected exact, tf32-except-qk, split-qk or tf32, found '" +
                    s + "'");
}

// All weights stay float32 on every backend: the encoder runs once per caption, and bf16
// GEMMs through T5's unscaled attention logits drift past the 2e-2 golden tolerance. Where
// the backend has TF32 tensor cores, matmul_ says which GEMMs use them (T5Matmul).
UMT5Encoder::UMT5Encoder(const UMT5Config& cfg, const WeightMap& m, Ops& ops, T5Matmul matmul)
    : cfg_(cfg), ops_(ops), matmul_(matmul) {
  m.check(cfg_.expected_weights(), /*allow_extra=*/true);
  embed_ = m.view("shared.weight");  // stays in the (mmap'd) file; rows converted on use
  for (int i = 0; i < cfg_.num_layers; ++i) {
    const std::string p = "encoder.block." + std::to_string(i) + ".";
    Block b;
    b.norm1 = ops_.weight(m.load_f32(p + "layer.0.layer_norm.weight"), true);
    b.q = ops_.weight(m.load_f32(p + "layer.0.SelfAttention.q.weight"), true);
    b.k = ops_.weight(m.load_f32(p + "layer.0.SelfAttention.k.weight"), true);
    b.v = ops_.weight(m.load_f32(p + "layer.0.SelfAttention.v.weight"), true);
    b.o = ops_.weight(m.load_f32(p + "layer.0.SelfAttention.o.weight"), true);
    b.rel_bias = ops_.weight(m.load_f32(p + "layer.0.SelfAttention.relative_attention_bias.weight"), true);
    b.norm2 = ops_.weight(m.load_f32(p + "layer.1.layer_norm.weight"), true);
    b.wi0 = ops_.weight(m.load_f32(p + "layer.1.DenseReluDense.wi_0.weight"), true);
    b.wi1 = ops_.weight(m.load_f32(p + "layer.1.DenseReluDense.wi_1.weight"), true);
    b.wo = ops_.weight(m.load_f32(p + "layer.1.DenseReluDense.wo.weight"), true);
    if (matmul_ == T5Matmul::SplitQK) {  // the split form replaces the float32 one
      b.q_split = ops_.split_weight(b.q);
      b.k_split = ops_.split_weight(b.k);
      b.q = b.k = Tensor();
    }
    blocks_.push_back(std::move(b));
  }
  final_norm_ = ops_.weight(m.load_f32("encoder.final_layer_norm.weight"), true);
}

Tensor UMT5Encoder::encode(const std::vector<int64_t>& ids) {
  using Part = PartProfile::Scope;
  const int64_t L = int64_t(ids.size()), d = cfg_.d_model, H = cfg_.num_heads, dk = cfg_.d_kv;
  if (L == 0) throw internal_error("umT5: empty token sequence");
  Tensor hs;
  {
    Part p(profile_, "embedding");
    // The rows in the checkpoint's dtype, gathered on the host (plain copies) and converted
    // on the backend: bf16 rows (Wan's checkpoints) go up at half the bytes of float32 and
    // without a conversion loop on the host.
    const size_t row_bytes = size_t(d) * dtype_size(embed_.dtype());
    const bool raw_rows = embed_.dtype() == DType::BF16 || embed_.dtype() == DType::F32;
    Tensor x = Tensor::empty({L, d}, raw_rows ? embed_.dtype() : DType::F32);
    for (int64_t i = 0; i < L; ++i) {
      if (ids[i] < 0 || ids[i] >= cfg_.vocab_size)
        throw input_error("token id " + std::to_string(ids[i]) + " is outside the text encoder's vocabulary of " +
                          std::to_string(cfg_.vocab_size) + " (tokenizer and text encoder do not match)");
      char* dst = static_cast<char*>(x.raw()) + size_t(i) * size_t(d) * dtype_size(x.dtype());
      if (raw_rows) {
        std::memcpy(dst, static_cast<const char*>(embed_.raw()) + size_t(ids[i]) * row_bytes, row_bytes);
      } else {
        const Tensor row = embed_.rows(ids[i], ids[i] + 1).to(DType::F32);
        std::memcpy(dst, row.raw(), size_t(d) * sizeof(float));
      }
    }
    // bf16: uploaded as it is, then widened on the backend (exact either way)
    hs = x.dtype() == DType::BF16 ? ops_.weight(ops_.weight(x, false), true) : ops_.upload(x);
  }
  Tensor rel_bucket;
  {
    Part p(profile_, "position bias");
    // The bucket of every offset j - i in -(L-1)..L-1 (host, exact integers), on the backend
    // once per call and shared by all layers: each layer's bias [H, L, L] is made from it
    // and the layer's table in one pass (Ops::relative_position_bias).
    std::vector<int64_t> bucket(size_t(2 * L - 1));
    for (int64_t r = -(L - 1); r <= L - 1; ++r)
      bucket[size_t(r + L - 1)] = t5_relative_bucket(r, cfg_.relative_attention_num_buckets,
                                                     cfg_.relative_attention_max_distance);
    rel_bucket = ops_.index(bucket);
  }
  const float eps = float(cfg_.layer_norm_epsilon);
  using M = Ops::F32Matmul;
  const M qk_mode = matmul_ == T5Matmul::Tf32 ? M::Tf32 : M::Exact;
  const M rest_mode = matmul_ == T5Matmul::Exact ? M::Exact : M::Tf32;
  struct Restore {  // the backend's mode as it was, also when an op throws
    Ops& ops;
    M old;
    ~Restore() { ops.set_f32_matmul(old); }
  } restore{ops_, ops_.set_f32_matmul(qk_mode)};
  for (size_t li = 0; li < blocks_.size(); ++li) {
    const Block& b = blocks_[li];
    Tensor bias_d, a, q, k, v, o, f, h0, h1, g;
    {
      Part p(profile_, "position bias");
      // bias[h, i, j] = table[bucket(j - i), h]
      bias_d = ops_.relative_position_bias(b.rel_bias, rel_bucket, L);
    }
    {
      Part p(profile_, "norms and adds");
      a = ops_.rms_norm(hs, b.norm1, eps);
    }
    {
      Part p(profile_, "q k v o GEMMs");
      if (matmul_ == T5Matmul::SplitQK) {
        q = ops_.linear_split(a, b.q_split, nullptr).reshape({L, H, dk});
        k = ops_.linear_split(a, b.k_split, nullptr).reshape({L, H, dk});
      } else {
        ops_.set_f32_matmul(qk_mode);
        q = ops_.linear(a, b.q, nullptr).reshape({L, H, dk});
        k = ops_.linear(a, b.k, nullptr).reshape({L, H, dk});
      }
      ops_.set_f32_matmul(rest_mode);
      v = ops_.linear(a, b.v, nullptr).reshape({L, H, dk});
    }
    {
      Part p(profile_, "attention");
      o = ops_.attention(q, k, v, 1.0f, &bias_d);
    }
    {
      Part p(profile_, "q k v o GEMMs");
      o = ops_.linear(o.reshape({L, H * dk}), b.o, nullptr);
    }
    {
      Part p(profile_, "norms and adds");
      ops_.add_(hs, o);
      f = ops_.rms_norm(hs, b.norm2, eps);
    }
    {
      Part p(profile_, "FFN GEMMs");
      h0 = ops_.linear(f, b.wi0, nullptr);
      h1 = ops_.linear(f, b.wi1, nullptr);
    }
    {
      Part p(profile_, "norms and adds");
      g = ops_.gelu_tanh_mul(h0, h1);
    }
    {
      Part p(profile_, "FFN GEMMs");
      g = ops_.linear(g, b.wo, nullptr);
    }
    {
      Part p(profile_, "norms and adds");
      ops_.add_(hs, g);
    }
  }
  Part p(profile_, "download");
  return ops_.download(ops_.rms_norm(hs, final_norm_, eps));
}

}  // namespace mg
