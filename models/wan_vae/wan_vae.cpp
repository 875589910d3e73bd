#include "models/wan_vae/wan_vae.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

namespace mg {

namespace {

// Wan2.1's latent statistics (WanVAE.__init__; diffusers latents_mean / latents_std).
const float kMean[16] = {-0.7571f, -0.7089f, -0.9113f, 0.1075f, -0.1745f, 0.9653f,
                         -0.1517f, 1.5508f,  0.4134f,  -0.0715f, 0.5517f, -0.3632f,
                         -0.1922f, -0.9497f, 0.2503f,  -0.2921f};
const float kStd[16] = {2.8184f, 1.4541f, 2.3275f, 2.6558f, 1.2196f, 1.7708f, 2.6052f, 2.0743f,
                        3.2687f, 2.1526f, 2.8652f, 1.5579f, 1.6382f, 1.1253f, 2.8251f, 1.9160f};

constexpr int kCacheT = 2;  // frames of context every causal conv keeps (Wan's CACHE_T)

// Wan's constants for z_dim 16; identity statistics otherwise (a caller such as verify
// sets the real ones).
void default_latents(WanVaeConfig& c) {
  if (c.z_dim == 16) {
    c.latents_mean.assign(kMean, kMean + 16);
    c.latents_std.assign(kStd, kStd + 16);
  } else {
    c.latents_mean.assign(c.z_dim, 0.0f);
    c.latents_std.assign(c.z_dim, 1.0f);
  }
}

// One entry of decoder.upsamples, as Wan's Decoder3d builds it.
struct UpEntry {
  enum Kind { Res, Up2d, Up3d } kind;
  int64_t in, out;  // Res: in -> out; Up*: out = channels C (the conv maps C -> C/2)
};

std::vector<UpEntry> up_plan(const WanVaeConfig& c) {
  const std::vector<int64_t> dims = c.decoder_dims();
  const std::vector<bool> tu = c.temperal_upsample();
  const size_t n = c.dim_mult.size();
  std::vector<UpEntry> plan;
  for (size_t i = 0; i < n; ++i) {
    int64_t in = dims[i];
    const int64_t out = dims[i + 1];
    if (i == 1 || i == 2 || i == 3) in /= 2;  // the previous Resample halved the width
    for (int r = 0; r <= c.num_res_blocks; ++r) {
      plan.push_back({UpEntry::Res, in, out});
      in = out;
    }
    if (i != n - 1) plan.push_back({tu[i] ? UpEntry::Up3d : UpEntry::Up2d, out, out});
  }
  return plan;
}

template <class T>
std::vector<T> get_list(const nlohmann::json& j, const char* key) {
  if (!j.at(key).is_array()) throw weights_error(std::string("VAE config: '") + key + "' must be a list");
  return j.at(key).get<std::vector<T>>();
}

}  // namespace

// ---- configuration ------------------------------------------------------------------------

WanVaeConfig::WanVaeConfig() { default_latents(*this); }

std::vector<int64_t> WanVaeConfig::decoder_dims() const {
  std::vector<int64_t> d{int64_t(base_dim) * dim_mult.back()};
  for (auto it = dim_mult.rbegin(); it != dim_mult.rend(); ++it) d.push_back(int64_t(base_dim) * *it);
  return d;
}

std::vector<bool> WanVaeConfig::temperal_upsample() const {
  return std::vector<bool>(temperal_downsample.rbegin(), temperal_downsample.rend());
}

int WanVaeConfig::spatial_factor() const { return 1 << (int(dim_mult.size()) - 1); }

int WanVaeConfig::temporal_factor() const {
  int f = 1;
  for (bool b : temperal_downsample) f *= b ? 2 : 1;
  return f;
}

void WanVaeConfig::validate() const {
  auto bad = [](const std::string& m) { return weights_error("VAE config: " + m); };
  if (base_dim <= 0) throw bad("base_dim must be positive, got " + std::to_string(base_dim));
  if (z_dim <= 0) throw bad("z_dim must be positive, got " + std::to_string(z_dim));
  if (num_res_blocks < 0) throw bad("num_res_blocks must be >= 0");
  // Wan's Decoder3d halves the input width of up stages 1..3 only, so longer lists cannot
  // describe a working decoder.
  if (dim_mult.empty() || dim_mult.size() > 4)
    throw bad("dim_mult needs 1 to 4 entries, got " + std::to_string(dim_mult.size()));
  for (int m : dim_mult)
    if (m <= 0) throw bad("dim_mult entries must be positive");
  const auto d = decoder_dims();
  for (size_t k = 1; k + 1 < d.size(); ++k)  // widths that a resample halves
    if (d[k] % 2 != 0) throw bad("base_dim * dim_mult must be even where a resample halves it");
  if (temperal_downsample.size() != dim_mult.size() - 1)
    throw bad("temperal_downsample needs " + std::to_string(dim_mult.size() - 1) +
              " entries (one per resolution change), got " +
              std::to_string(temperal_downsample.size()));
  if (int(latents_mean.size()) != z_dim || int(latents_std.size()) != z_dim)
    throw bad("latents_mean and latents_std need z_dim (" + std::to_string(z_dim) +
              ") values each, got " + std::to_string(latents_mean.size()) + " and " +
              std::to_string(latents_std.size()));
  for (float s : latents_std)
    if (!(std::isfinite(s) && s != 0.0f)) throw bad("latents_std values must be finite and non-zero");
  for (float m : latents_mean)
    if (!std::isfinite(m)) throw bad("latents_mean values must be finite");
}

WanVaeConfig WanVaeConfig::from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw weights_error("VAE config: expected a JSON object");
  WanVaeConfig c;
  bool latents_given = false;
  try {
    if (j.contains("dim")) c.base_dim = j.at("dim").get<int>();  // WanVAE_(dim=...)
    if (j.contains("base_dim")) c.base_dim = j.at("base_dim").get<int>();
    if (j.contains("z_dim")) c.z_dim = j.at("z_dim").get<int>();
    if (j.contains("dim_mult")) c.dim_mult = get_list<int>(j, "dim_mult");
    if (j.contains("num_res_blocks")) c.num_res_blocks = j.at("num_res_blocks").get<int>();
    if (j.contains("temperal_downsample"))
      c.temperal_downsample = get_list<bool>(j, "temperal_downsample");
    if (j.contains("attn_scales") && !j.at("attn_scales").is_null() &&
        !get_list<double>(j, "attn_scales").empty())
      throw weights_error(
          "VAE config: attn_scales must be empty (Wan2.1's decoder has attention only in its "
          "middle block; up-stage attention is not supported)");
    if (j.contains("latents_mean") && !j.at("latents_mean").is_null()) {
      c.latents_mean = get_list<float>(j, "latents_mean");
      latents_given = true;
    }
    if (j.contains("latents_std") && !j.at("latents_std").is_null()) {
      c.latents_std = get_list<float>(j, "latents_std");
      latents_given = true;
    }
  } catch (const nlohmann::json::exception& e) {
    throw weights_error(std::string("VAE config: a field has the wrong type: ") + e.what());
  }
  if (!latents_given) default_latents(c);
  c.validate();
  return c;
}

