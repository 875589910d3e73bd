#include "models/wan_vae/wan_vae.h"

namespace mg {

namespace {
const float kMean[16] = {-0.7571f, -0.7089f, -0.9113f, 0.1075f, -0.1745f, 0.9653f, -0.1517f, 1.5508f,
                         0.4134f, -0.0715f, 0.5517f, -0.3632f, -0.1922f, -0.9497f, 0.2503f, -0.2921f};
const float kStd[16] = {2.8184f, 1.4541f, 2.3275f, 2.6558f, 1.2196f, 1.7708f, 2.6052f, 2.0743f,
                        3.2687f, 2.1526f, 2.8652f, 1.5579f, 1.6382f, 1.1253f, 2.8251f, 1.9160f};

// Decoder widths: [mult[-1]] + reversed(mult), times base_dim.
std::vector<int64_t> dec_dims(const WanVaeConfig& c) {
  std::vector<int64_t> d{int64_t(c.base_dim) * c.dim_mult.back()};
  for (auto it = c.dim_mult.rbegin(); it != c.dim_mult.rend(); ++it) d.push_back(int64_t(c.base_dim) * *it);
  return d;
}
}  // namespace

WanVaeConfig::WanVaeConfig() : latents_mean(kMean, kMean + 16), latents_std(kStd, kStd + 16) {}

WanVaeConfig WanVaeConfig::from_json(const nlohmann::json& j) {
  WanVaeConfig c;
  try {
    if (j.contains("base_dim")) c.base_dim = j["base_dim"].get<int>();
    if (j.contains("z_dim")) c.z_dim = j["z_dim"].get<int>();
    if (j.contains("dim_mult")) c.dim_mult = j["dim_mult"].get<std::vector<int>>();
    if (j.contains("num_res_blocks")) c.num_res_blocks = j["num_res_blocks"].get<int>();
    if (j.contains("temperal_downsample")) c.temperal_downsample = j["temperal_downsample"].get<std::vector<bool>>();
    if (j.contains("latents_mean")) c.latents_mean = j["latents_mean"].get<std::vector<float>>();
    if (j.contains("latents_std")) c.latents_std = j["latents_std"].get<std::vector<float>>();
  } catch (const nlohmann::json::exception& e) {
    throw weights_error(std::string("VAE config.json: a field has the wrong type: ") + e.what());
  }
  if (c.base_dim <= 0 || c.z_dim <= 0 || c.dim_mult.size() < 2 || c.num_res_blocks < 0 ||
      c.temperal_downsample.size() != c.dim_mult.size() - 1)
    throw weights_error("VAE config.json: inconsistent base_dim / dim_mult / temperal_downsample");
  if (int(c.latents_mean.size()) != c.z_dim || int(c.latents_std.size()) != c.z_dim)
    throw weights_error("VAE config.json: latents_mean and latents_std need z_dim (" +
                        std::to_string(c.z_dim) + ") values");
  return c;
}

WanVaeConfig WanVaeConfig::infer(const WeightMap& m) {
  WanVaeConfig c;
  const Shape ci = m.shape("decoder.conv1.weight");  // [dims0, z, 3, 3, 3]
  c.z_dim = int(ci[1]);
  const Shape head = m.shape("decoder.head.2.weight");  // [3, base, 3, 3, 3]
  c.base_dim = int(head[1]);
  c.dim_mult = {1, 2, 4, int(ci[0] / c.base_dim)};
  return c;
}

std::vector<WeightSpec> WanVaeConfig::expected_weights() const {
  const auto d = dec_dims(*this);
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
  int idx = 0;
  const size_t n = dim_mult.size();
  for (size_t i = 0; i + 1 < d.size(); ++i) {
    int64_t in = d[i], out = d[i + 1];
    if (i >= 1) in /= 2;
    for (int r = 0; r <= num_res_blocks; ++r) {
      res("decoder.upsamples." + std::to_string(idx++) + ".", in, out);
      in = out;
    }
    if (i != n - 1) {
      const std::string p = "decoder.upsamples." + std::to_string(idx++) + ".";
      w.push_back({p + "resample.1.weight", {out / 2, out, 3, 3}});
      w.push_back({p + "resample.1.bias", {out / 2}});
      if (temperal_downsample[n - 2 - i]) {
        w.push_back({p + "time_conv.weight", {out * 2, out, 3, 1, 1}});
        w.push_back({p + "time_conv.bias", {out * 2}});
      }
    }
  }
  w.push_back({"decoder.head.0.gamma", {d.back(), 1, 1, 1}});
  w.push_back({"decoder.head.2.weight", {3, d.back(), 3, 3, 3}});
  w.push_back({"decoder.head.2.bias", {3}});
  return w;
}

WanVaeDecoder::Conv WanVaeDecoder::conv(const WeightMap& m, const std::string& p, bool is2d) {
  Conv c;
  Tensor w = m.load_f32(p + ".weight");
  if (is2d) w = w.reshape({w.dim(0), w.dim(1), 1, w.dim(2), w.dim(3)});
  c.kt = int(w.dim(2));
  c.kh = int(w.dim(3));
  c.kw = int(w.dim(4));
  c.w = ops_.weight(w, true);
  if (m.has(p + ".bias")) c.b = ops_.weight(m.load_f32(p + ".bias"), true);
  return c;
}

WanVaeDecoder::WanVaeDecoder(const WanVaeConfig& cfg, const WeightMap& m, Ops& ops) : cfg_(cfg), ops_(ops) {
  m.check(cfg_.expected_weights(), /*allow_extra=*/true);  // the encoder may be in the file too
  auto gamma = [&](const std::string& n) {
    Tensor g = m.load_f32(n);
    return ops_.weight(g.reshape({g.dim(0)}), true);
  };
  auto res = [&](const std::string& p) {
    ResBlock r;
    r.gamma1 = gamma(p + "residual.0.gamma");
    r.conv1 = conv(m, p + "residual.2");
    r.gamma2 = gamma(p + "residual.3.gamma");
    r.conv2 = conv(m, p + "residual.6");
    if (m.has(p + "shortcut.weight")) r.shortcut = conv(m, p + "shortcut");
    return r;
  };
  conv2_ = conv(m, "conv2");
  conv_in_ = conv(m, "decoder.conv1");
  mid0_ = res("decoder.middle.0.");
  mid2_ = res("decoder.middle.2.");
  {
    const int64_t C = m.shape("decoder.middle.1.proj.weight")[0];
    Tensor qkv = m.load_f32("decoder.middle.1.to_qkv.weight").reshape({3 * C, C});
    Tensor qkvb = m.load_f32("decoder.middle.1.to_qkv.bias");
    mid_attn_.gamma = gamma("decoder.middle.1.norm.gamma");
    mid_attn_.wq = ops_.weight(qkv.rows(0, C).clone(), true);
    mid_attn_.wk = ops_.weight(qkv.rows(C, 2 * C).clone(), true);
    mid_attn_.wv = ops_.weight(qkv.rows(2 * C, 3 * C).clone(), true);
    mid_attn_.bq = ops_.weight(qkvb.rows(0, C).clone(), true);
    mid_attn_.bk = ops_.weight(qkvb.rows(C, 2 * C).clone(), true);
    mid_attn_.bv = ops_.weight(qkvb.rows(2 * C, 3 * C).clone(), true);
    mid_attn_.wo = ops_.weight(m.load_f32("decoder.middle.1.proj.weight").reshape({C, C}), true);
    mid_attn_.bo = ops_.weight(m.load_f32("decoder.middle.1.proj.bias"), true);
  }
  for (int i = 0;; ++i) {
    const std::string p = "decoder.upsamples." + std::to_string(i) + ".";
    Stage s;
    if (m.has(p + "residual.0.gamma")) {
      s.kind = Stage::Res;
      s.res = res(p);
    } else if (m.has(p + "resample.1.weight")) {
      s.spatial = conv(m, p + "resample.1", true);
      if (m.has(p + "time_conv.weight")) {
        s.kind = Stage::Up3d;
        s.time_conv = conv(m, p + "time_conv");
      } else {
        s.kind = Stage::Up2d;
      }
    } else {
      break;
    }
    stages_.push_back(std::move(s));
  }
  head_gamma_ = gamma("decoder.head.0.gamma");
  head_conv_ = conv(m, "decoder.head.2");
}

// CausalConv3d with the feature cache: the conv sees [cached frames, x] with zero frames in
// front up to 2*pad_t; the cache keeps the last two input frames.
Tensor WanVaeDecoder::causal(const Tensor& x, const Conv& c, Cache& cache) {
  const int pad_t = c.kt - 1;  // Wan: 2 * padding_t, padding_t = (kt - 1) / 2
  if (pad_t == 0) return ops_.conv3d(x, c.w, c.b.defined() ? &c.b : nullptr, 0, c.kh / 2, c.kw / 2);
  const int idx = cache.idx++;
  if (int(cache.slot.size()) <= idx) {
    cache.slot.resize(idx + 1);
    cache.rep.resize(idx + 1, false);
  }
  const int64_t T = x.dim(1);
  Tensor keep = ops_.slice_time(x, std::max<int64_t>(0, T - 2), T);
  Tensor& old = cache.slot[idx];
  if (keep.dim(1) < 2 && old.defined())
    keep = ops_.cat_time(ops_.slice_time(old, old.dim(1) - 1, old.dim(1)), keep);
  Tensor in = x;
  int front = pad_t;
  if (old.defined()) {
    in = ops_.cat_time(old, x);
    front = std::max<int>(0, pad_t - int(old.dim(1)));
  }
  Tensor y = ops_.conv3d(in, c.w, c.b.defined() ? &c.b : nullptr, front, c.kh / 2, c.kw / 2);
  old = keep;
  max_cached_ = std::max<int>(max_cached_, int(keep.dim(1)));
  return y;
}

Tensor WanVaeDecoder::resblock(const Tensor& x, const ResBlock& r, Cache& cache) {
  Tensor h = r.shortcut.w.defined() ? ops_.conv3d(x, r.shortcut.w, r.shortcut.b.defined() ? &r.shortcut.b : nullptr, 0, 0, 0) : x;
  Tensor y = causal(ops_.silu(ops_.channel_l2_norm(x, r.gamma1)), r.conv1, cache);
  y = causal(ops_.silu(ops_.channel_l2_norm(y, r.gamma2)), r.conv2, cache);
  return ops_.add(y, h);
}

// Single-head attention per frame over its h*w positions, head dim C.
Tensor WanVaeDecoder::attention(const Tensor& x, const Attn& a) {
  const int64_t C = x.dim(0), T = x.dim(1), HW = x.dim(2) * x.dim(3);
  Tensor n = ops_.transpose(ops_.channel_l2_norm(x, a.gamma).reshape({C, T * HW}));  // [T*HW, C]
  Tensor q = ops_.linear(n, a.wq, &a.bq).reshape({T * HW, 1, C});
  Tensor k = ops_.linear(n, a.wk, &a.bk).reshape({T * HW, 1, C});
  Tensor v = ops_.linear(n, a.wv, &a.bv).reshape({T * HW, 1, C});
  CuSeqlens cu{0};
  for (int64_t t = 0; t < T; ++t) cu.push_back(cu.back() + HW);
  Tensor o = ops_.attention_varlen(q, k, v, cu, cu, 1.0f / std::sqrt(float(C)));
  Tensor p = ops_.linear(o.reshape({T * HW, C}), a.wo, &a.bo);
  return ops_.add(ops_.transpose(p).reshape(x.shape()), x);
}

Tensor WanVaeDecoder::upsample(const Tensor& x_in, const Stage& s, Cache& cache) {
  Tensor x = x_in;
  if (s.kind == Stage::Up3d) {
    const int idx = cache.idx++;
    if (int(cache.slot.size()) <= idx) {
      cache.slot.resize(idx + 1);
      cache.rep.resize(idx + 1, false);
    }
    if (!cache.slot[idx].defined() && !cache.rep[idx]) {
      cache.rep[idx] = true;  // first chunk: no time_conv, one frame stays one frame
    } else {
      const int64_t T = x.dim(1);
      Tensor keep = ops_.slice_time(x, std::max<int64_t>(0, T - 2), T);
      Tensor y;
      if (cache.rep[idx]) {
        if (keep.dim(1) < 2) keep = ops_.cat_time(ops_.zeros(ops_.slice_time(keep, 0, 1).shape()), keep);
        y = ops_.conv3d(x, s.time_conv.w, &s.time_conv.b, 2, 0, 0);
        cache.rep[idx] = false;
      } else {
        Tensor& old = cache.slot[idx];
        if (keep.dim(1) < 2) keep = ops_.cat_time(ops_.slice_time(old, old.dim(1) - 1, old.dim(1)), keep);
        y = ops_.conv3d(ops_.cat_time(old, x), s.time_conv.w, &s.time_conv.b,
                        std::max<int>(0, 2 - int(old.dim(1))), 0, 0);
      }
      cache.slot[idx] = keep;
      max_cached_ = std::max<int>(max_cached_, int(keep.dim(1)));
      x = ops_.interleave_time(y);
    }
  }
  return ops_.conv3d(ops_.upsample2x(x), s.spatial.w, &s.spatial.b, 0, 1, 1);
}

Tensor WanVaeDecoder::chunk(const Tensor& x, Cache& cache) {
  cache.idx = 0;
  Tensor h = causal(x, conv_in_, cache);
  h = resblock(h, mid0_, cache);
  h = attention(h, mid_attn_);
  h = resblock(h, mid2_, cache);
  for (const auto& s : stages_) h = s.kind == Stage::Res ? resblock(h, s.res, cache) : upsample(h, s, cache);
  return causal(ops_.silu(ops_.channel_l2_norm(h, head_gamma_)), head_conv_, cache);
}

void WanVaeDecoder::decode(const Tensor& z_norm, const Sink& sink, bool clamp) {
  if (z_norm.ndim() != 4 || z_norm.dim(0) != cfg_.z_dim)
    throw internal_error("VAE input must be [" + std::to_string(cfg_.z_dim) + ", T, h, w], got " + z_norm.str());
  const int64_t C = z_norm.dim(0), T = z_norm.dim(1), P = z_norm.dim(2) * z_norm.dim(3);
  Tensor z = Tensor::empty(z_norm.shape());
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < T * P; ++i)
      z.f32()[c * T * P + i] = z_norm.f32()[c * T * P + i] * cfg_.latents_std[c] + cfg_.latents_mean[c];
  Tensor x = ops_.conv3d(ops_.upload(z), conv2_.w, &conv2_.b, 0, 0, 0);
  Cache cache;
  max_cached_ = 0;
  for (int64_t i = 0; i < T; ++i) {
    Tensor out = chunk(ops_.slice_time(x, i, i + 1), cache);
    if (clamp) out = ops_.clamp(out, -1.0f, 1.0f);
    sink(ops_.download(out));
  }
}

Tensor WanVaeDecoder::decode_all(const Tensor& z_norm, bool clamp) {
  std::vector<Tensor> parts;
  int64_t n = 0;
  decode(z_norm, [&](const Tensor& f) {
    parts.push_back(f.clone());
    n += f.dim(1);
  }, clamp);
  const int64_t C = parts[0].dim(0), H = parts[0].dim(2), W = parts[0].dim(3);
  Tensor out = Tensor::empty({C, n, H, W});
  int64_t t0 = 0;
  for (const auto& p : parts) {
    for (int64_t c = 0; c < C; ++c)
      std::copy(p.f32() + c * p.dim(1) * H * W, p.f32() + (c + 1) * p.dim(1) * H * W,
                out.f32() + (c * n + t0) * H * W);
    t0 += p.dim(1);
  }
  return out;
}

}  // namespace mg