WanVaeConfig WanVaeConfig::infer(const WeightMap& m) {
  auto need = [&](const std::string& n) {
    if (!m.has(n))
      throw weights_error("cannot infer the VAE configuration from " + m.source().describe() +
                          ": tensor " + n + " is missing");
    return m.shape(n);
  };
  const Shape ci = need("decoder.conv1.weight");   // [dims0, z, 3, 3, 3]
  const Shape hd = need("decoder.head.2.weight");  // [3, dims_last, 3, 3, 3]
  if (ci.size() != 5 || hd.size() != 5)
    throw weights_error("VAE weights: decoder.conv1 / decoder.head.2 are not 3D conv kernels");
  WanVaeConfig c;
  c.z_dim = int(ci[1]);
  // Walk decoder.upsamples: runs of residual blocks separated by resamples.
  std::vector<int64_t> outs;
  std::vector<int> counts;
  std::vector<bool> tu;
  int run = 0;
  int64_t last = -1;
  for (int i = 0;; ++i) {
    const std::string p = "decoder.upsamples." + std::to_string(i) + ".";
    if (m.has(p + "residual.2.weight")) {
      last = m.shape(p + "residual.2.weight")[0];
      ++run;
    } else if (m.has(p + "resample.1.weight")) {
      outs.push_back(last);
      counts.push_back(run);
      run = 0;
      tu.push_back(m.has(p + "time_conv.weight"));
    } else if (m.has(p + "to_qkv.weight")) {
      throw weights_error("VAE weights: attention inside the decoder up stages (" + p +
                          "to_qkv.weight) is not supported");
    } else {
      break;
    }
  }
  outs.push_back(last);
  counts.push_back(run);
  for (size_t k = 0; k < counts.size(); ++k)
    if (counts[k] != counts[0] || counts[k] == 0 || outs[k] <= 0)
      throw weights_error("VAE weights: the decoder.upsamples.* blocks do not form equal stages "
                          "of residual blocks separated by resamples");
  c.num_res_blocks = counts[0] - 1;
  const int64_t base = m.has("encoder.conv1.weight") ? m.shape("encoder.conv1.weight")[0] : hd[1];
  c.base_dim = int(base);
  const size_t n = outs.size();
  c.dim_mult.assign(n, 0);
  for (size_t k = 0; k < n; ++k) {
    if (outs[k] % base != 0)
      throw weights_error("VAE weights: stage width " + std::to_string(outs[k]) +
                          " is not a multiple of the base width " + std::to_string(base));
    c.dim_mult[n - 1 - k] = int(outs[k] / base);
  }
  c.temperal_downsample.assign(tu.rbegin(), tu.rend());
  default_latents(c);
  c.validate();
  if (ci[0] != c.decoder_dims()[0])
    throw weights_error("VAE weights: decoder.conv1 width " + std::to_string(ci[0]) +
                        " does not match the inferred dim_mult");
  return c;
}

std::vector<WeightSpec> WanVaeConfig::expected_weights() const {
  validate();
  const auto d = decoder_dims();
  const int64_t z = z_dim;
  std::vector<WeightSpec> w = {{"conv2.weight", {z, z, 1, 1, 1}},
                               {"conv2.bias", {z}},
                               {"decoder.conv1.weight", {d[0], z, 3, 3, 3}},
                               {"decoder.conv1.bias", {d[0]}}};
  auto res = [&](const std::string& p, int64_t in, int64_t out) {
    w.push_back({p + "residual.0.gamma", {in, 1, 1, 1}});
    w.push_back({p + "residual.2.weight", {out, in, 3, 3, 3}});
    w.push_back({p + "residual.2.bias", {out}});
    w.push_back({p + "residual.3.gamma", {out, 1, 1, 1}});
    w.push_back({p + "residual.6.weight", {out, out, 3, 3, 3}});
    w.push_back({p + "residual.6.bias", {out}});
    if (in != out) {
      w.push_back({p + "shortcut.weight", {out, in, 1, 1, 1}});
      w.push_back({p + "shortcut.bias", {out}});
    }
  };
  res("decoder.middle.0.", d[0], d[0]);
  w.push_back({"decoder.middle.1.norm.gamma", {d[0], 1, 1}});
  w.push_back({"decoder.middle.1.to_qkv.weight", {3 * d[0], d[0], 1, 1}});
  w.push_back({"decoder.middle.1.to_qkv.bias", {3 * d[0]}});
  w.push_back({"decoder.middle.1.proj.weight", {d[0], d[0], 1, 1}});
  w.push_back({"decoder.middle.1.proj.bias", {d[0]}});
  res("decoder.middle.2.", d[0], d[0]);
  const auto plan = up_plan(*this);
  for (size_t i = 0; i < plan.size(); ++i) {
    const std::string p = "decoder.upsamples." + std::to_string(i) + ".";
    const UpEntry& e = plan[i];
    if (e.kind == UpEntry::Res) {
      res(p, e.in, e.out);
      continue;
    }
    if (e.kind == UpEntry::Up3d) {
      w.push_back({p + "time_conv.weight", {e.out * 2, e.out, 3, 1, 1}});
      w.push_back({p + "time_conv.bias", {e.out * 2}});
    }
    w.push_back({p + "resample.1.weight", {e.out / 2, e.out, 3, 3}});
    w.push_back({p + "resample.1.bias", {e.out / 2}});
  }
  w.push_back({"decoder.head.0.gamma", {d.back(), 1, 1, 1}});
  w.push_back({"decoder.head.2.weight", {3, d.back(), 3, 3, 3}});
  w.push_back({"decoder.head.2.bias", {3}});
  return w;
}

// ---- binding ------------------------------------------------------------------------------

WanVaeDecoder::Conv WanVaeDecoder::bind_conv(const WeightMap& m, const std::string& p, bool is2d) {
  Conv c;
  Tensor w = m.load_f32(p + ".weight");
  if (is2d) w = w.reshape({w.dim(0), w.dim(1), 1, w.dim(2), w.dim(3)});  // Conv2d as kt = 1
  c.kt = int(w.dim(2));
  c.kh = int(w.dim(3));
  c.kw = int(w.dim(4));
  c.w = ops_.weight(w, /*keep_f32=*/true);
  if (m.has(p + ".bias")) c.b = ops_.weight(m.load_f32(p + ".bias"), true);
  return c;
}

Tensor WanVaeDecoder::bind_gamma(const WeightMap& m, const std::string& name) {
  Tensor g = m.load_f32(name);
  return ops_.weight(g.reshape({g.dim(0)}), true);
}

WanVaeDecoder::ResBlock WanVaeDecoder::bind_res(const WeightMap& m, const std::string& p) {
  ResBlock r;
  r.gamma1 = bind_gamma(m, p + "residual.0.gamma");
  r.conv1 = bind_conv(m, p + "residual.2");
  r.gamma2 = bind_gamma(m, p + "residual.3.gamma");
  r.conv2 = bind_conv(m, p + "residual.6");
  if (m.has(p + "shortcut.weight")) r.shortcut = bind_conv(m, p + "shortcut");
  return r;
}

WanVaeDecoder::WanVaeDecoder(const WanVaeConfig& cfg, const WeightMap& m, Ops& ops)
    : cfg_(cfg), ops_(ops) {
  const std::vector<WeightSpec> expected = cfg_.expected_weights();  // validates cfg_
  m.check(expected, /*allow_extra=*/true);  // the encoder (and conv1) may be in the file too
  // Strict for the decoder's own name space: a tensor there that the config does not
  // describe means the config and the weights disagree.
  std::set<std::string> known;
  for (const auto& s : expected) known.insert(s.name);
  std::string extra;
  int n_extra = 0;
  for (const auto& n : m.canonical_names()) {
    if ((n.rfind("decoder.", 0) == 0 || n.rfind("conv2.", 0) == 0) && !known.count(n)) {
      if (n_extra++ < 5) extra += (extra.empty() ? "" : ", ") + n;
    }
  }
  if (n_extra)
    throw weights_error("VAE weights " + m.source().describe() + ": " + std::to_string(n_extra) +
                        " decoder tensor(s) not described by the configuration (e.g. " + extra +
                        "); the config (base_dim " + std::to_string(cfg_.base_dim) +
                        ", num_res_blocks " + std::to_string(cfg_.num_res_blocks) +
                        ") does not match these weights");

  conv2_ = bind_conv(m, "conv2");
  conv_in_ = bind_conv(m, "decoder.conv1");
  mid0_ = bind_res(m, "decoder.middle.0.");
  mid2_ = bind_res(m, "decoder.middle.2.");
  {
    const int64_t C = cfg_.decoder_dims()[0];
    const Tensor qkv = m.load_f32("decoder.middle.1.to_qkv.weight").reshape({3 * C, C});
    const Tensor qkvb = m.load_f32("decoder.middle.1.to_qkv.bias");
    mid_attn_.gamma = bind_gamma(m, "decoder.middle.1.norm.gamma");
    mid_attn_.wq = ops_.weight(qkv.rows(0, C).clone(), true);
    mid_attn_.wk = ops_.weight(qkv.rows(C, 2 * C).clone(), true);
    mid_attn_.wv = ops_.weight(qkv.rows(2 * C, 3 * C).clone(), true);
    mid_attn_.bq = ops_.weight(qkvb.rows(0, C).clone(), true);
    mid_attn_.bk = ops_.weight(qkvb.rows(C, 2 * C).clone(), true);
    mid_attn_.bv = ops_.weight(qkvb.rows(2 * C, 3 * C).clone(), true);
    mid_attn_.wo = ops_.weight(m.load_f32("decoder.middle.1.proj.weight").reshape({C, C}), true);
    mid_attn_.bo = ops_.weight(m.load_f32("decoder.middle.1.proj.bias"), true);
  }
  const auto plan = up_plan(cfg_);
  for (size_t i = 0; i < plan.size(); ++i) {
    const std::string p = "decoder.upsamples." + std::to_string(i) + ".";
    Stage s;
    if (plan[i].kind == UpEntry::Res) {
      s.kind = Stage::Res;
      s.res = bind_res(m, p);
    } else {
      s.kind = plan[i].kind == UpEntry::Up3d ? Stage::Up3d : Stage::Up2d;
      s.spatial = bind_conv(m, p + "resample.1", /*is2d=*/true);
      if (s.kind == Stage::Up3d) s.time_conv = bind_conv(m, p + "time_conv");
    }
    stages_.push_back(std::move(s));
  }
  head_gamma_ = bind_gamma(m, "decoder.head.0.gamma");
  head_conv_ = bind_conv(m, "decoder.head.2");
}

// ---- forward ------------------------------------------------------------------------------

int WanVaeDecoder::Cache::next() {
  const int i = idx++;
  if (int(slot.size()) <= i) {
    slot.resize(i + 1);
    rep.resize(i + 1, false);
  }
  return i;
}

Tensor WanVaeDecoder::conv(const Tensor& x, const Conv& c, int pad_t_front) {
  PartProfile::Scope p(profile_, "conv3d");
  return ops_.conv3d(x, c.w, c.b.defined() ? &c.b : nullptr, pad_t_front, c.kh / 2, c.kw / 2);
}

// The conv over [cached frames, x] (Ops::conv3d_after: cat_time, then conv3d), and with a
// residual added (Ops::conv3d_after_add).
Tensor WanVaeDecoder::conv_after(const Tensor& cached, const Tensor& x, const Conv& c, int pad_t_front,
                                 const Tensor* residual) {
  PartProfile::Scope p(profile_, "conv3d after the cache");
  const Tensor* b = c.b.defined() ? &c.b : nullptr;
  return residual ? ops_.conv3d_after_add(cached, x, c.w, b, pad_t_front, c.kh / 2, c.kw / 2, *residual)
                  : ops_.conv3d_after(cached, x, c.w, b, pad_t_front, c.kh / 2, c.kw / 2);
}

// CausalConv3d with the feature cache (§3.4): the conv sees [cached frames, x], zero-padded
// in front up to kCacheT frames of context; the slot then keeps the last two input frames
// (the old slot's last frame in front when x has a single frame).
Tensor WanVaeDecoder::causal(const Tensor& x, const Conv& c, Cache& cache, const Tensor* residual) {
  const int pad_t = 2 * (c.kt / 2);  // Wan pads 2 * padding_t = kt - 1 frames in front
  auto plus = [&](Tensor y) {
    if (!residual) return y;
    PartProfile::Scope p(profile_, "residual adds");
    return ops_.add(y, *residual);
  };
  if (pad_t == 0) return plus(conv(x, c, 0));
  const int idx = cache.next();
  Tensor& old = cache.slot[idx];
  Tensor y;
  if (old.defined()) {  // the residual, if any, is added as the conv's output is written
    y = conv_after(old, x, c, std::max<int>(0, pad_t - int(old.dim(1))), residual);
  } else {
    y = plus(conv(x, c, pad_t));
  }
  PartProfile::Scope p(profile_, "causal cache copies");
  old = ops_.cache_tail(old, x, kCacheT);  // the last kCacheT frames of [old, x], held
  return y;
}

Tensor WanVaeDecoder::norm_silu(const Tensor& x, const Tensor& gamma) {
  PartProfile::Scope p(profile_, "norm and SiLU");
  return ops_.channel_l2_norm_silu(x, gamma);
}

Tensor WanVaeDecoder::resblock(const Tensor& x, const ResBlock& r, Cache& cache) {
  const Tensor h = r.shortcut.w.defined() ? conv(x, r.shortcut, 0) : x;
  // one statement per step: each intermediate is released before the next conv runs
  Tensor y = norm_silu(x, r.gamma1);
  y = causal(y, r.conv1, cache);
  y = norm_silu(y, r.gamma2);
  return causal(y, r.conv2, cache, &h);  // conv2(y) + h
}

// AttentionBlock: single head, per frame over its h*w positions, head dim C, scale
// 1/sqrt(C); 1x1 convs as linear layers over [h*w, C] tokens; plus the residual.
Tensor WanVaeDecoder::attention(const Tensor& x, const Attn& a) {
  PartProfile::Scope prof(profile_, "middle attention");
  const int64_t C = x.dim(0), T = x.dim(1), H = x.dim(2), W = x.dim(3), HW = H * W;
  const Tensor n = ops_.channel_l2_norm(x, a.gamma);
  const float scale = 1.0f / std::sqrt(float(C));
  Tensor out;
  for (int64_t t = 0; t < T; ++t) {
    const Tensor f = T == 1 ? n : ops_.slice_time(n, t, t + 1);
    const Tensor tok = ops_.transpose(f.reshape({C, HW}));  // [HW, C]
    const Tensor q = ops_.linear(tok, a.wq, &a.bq).reshape({HW, 1, C});
    const Tensor k = ops_.linear(tok, a.wk, &a.bk).reshape({HW, 1, C});
    const Tensor v = ops_.linear(tok, a.wv, &a.bv).reshape({HW, 1, C});
    const Tensor o = ops_.attention(q, k, v, scale).reshape({HW, C});
    const Tensor p = ops_.transpose(ops_.linear(o, a.wo, &a.bo)).reshape({C, 1, H, W});
    out = out.defined() ? ops_.cat_time(out, p) : p;
  }
  return ops_.add(out, x);
}

// Resample upsample2d / upsample3d. upsample3d's time_conv follows Wan's cache rule: the
// first chunk skips it ("Rep", one frame stays one frame); the second runs it with zero
// history (the first chunk's frame is not context); later chunks use the cached frames.
Tensor WanVaeDecoder::upsample(const Tensor& x_in, const Stage& s, Cache& cache) {
  using Part = PartProfile::Scope;
  Tensor x = x_in;
  if (s.kind == Stage::Up3d) {
    const int idx = cache.next();
    Tensor& old = cache.slot[idx];
    if (!old.defined() && !cache.rep[idx]) {
      cache.rep[idx] = true;
    } else {
      const int64_t T = x.dim(1);
      Tensor y;
      if (cache.rep[idx]) {
        // the second chunk: zero history in front, not the first chunk's frame
        Tensor keep;
        {
          Part p(profile_, "causal cache copies");
          keep = ops_.slice_time(x, std::max<int64_t>(0, T - kCacheT), T);
          if (keep.dim(1) < kCacheT) {
            Shape zs = keep.shape();
            zs[1] = kCacheT - keep.dim(1);
            keep = ops_.cat_time(ops_.zeros(zs), keep);
          }
        }
        y = conv(x, s.time_conv, kCacheT);
        cache.rep[idx] = false;
        Part p(profile_, "causal cache copies");
        old = ops_.hold_frames(keep);
      } else {
        y = conv_after(old, x, s.time_conv, std::max<int>(0, kCacheT - int(old.dim(1))));
        Part p(profile_, "causal cache copies");
        old = ops_.cache_tail(old, x, kCacheT);
      }
      Part p(profile_, "causal cache copies");
      x = ops_.interleave_time(y);  // [2C, T, H, W] -> [C, 2T, H, W]
    }
  }
  Tensor up;
  {
    Part p(profile_, "upsample");
    up = ops_.upsample2x_for_conv(x);  // its only reader is the spatial conv
  }
  x = Tensor();
  return conv(up, s.spatial, 0);
}

// One latent frame through the decoder. The stages after the last temporal upsample (and
// the head) see the frames only through their causal caches: each output frame depends on
// the frames before it, never on the ones after. So they run one frame at a time, which
// gives the same values, while the largest activations (full resolution) take a quarter of
// the memory (wan-notes: 96 channels at 480x832 are 153 MB per frame in float32).
Tensor WanVaeDecoder::chunk(const Tensor& x, Cache& cache) {
  cache.idx = 0;
  Tensor h = causal(x, conv_in_, cache);
  h = resblock(h, mid0_, cache);
  h = attention(h, mid_attn_);
  h = resblock(h, mid2_, cache);
  size_t tail = 0;  // the first stage after the last Up3d
  for (size_t i = 0; i < stages_.size(); ++i)
    if (stages_[i].kind == Stage::Up3d) tail = i + 1;
  for (size_t i = 0; i < tail; ++i)
    h = stages_[i].kind == Stage::Res ? resblock(h, stages_[i].res, cache) : upsample(h, stages_[i], cache);
  const int first_tail_slot = cache.idx;
  const int64_t T = h.dim(1);
  Tensor out;
  for (int64_t t = 0; t < T; ++t) {
    cache.idx = first_tail_slot;  // every frame visits the same slots, in order
    Tensor f = T == 1 ? h : ops_.slice_time(h, t, t + 1);
    if (t + 1 == T) h = Tensor();  // the last frame is sliced: the stage input can go
    for (size_t i = tail; i < stages_.size(); ++i)
      f = stages_[i].kind == Stage::Res ? resblock(f, stages_[i].res, cache) : upsample(f, stages_[i], cache);
    f = norm_silu(f, head_gamma_);
    f = causal(f, head_conv_, cache);
    PartProfile::Scope p(profile_, "causal cache copies");
    out = out.defined() ? ops_.cat_time(out, f) : f;
  }
  return out;
}

void WanVaeDecoder::note_cache(const Cache& cache) {
  size_t bytes = 0;
  for (const auto& t : cache.slot) {
    if (!t.defined()) continue;
    bytes += t.nbytes();
    max_cached_ = std::max<int>(max_cached_, int(t.dim(1)));
  }
  max_cache_bytes_ = std::max(max_cache_bytes_, bytes);
  slots_used_ = std::max(slots_used_, cache.idx);
}

int64_t WanVaeDecoder::output_frames(int64_t T) const {
  return T <= 0 ? 0 : 1 + int64_t(cfg_.temporal_factor()) * (T - 1);
}

void WanVaeDecoder::decode(const Tensor& z_norm, const Sink& sink, bool clamp) {
  if (!z_norm.defined() || z_norm.dtype() != DType::F32 || !z_norm.device().is_cpu() ||
      z_norm.ndim() != 4 || z_norm.dim(0) != cfg_.z_dim || z_norm.dim(1) < 1 || z_norm.dim(2) < 1 ||
      z_norm.dim(3) < 1)
    throw internal_error("VAE decode: the latent must be a host F32 [" + std::to_string(cfg_.z_dim) +
                         ", T >= 1, h, w] tensor, got " +
                         (z_norm.defined() ? z_norm.str() : std::string("an empty tensor")));
  const int64_t C = z_norm.dim(0), T = z_norm.dim(1), P = z_norm.dim(2) * z_norm.dim(3);
  // De-normalise exactly as Wan does: z / (1/std) + mean, per channel, in fp32.
  Tensor z = Tensor::empty(z_norm.shape());
  const float* zi = z_norm.f32();
  float* zo = z.f32();
  for (int64_t c = 0; c < C; ++c) {
    const float inv = 1.0f / cfg_.latents_std[c], mean = cfg_.latents_mean[c];
    for (int64_t i = c * T * P; i < (c + 1) * T * P; ++i) zo[i] = zi[i] / inv + mean;
  }
  const Tensor x = conv(ops_.upload(z), conv2_, 0);  // conv2 (k1) over all latent frames
  Cache cache;
  max_cached_ = slots_used_ = 0;
  max_cache_bytes_ = 0;
  for (int64_t i = 0; i < T; ++i) {
    Tensor out = chunk(T == 1 ? x : ops_.slice_time(x, i, i + 1), cache);
    note_cache(cache);
    Tensor host;
    {
      PartProfile::Scope p(profile_, "download");
      if (clamp) out = ops_.clamp(out, -1.0f, 1.0f);
      host = ops_.download(out);
    }
    sink(host);
  }
}

Tensor WanVaeDecoder::decode_all(const Tensor& z_norm, bool clamp) {
  const int64_t n = output_frames(z_norm.ndim() == 4 ? z_norm.dim(1) : 0);
  Tensor out;
  int64_t t0 = 0;
  decode(z_norm, [&](const Tensor& f) {
    const int64_t C = f.dim(0), nt = f.dim(1), HW = f.dim(2) * f.dim(3);
    if (!out.defined()) out = Tensor::empty({C, n, f.dim(2), f.dim(3)});
    MG_CHECK(t0 + nt <= n && out.dim(2) == f.dim(2) && out.dim(3) == f.dim(3), "VAE chunk " + f.str());
    for (int64_t c = 0; c < C; ++c)
      std::memcpy(out.f32() + (c * n + t0) * HW, f.f32() + c * nt * HW, size_t(nt * HW) * sizeof(float));
    t0 += nt;
  }, clamp);
  MG_CHECK(t0 == n, "VAE decode produced " + std::to_string(t0) + " frames, expected " + std::to_string(n));
  return out;
}

}  // namespace mg
