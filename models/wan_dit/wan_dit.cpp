// The Wan2.1 T2V DiT: see wan_dit.h. Section numbers refer to ../shared/wan-notes.md.
#include "models/wan_dit/wan_dit.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "mogagen/log.h"

namespace mg {
namespace {

using json = nlohmann::json;

// ---- config parsing helpers --------------------------------------------------------------

const json* field(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

int get_int(const json& j, const char* key, int def, const char* where = "DiT config") {
  const json* v = field(j, key);
  if (!v) return def;
  if (!v->is_number_integer() && !(v->is_number() && std::floor(v->get<double>()) == v->get<double>()))
    throw input_error(std::string(where) + ": field '" + key + "' must be an integer, found " +
                      v->dump());
  return static_cast<int>(v->get<double>());
}

int require_int(const json& j, const char* key, const char* alt = nullptr) {
  if (field(j, key)) return get_int(j, key, 0);
  if (alt && field(j, alt)) return get_int(j, alt, 0);
  throw input_error(std::string("DiT config: missing field '") + key + "'" +
                    (alt ? std::string(" (or '") + alt + "')" : std::string()) +
                    "; is this a Wan2.1 DiT config.json?");
}

double get_double(const json& j, const char* key, double def) {
  const json* v = field(j, key);
  if (!v) return def;
  if (!v->is_number())
    throw input_error(std::string("DiT config: field '") + key + "' must be a number, found " +
                      v->dump());
  return v->get<double>();
}

void get_int_array(const json& j, const char* key, int* dst, size_t n, const char* where) {
  const json* v = field(j, key);
  if (!v) return;
  if (!v->is_array() || v->size() != n)
    throw input_error(std::string(where) + ": field '" + key + "' must be an array of " +
                      std::to_string(n) + " integers, found " + v->dump());
  for (size_t i = 0; i < n; ++i) {
    if (!(*v)[i].is_number_integer())
      throw input_error(std::string(where) + ": field '" + key + "' must hold integers, found " +
                        v->dump());
    dst[i] = (*v)[i].get<int>();
  }
}

AttentionMode parse_attention_type(const json& v) {
  if (!v.is_string())
    throw input_error("DiT config: attention type must be \"dense\" or \"moga\", found " + v.dump());
  const std::string s = v.get<std::string>();
  if (s == "dense") return AttentionMode::Dense;
  if (s == "moga") return AttentionMode::Moga;
  throw input_error("DiT config: attention type must be \"dense\" or \"moga\", found \"" + s + "\"");
}

const std::string kRouterMissing =
    "asking for MoGA on a checkpoint without router weights "
    "(blocks.N.self_attn.router.weight); use dense attention or add routers "
    "(--moga-weights FILE)";

std::string blk(int i) { return "blocks." + std::to_string(i) + "."; }

}  // namespace

// ---- WanDitConfig ---------------------------------------------------------------------------

WanDitConfig WanDitConfig::from_json(const json& j) {
  if (!j.is_object()) throw input_error("DiT config: expected a JSON object, found " + j.dump());
  WanDitConfig c;
  if (const json* mt = field(j, "model_type"))
    if (!mt->is_string() || mt->get<std::string>() != "t2v")
      throw input_error("DiT config: model_type " + mt->dump() +
                        " is not supported (only \"t2v\", text to video)");
  if (field(j, "num_attention_heads")) {  // diffusers WanTransformer3DModel
    c.num_heads = get_int(j, "num_attention_heads", 0);
    c.dim = c.num_heads * get_int(j, "attention_head_dim", 128);
    c.in_dim = get_int(j, "in_channels", c.in_dim);
    c.out_dim = get_int(j, "out_channels", c.out_dim);
  } else {  // original Wan names
    c.dim = require_int(j, "dim");
    c.num_heads = require_int(j, "num_heads");
    c.in_dim = get_int(j, "in_dim", c.in_dim);
    c.out_dim = get_int(j, "out_dim", c.out_dim);
  }
  c.ffn_dim = require_int(j, "ffn_dim");
  c.num_layers = require_int(j, "num_layers");
  c.freq_dim = get_int(j, "freq_dim", c.freq_dim);
  c.text_len = get_int(j, "text_len", c.text_len);
  c.text_dim = get_int(j, "text_dim", c.text_dim);
  c.eps = get_double(j, "eps", c.eps);
  get_int_array(j, "patch_size", c.patch, 3, "DiT config");

  if (const json* a = field(j, "attention")) {
    if (a->is_string()) {
      c.attention = parse_attention_type(*a);
    } else if (a->is_object()) {
      if (const json* t = field(*a, "type")) c.attention = parse_attention_type(*t);
      const char* w = "DiT config: attention";
      c.moga.groups = get_int(*a, "groups", c.moga.groups, w);
      get_int_array(*a, "windows", c.moga.windows, 2, w);
      c.moga.temporal_group = get_int(*a, "temporal_group", c.moga.temporal_group, w);
      c.moga.kv_extend = get_int(*a, "kv_extend", c.moga.kv_extend, w);
    } else {
      throw input_error("DiT config: field 'attention' must be \"dense\", \"moga\" or an object, "
                        "found " + a->dump());
    }
  }
  c.validate();
  return c;
}

void WanDitConfig::validate() const {
  auto bad = [](const std::string& m) { throw input_error("DiT config: " + m); };
  if (dim <= 0 || num_heads <= 0 || dim % num_heads != 0)
    bad("dim " + std::to_string(dim) + " is not a positive multiple of num_heads " +
        std::to_string(num_heads));
  if (head_dim() % 2 != 0) bad("head dim " + std::to_string(head_dim()) + " must be even (RoPE)");
  if (ffn_dim <= 0 || num_layers <= 0 || text_len <= 0 || text_dim <= 0 || in_dim <= 0 ||
      out_dim <= 0)
    bad("ffn_dim, num_layers, text_len, text_dim, in_dim and out_dim must be positive");
  if (freq_dim <= 0 || freq_dim % 2 != 0) bad("freq_dim must be positive and even");
  if (patch[0] <= 0 || patch[1] <= 0 || patch[2] <= 0) bad("patch_size must be positive");
  if (!(eps > 0)) bad("eps must be positive");
  if (moga.groups < 0) bad("attention.groups must be >= 0");
  if (moga.windows[0] <= 0 || moga.windows[1] <= 0) bad("attention.windows must be positive");
  if (moga.temporal_group <= 0) bad("attention.temporal_group must be positive");
  if (moga.kv_extend < 0) bad("attention.kv_extend must be >= 0");
}

WanDitConfig WanDitConfig::infer(const WeightMap& m) {
  WanDitConfig c;
  auto need = [&](const std::string& n, size_t rank) {
    if (!m.has(n))
      throw weights_error(m.source().describe() + ": cannot infer the DiT shape: tensor '" + n +
                          "' is missing");
    Shape s = m.shape(n);
    if (s.size() != rank)
      throw weights_error(m.source().describe() + ": tensor '" + n + "' has shape " +
                          shape_str(s) + ", expected rank " + std::to_string(rank));
    return s;
  };
  const Shape pe = need("patch_embedding.weight", 5);
  c.dim = static_cast<int>(pe[0]);
  c.in_dim = static_cast<int>(pe[1]);
  for (int i = 0; i < 3; ++i) c.patch[i] = static_cast<int>(pe[2 + i]);
  c.ffn_dim = static_cast<int>(need("blocks.0.ffn.0.weight", 2)[0]);
  c.text_dim = static_cast<int>(need("text_embedding.0.weight", 2)[1]);
  c.freq_dim = static_cast<int>(need("time_embedding.0.weight", 2)[1]);
  const Shape hw = need("head.head.weight", 2);
  c.out_dim = static_cast<int>(hw[0] / std::max(1, c.patch_volume()));
  int layers = 0;
  for (const auto& n : m.canonical_names()) {
    if (n.rfind("blocks.", 0) != 0) continue;
    const size_t dot = n.find('.', 7);
    try {
      layers = std::max(layers, std::stoi(n.substr(7, dot - 7)) + 1);
    } catch (const std::exception&) {
    }
  }
  c.num_layers = layers;
  // Every Wan2.1 DiT uses head_dim 128; other head dims need a config.json.
  if (c.dim % 128 == 0) {
    c.num_heads = c.dim / 128;
  } else {
    c.num_heads = 1;
    spdlog::debug("DiT dim {} is not a multiple of 128: assuming one head; give a config.json "
                  "for other head dims", c.dim);
  }
  c.text_len = 512;
  for (int i = 0; i < layers; ++i)
    if (m.has(blk(i) + "self_attn.router.weight")) {
      c.moga.groups = static_cast<int>(m.shape(blk(i) + "self_attn.router.weight")[0]);
      break;
    }
  c.validate();
  return c;
}

std::vector<WeightSpec> WanDitConfig::expected_weights() const {
  const int64_t d = dim, f = ffn_dim;
  std::vector<WeightSpec> w;
  auto lin = [&](const std::string& p, int64_t out, int64_t in) {
    w.push_back({p + ".weight", {out, in}});
    w.push_back({p + ".bias", {out}});
  };
  w.push_back({"patch_embedding.weight", {d, in_dim, patch[0], patch[1], patch[2]}});
  w.push_back({"patch_embedding.bias", {d}});
  lin("text_embedding.0", d, text_dim);
  lin("text_embedding.2", d, d);
  lin("time_embedding.0", d, freq_dim);
  lin("time_embedding.2", d, d);
  lin("time_projection.1", 6 * d, d);
  for (int i = 0; i < num_layers; ++i) {
    const std::string b = blk(i);
    w.push_back({b + "modulation", {1, 6, d}});
    for (const char* a : {"self_attn.", "cross_attn."}) {
      for (const char* p : {"q", "k", "v", "o"}) lin(b + a + p, d, d);
      w.push_back({b + a + "norm_q.weight", {d}});
      w.push_back({b + a + "norm_k.weight", {d}});
    }
    w.push_back({b + "norm3.weight", {d}});
    w.push_back({b + "norm3.bias", {d}});
    lin(b + "ffn.0", f, d);
    lin(b + "ffn.2", d, f);
    if (moga.groups > 0) {
      w.push_back({b + "self_attn.router.weight", {moga.groups, d}, true});
      w.push_back({b + "self_attn.router.bias", {moga.groups}, true});
    }
  }
  w.push_back({"head.modulation", {1, 2, d}});
  lin("head.head", int64_t(out_dim) * patch_volume(), d);
  return w;
}

// ---- WanDit: weights ----------------------------------------------------------------------

WanDit::WanDit(const WanDitConfig& cfg, const WeightMap& map, Ops& ops) : cfg_(cfg), ops_(ops) {
  // A checkpoint with routers but a config without "attention.groups": take M from the shape.
  if (cfg_.moga.groups == 0 && map.has("blocks.0.self_attn.router.weight"))
    cfg_.moga.groups = static_cast<int>(map.shape("blocks.0.self_attn.router.weight")[0]);
  cfg_.validate();
  map.check(cfg_.expected_weights());

  const int64_t d = cfg_.dim;
  // keep_f32: the reference keeps these in float32 (wan-notes §1.6).
  auto W = [&](const std::string& n, bool f32 = false) { return ops_.weight(map.load_f32(n), f32); };
  patch_w = ops_.weight(map.load_f32("patch_embedding.weight")
                            .reshape({d, int64_t(cfg_.in_dim) * cfg_.patch_volume()}));
  patch_b = W("patch_embedding.bias");
  text0_w = W("text_embedding.0.weight");
  text0_b = W("text_embedding.0.bias");
  text2_w = W("text_embedding.2.weight");
  text2_b = W("text_embedding.2.bias");
  time0_w = W("time_embedding.0.weight", true);
  time0_b = W("time_embedding.0.bias", true);
  time2_w = W("time_embedding.2.weight", true);
  time2_b = W("time_embedding.2.bias", true);
  tproj_w = W("time_projection.1.weight", true);
  tproj_b = W("time_projection.1.bias", true);
  head_mod = ops_.weight(map.load_f32("head.modulation").reshape({2, d}), true);
  head_w = W("head.head.weight", true);
  head_b = W("head.head.bias", true);

  std::vector<int> without_router;
  blocks_.resize(cfg_.num_layers);
  for (int i = 0; i < cfg_.num_layers; ++i) {
    Block& b = blocks_[i];
    const std::string p = blk(i);
    b.modulation = ops_.weight(map.load_f32(p + "modulation").reshape({6, d}), true);
    b.sq_w = W(p + "self_attn.q.weight");
    b.sq_b = W(p + "self_attn.q.bias");
    b.sk_w = W(p + "self_attn.k.weight");
    b.sk_b = W(p + "self_attn.k.bias");
    b.sv_w = W(p + "self_attn.v.weight");
    b.sv_b = W(p + "self_attn.v.bias");
    b.so_w = W(p + "self_attn.o.weight");
    b.so_b = W(p + "self_attn.o.bias");
    b.s_norm_q = W(p + "self_attn.norm_q.weight", true);
    b.s_norm_k = W(p + "self_attn.norm_k.weight", true);
    if (map.has(p + "self_attn.router.weight")) {
      b.router_w = W(p + "self_attn.router.weight", true);
      if (map.has(p + "self_attn.router.bias")) b.router_b = W(p + "self_attn.router.bias", true);
    } else {
      without_router.push_back(i);
    }
    b.norm3_w = W(p + "norm3.weight", true);
    b.norm3_b = W(p + "norm3.bias", true);
    b.cq_w = W(p + "cross_attn.q.weight");
    b.cq_b = W(p + "cross_attn.q.bias");
    b.ck_w = W(p + "cross_attn.k.weight");
    b.ck_b = W(p + "cross_attn.k.bias");
    b.cv_w = W(p + "cross_attn.v.weight");
    b.cv_b = W(p + "cross_attn.v.bias");
    b.co_w = W(p + "cross_attn.o.weight");
    b.co_b = W(p + "cross_attn.o.bias");
    b.c_norm_q = W(p + "cross_attn.norm_q.weight", true);
    b.c_norm_k = W(p + "cross_attn.norm_k.weight", true);
    b.ffn1_w = W(p + "ffn.0.weight");
    b.ffn1_b = W(p + "ffn.0.bias");
    b.ffn2_w = W(p + "ffn.2.weight");
    b.ffn2_b = W(p + "ffn.2.bias");
  }
  const int with_router = cfg_.num_layers - static_cast<int>(without_router.size());
  if (with_router > 0 && !without_router.empty()) {
    std::string list;
    for (size_t i = 0; i < without_router.size() && i < 20; ++i)
      list += (i ? ", " : "") + std::to_string(without_router[i]);
    throw weights_error(map.source().describe() + ": MoGA router weights exist for " +
                        std::to_string(with_router) + " of " + std::to_string(cfg_.num_layers) +
                        " blocks; missing blocks.N.self_attn.router.weight for N = " + list);
  }
  has_routers_ = with_router > 0;
  if (!has_routers_) cfg_.moga.groups = 0;
}

void WanDit::set_moga_options(const MogaConfig& m) {
  MogaConfig n = m;
  n.groups = cfg_.moga.groups;
  WanDitConfig c = cfg_;
  c.moga = n;
  c.validate();
  cfg_ = c;
}

std::vector<float> WanDit::router_bias(int block) const {
  if (!has_routers_ || block < 0 || block >= int(blocks_.size()))
    throw internal_error("router_bias: no router in block " + std::to_string(block));
  const Block& b = blocks_[size_t(block)];
  if (!b.router_b.defined()) return std::vector<float>(size_t(cfg_.moga.groups), 0.0f);
  const Tensor h = ops_.download(b.router_b);
  return std::vector<float>(h.f32(), h.f32() + h.numel());
}

void WanDit::set_router_bias(int block, const std::vector<float>& bias) {
  if (!has_routers_ || block < 0 || block >= int(blocks_.size()))
    throw internal_error("set_router_bias: no router in block " + std::to_string(block));
  if (int64_t(bias.size()) != cfg_.moga.groups)
    throw internal_error("set_router_bias: " + std::to_string(bias.size()) + " values for " +
                         std::to_string(cfg_.moga.groups) + " groups");
  Tensor h = Tensor::empty({int64_t(bias.size())});
  std::copy(bias.begin(), bias.end(), h.f32());
  blocks_[size_t(block)].router_b = ops_.upload(h);
}

// ---- text conditioning (§1.4 step 3, §1.7) -----------------------------------------------------

// Zero-pads each caption to text_len rows, stacks the shots and runs text_embedding:
// c = W2 . GELU_tanh(W1 . ctx + b1) + b2, [shots * text_len, dim].
Tensor WanDit::embed_padded(const std::vector<Tensor>& ctx_per_shot) {
  if (ctx_per_shot.empty()) throw input_error("DiT: no caption context given");
  const int64_t L = cfg_.text_len, td = cfg_.text_dim;
  Tensor host = Tensor::zeros({int64_t(ctx_per_shot.size()) * L, td});
  for (size_t s = 0; s < ctx_per_shot.size(); ++s) {
    Tensor c = ctx_per_shot[s];
    if (!c.defined()) throw input_error("DiT: caption context " + std::to_string(s) + " is empty");
    if (!c.device().is_cpu()) c = ops_.download(c);
    if (c.dtype() != DType::F32) c = c.to(DType::F32);
    if (c.ndim() == 3 && c.dim(0) == 1) c = c.reshape({c.dim(1), c.dim(2)});
    if (c.ndim() != 2 || c.dim(1) != td)
      throw input_error("DiT: caption context " + std::to_string(s) + " is " + c.str() +
                        ", expected [L, " + std::to_string(td) + "] (text encoder width)");
    if (c.dim(0) > L)
      throw input_error("DiT: caption context " + std::to_string(s) + " has " +
                        std::to_string(c.dim(0)) + " rows, more than text_len " +
                        std::to_string(L));
    std::copy(c.f32(), c.f32() + c.numel(), host.f32() + int64_t(s) * L * td);
  }
  Tensor h = ops_.gelu_tanh(ops_.linear(ops_.upload(host), text0_w, &text0_b));
  return ops_.linear(h, text2_w, &text2_b);
}

Tensor WanDit::embed_text(const Tensor& ctx) { return embed_padded({ctx}); }

WanDit::TextCache WanDit::cache_from_embedded(const Tensor& c, int shots) {
  const int64_t rows = int64_t(shots) * cfg_.text_len, H = cfg_.num_heads, hd = cfg_.head_dim();
  if (shots <= 0 || c.numel() != rows * cfg_.dim)
    throw input_error("DiT: embedded text " + c.str() + " does not hold " +
                      std::to_string(shots) + " x " + std::to_string(cfg_.text_len) + " rows");
  const Tensor c2 = c.reshape({rows, int64_t(cfg_.dim)});
  const float eps = static_cast<float>(cfg_.eps);
  TextCache tc;
  tc.shots = shots;
  tc.rows_per_shot = cfg_.text_len;
  for (const Block& b : blocks_) {
    // K = RMSNorm_k(W_k c + b_k), V = W_v c + b_v: independent of t and x.
    tc.k.push_back(ops_.rms_norm(ops_.linear(c2, b.ck_w, &b.ck_b), b.c_norm_k, eps)
                       .reshape({rows, H, hd}));
    tc.v.push_back(ops_.linear(c2, b.cv_w, &b.cv_b).reshape({rows, H, hd}));
  }
  return tc;
}

WanDit::TextCache WanDit::prepare_context(const std::vector<Tensor>& ctx_per_shot) {
  return cache_from_embedded(embed_padded(ctx_per_shot), static_cast<int>(ctx_per_shot.size()));
}

// ---- token layout ---------------------------------------------------------------------------

// Token (f, y, x) takes x[c, f*pt+i, y*ph+a, x*pw+b] at feature c*P + (i*ph+a)*pw + b
// (the Conv3d weight [d, C, pt, ph, pw] viewed as [d, C*P]).
// 3D RoPE (§1.5): c = hd/2 pairs split [c - 2(c/3), c/3, c/3] over (frame, row, column);
// axis with p pairs rotates pair i by pos * 10000^(-2i / 2p). Angles and cos/sin in double.
void WanDit::rope_tables(const Grid& g, Tensor& cos_t, Tensor& sin_t) {
  if (rope_key_[0] == g.F && rope_key_[1] == g.H && rope_key_[2] == g.W) {
    cos_t = rope_cos_;
    sin_t = rope_sin_;
    return;
  }
  const int64_t c = cfg_.head_dim() / 2;
  const int64_t pairs[3] = {c - 2 * (c / 3), c / 3, c / 3};
  std::vector<double> omega;
  std::vector<int> axis;
  for (int ax = 0; ax < 3; ++ax)
    for (int64_t i = 0; i < pairs[ax]; ++i) {
      omega.push_back(std::pow(10000.0, -2.0 * double(i) / double(2 * pairs[ax])));
      axis.push_back(ax);
    }
  Tensor ch = Tensor::empty({g.N, c}), sh = Tensor::empty({g.N, c});
  for (int64_t f = 0; f < g.F; ++f)
    for (int64_t y = 0; y < g.H; ++y)
      for (int64_t x = 0; x < g.W; ++x) {
        const int64_t n = (f * g.H + y) * g.W + x;
        const double pos[3] = {double(f), double(y), double(x)};
        for (int64_t j = 0; j < c; ++j) {
          const double phi = pos[axis[j]] * omega[j];
          ch.f32()[n * c + j] = static_cast<float>(std::cos(phi));
          sh.f32()[n * c + j] = static_cast<float>(std::sin(phi));
        }
      }
  rope_cos_ = ops_.upload(ch);
  rope_sin_ = ops_.upload(sh);
  rope_key_[0] = g.F;
  rope_key_[1] = g.H;
  rope_key_[2] = g.W;
  cos_t = rope_cos_;
  sin_t = rope_sin_;
}

// MoGA window branch (moga-spec step 4): per shot, chunks of temporal_group frames x
// spatial windows; keys add kv_extend frames of the neighbouring shot at shot boundaries.
WanDit::WindowPlan WanDit::window_plan(const Grid& g) const {
  const int wh = cfg_.moga.windows[0], ww = cfg_.moga.windows[1];
  const int64_t tg = cfg_.moga.temporal_group, ext = cfg_.moga.kv_extend;
  std::vector<int64_t> rb(wh + 1), cb(ww + 1);
  for (int i = 0; i <= wh; ++i) rb[i] = (int64_t(i) * g.H) / wh;
  for (int j = 0; j <= ww; ++j) cb[j] = (int64_t(j) * g.W) / ww;
  const int S = static_cast<int>(g.shot_f0.size()) - 1;
  WindowPlan p;
  p.cu_q.push_back(0);
  p.cu_kv.push_back(0);
  auto add_tokens = [&](std::vector<int64_t>& dst, int64_t f0, int64_t f1, int i, int j) {
    for (int64_t f = f0; f < f1; ++f)
      for (int64_t y = rb[i]; y < rb[i + 1]; ++y)
        for (int64_t x = cb[j]; x < cb[j + 1]; ++x) dst.push_back((f * g.H + y) * g.W + x);
  };
  for (int s = 0; s < S; ++s) {
    const int64_t fs0 = g.shot_f0[s], fs1 = g.shot_f0[s + 1];
    const int64_t chunks = (fs1 - fs0 + tg - 1) / tg;
    for (int64_t ck = 0; ck < chunks; ++ck) {
      const int64_t cf0 = fs0 + ck * tg, cf1 = std::min(cf0 + tg, fs1);
      // Key/value frame ranges: [previous shot's tail] + own chunk + [next shot's head].
      int64_t pf0 = cf0, nf1 = cf1;
      if (ck == 0 && s > 0) pf0 = std::max(g.shot_f0[s - 1], fs0 - ext);
      if (ck == chunks - 1 && s < S - 1) nf1 = std::min(g.shot_f0[s + 2], fs1 + ext);
      for (int i = 0; i < wh; ++i)
        for (int j = 0; j < ww; ++j) {
          if (rb[i + 1] == rb[i] || cb[j + 1] == cb[j]) continue;  // empty window
          add_tokens(p.q_idx, cf0, cf1, i, j);
          add_tokens(p.kv_idx, pf0, cf0, i, j);
          add_tokens(p.kv_idx, cf0, cf1, i, j);
          add_tokens(p.kv_idx, cf1, nf1, i, j);
          p.cu_q.push_back(static_cast<int64_t>(p.q_idx.size()));
          p.cu_kv.push_back(static_cast<int64_t>(p.kv_idx.size()));
        }
    }
  }
  MG_CHECK(static_cast<int64_t>(p.q_idx.size()) == g.N, "window groups must cover every token");
  return p;
}

// ---- attention ------------------------------------------------------------------------------

// 4 nq nk dim: the two matrix products of attention over all heads.
void WanDit::count_attention(const CuSeqlens& cu_q, const CuSeqlens& cu_kv) {
  for (size_t i = 0; i + 1 < cu_q.size(); ++i)
    attention_flops_ += 4.0 * double(cu_q[i + 1] - cu_q[i]) * double(cu_kv[i + 1] - cu_kv[i]) *
                        double(cfg_.dim);
}

Tensor WanDit::self_attention_dense(const Tensor& q, const Tensor& k, const Tensor& v) {
  count_attention({0, q.dim(0)}, {0, k.dim(0)});
  Section s(profile_, "self-attention");
  return ops_.attention(q, k, v, 1.0f / std::sqrt(float(cfg_.head_dim())));
}

// Router (moga-spec step 2): logits = x_in W_r^T (+ b_r) in float32; p = softmax(logits);
// g = argmax (ties: lowest index); p_win = p[g]; tokens stably sorted by group. The order
// and weights stay on the backend; per-token ids come to the host only when asked.
Ops::GroupRouting WanDit::route(const Block& b, const Tensor& x_in, bool host_copy) const {
  const Tensor logits =
      ops_.linear(x_in, b.router_w, b.router_b.defined() ? &b.router_b : nullptr);
  return ops_.route_groups(logits, host_copy);
}

// MoGA self-attention (moga-spec): o = (o_grp + o_win + o_frm) / 3 over the same q, k, v.
Tensor WanDit::self_attention_moga(int bi, Ops::GroupRouting& r, const Tensor& q, const Tensor& k,
                                   const Tensor& v, const Grid& g, const WindowPlan& wp) {
  const int64_t N = g.N, H = cfg_.num_heads, hd = cfg_.head_dim(), d = cfg_.dim;
  const float scale = 1.0f / std::sqrt(float(hd));
  const Tensor q2 = q.reshape({N, d}), k2 = k.reshape({N, d}), v2 = v.reshape({N, d});
  auto heads = [&](const Tensor& t) { return t.reshape({t.dim(0), H, hd}); };

  // Group branch: tokens stably sorted by group id, one packed attention over the groups,
  // scattered back weighted by p_win (the order never leaves the backend).
  const bool keep_ids = bi == 0;  // layer0_routing(): per-token ids for verify and tests
  CuSeqlens cu{0};  // non-empty groups only
  for (int64_t size : r.sizes)
    if (size > 0) cu.push_back(cu.back() + size);
  // The branches' sum: the group branch writes every row (its order is a permutation of
  // the tokens), the window branch adds to it, the frame branch is added in the mean.
  Tensor acc;
  // Each branch: gather (permute), attention, scatter back (permute); the gathered copies
  // and the branch output are released before the next branch.
  auto branch = [&](const char* part, const Tensor& qi, const Tensor& kvi, const CuSeqlens& cq,
                    const CuSeqlens& ck, const Tensor* w) {
    Tensor qg, kg, vg, o;
    {
      Section s(profile_, "moga permute");
      qg = heads(ops_.gather_rows(q2, qi));
      kg = heads(ops_.gather_rows(k2, kvi));
      vg = heads(ops_.gather_rows(v2, kvi));
    }
    {
      Section s(profile_, part);
      o = ops_.attention_varlen(qg, kg, vg, cq, ck, scale);
    }
    count_attention(cq, ck);
    qg = kg = vg = Tensor();
    Section s(profile_, "moga permute");
    if (acc.defined())
      ops_.scatter_add_rows_(acc, o.reshape({N, d}), qi, w);
    else
      acc = ops_.unpermute_rows(o.reshape({N, d}), qi, w);
  };
  branch("self-attention: groups", r.order, r.order, cu, cu, &r.weight);

  // Window branch: queries of each window group, keys/values gathered separately (index
  // lists uploaded once per forward).
  branch("self-attention: windows", wp.q_dev, wp.kv_dev, wp.cu_q, wp.cu_kv, nullptr);

  // Frame branch: every latent frame is a contiguous segment already.
  CuSeqlens cu_f;
  for (int64_t f = 0; f <= g.F; ++f) cu_f.push_back(f * g.H * g.W);
  Tensor o_frm;
  {
    Section s(profile_, "self-attention: frames");
    o_frm = ops_.attention_varlen(q, k, v, cu_f, cu_f, scale);
  }
  count_attention(cu_f, cu_f);

  MogaRouting mr;
  mr.group_sizes = r.sizes;
  if (keep_ids) {
    mr.gid = std::move(r.gid);
    mr.p_win = std::move(r.p_win);
    layer0_routing_ = mr;
  }
  group_sizes_[bi] = mr.group_sizes;
  if (routing_cb_) routing_cb_(bi, mr);
  // the mean, in the form the output projection reads (bf16 on CUDA, written once)
  return ops_.add_scale_gemm_input(acc, o_frm.reshape({N, d}), 1.0f / 3.0f).reshape({N, H, hd});
}

// Cross-attention (§1.4 step 7, moga-spec "Multi-shot"): norm3 (affine LN), q RMS-normed;
// the tokens of shot s attend only to caption s's text_len rows; no mask, no gate.
void WanDit::cross_attention_(const Block& b, int bi, Tensor& x, const TextCache& text,
                              const Grid& g) {
  const int64_t N = g.N, H = cfg_.num_heads, hd = cfg_.head_dim();
  const float eps = static_cast<float>(cfg_.eps);
  const float scale = 1.0f / std::sqrt(float(hd));
  // the norm's output and q's GEMM product only feed the GEMM and the q norm: bf16 on CUDA
  Tensor xn = ops_.layer_norm_gemm(x, &b.norm3_w, &b.norm3_b, eps);
  Tensor q = ops_.rms_norm_compact(ops_.linear_compact(xn, b.cq_w, &b.cq_b), b.c_norm_q, eps, H);
  Tensor o;
  const int S = static_cast<int>(g.shot_f0.size()) - 1;
  if (text.shots == 1) {
    o = ops_.attention(q, text.k[bi], text.v[bi], scale);
    count_attention({0, N}, {0, text.k[bi].dim(0)});
  } else {
    CuSeqlens cu_q, cu_kv;
    for (int s = 0; s <= S; ++s) {
      cu_q.push_back(g.shot_f0[s] * g.H * g.W);
      cu_kv.push_back(int64_t(s) * text.rows_per_shot);
    }
    o = ops_.attention_varlen(q, text.k[bi], text.v[bi], cu_q, cu_kv, scale);
    count_attention(cu_q, cu_kv);
  }
  xn = q = Tensor();
  ops_.linear_residual_(x, o.reshape({N, int64_t(cfg_.dim)}), b.co_w, &b.co_b, nullptr);
}

// ---- forward (§1.4) ---------------------------------------------------------------------------

Tensor WanDit::forward(const Tensor& x_in, double t, const TextCache& text,
                       const std::vector<int>& shots_in, AttentionMode mode) {
  // Inputs.
  if (!x_in.defined()) throw input_error("DiT forward: no latent given");
  // a latent already on the backend stays there (patchify reads it as it is)
  Tensor x = x_in;
  if (x.device().is_cpu() && x.dtype() != DType::F32) x = x.to(DType::F32);
  const int pt = cfg_.patch[0], ph = cfg_.patch[1], pw = cfg_.patch[2];
  if (x.ndim() != 4 || x.dim(0) != cfg_.in_dim || x.dim(1) % pt || x.dim(2) % ph ||
      x.dim(3) % pw || x.numel() == 0)
    throw input_error("DiT forward: latent " + x.str() + " must be [" +
                      std::to_string(cfg_.in_dim) + ", T, h, w] with T, h, w multiples of the "
                      "patch size");
  Grid g;
  g.F = x.dim(1) / pt;
  g.H = x.dim(2) / ph;
  g.W = x.dim(3) / pw;
  g.N = g.F * g.H * g.W;
  std::vector<int> shots = shots_in.empty() ? std::vector<int>{int(x.dim(1))} : shots_in;
  g.shot_f0.push_back(0);
  for (int s : shots) {
    if (s <= 0 || s % pt)
      throw input_error("DiT forward: every shot needs a positive number of latent frames "
                        "(a multiple of the temporal patch size)");
    g.shot_f0.push_back(g.shot_f0.back() + s / pt);
  }
  if (g.shot_f0.back() != g.F)
    throw input_error("DiT forward: the shots cover " + std::to_string(g.shot_f0.back() * pt) +
                      " latent frames, the latent has " + std::to_string(x.dim(1)));
  if (static_cast<int>(text.k.size()) != cfg_.num_layers || text.rows_per_shot != cfg_.text_len)
    throw input_error("DiT forward: the text cache was not prepared by this model");
  if (text.shots != 1 && text.shots != static_cast<int>(shots.size()))
    throw input_error("DiT forward: " + std::to_string(text.shots) + " captions for " +
                      std::to_string(shots.size()) + " shots (give one per shot, or one for all)");
  if (mode == AttentionMode::Moga && !has_routers_) throw weights_error(kRouterMissing);

  const int64_t N = g.N, d = cfg_.dim, H = cfg_.num_heads, hd = cfg_.head_dim();
  const float eps = static_cast<float>(cfg_.eps);

  // Time embedding (step 2): sinusoid in double, cos first then sin, w_j = 10000^(-j/half).
  const int half = cfg_.freq_dim / 2;
  Tensor sinus = Tensor::empty({1, int64_t(cfg_.freq_dim)});
  for (int j = 0; j < half; ++j) {
    const double a = t * std::pow(10000.0, -double(j) / double(half));
    sinus.f32()[j] = static_cast<float>(std::cos(a));
    sinus.f32()[half + j] = static_cast<float>(std::sin(a));
  }
  Tensor e = ops_.linear(ops_.silu(ops_.linear(ops_.upload(sinus), time0_w, &time0_b)), time2_w,
                         &time2_b);                                       // [1, d]
  Tensor e0 = ops_.linear(ops_.silu(e), tproj_w, &tproj_b);               // [1, 6d]

  // Patchify (step 1) and RoPE tables.
  Tensor xs = ops_.linear(ops_.patchify(x.device().is_cpu() ? ops_.upload(x) : x, pt, ph, pw), patch_w,
                          &patch_b);  // [N, d]
  Tensor rcos, rsin;
  rope_tables(g, rcos, rsin);
  WindowPlan wp;
  if (mode == AttentionMode::Moga) {
    wp = window_plan(g);
    Section s(profile_, "moga permute");
    wp.q_dev = ops_.index(wp.q_idx);
    wp.kv_dev = ops_.index(wp.kv_idx);
    group_sizes_.assign(cfg_.num_layers, {});
  }

  attention_flops_ = 0;

  // Blocks (step 4).
  for (int bi = 0; bi < cfg_.num_layers; ++bi) {
    const Block& b = blocks_[bi];
    // m = modulation + e0 -> shift1, scale1, gate1, shift2, scale2, gate2.
    Tensor m = ops_.add(b.modulation, e0.reshape({6, d})).reshape({6, d});
    auto mod = [&](int i) { return m.rows(i, i + 1); };

    // Self-attention.
    // At long lengths every [N, dim] buffer counts (563,160 tokens x 5120 x 4 bytes = 11.5
    // GB). The router reads the float32 modulated input (moga-spec step 2); then it goes,
    // and q, k, v are made one at a time from its GEMM form (bf16 on CUDA, converted once).
    // They wait for attention in the backend's compact form (Ops::compact: bf16 on CUDA);
    // q and k get RMSNorm over the whole dim and RoPE per head on the way (one pass on CUDA).
    Ops::GroupRouting routing;
    Tensor ub;
    if (mode == AttentionMode::Moga) {
      Tensor u = ops_.layer_norm_modulate(xs, mod(0), mod(1), eps);
      {
        Section s(profile_, "moga routing");
        routing = route(b, u, bi == 0);
      }
      ub = ops_.gemm_input(u);
    } else {
      Section s(profile_, "norm and modulation");
      ub = ops_.layer_norm_modulate_gemm(xs, mod(0), mod(1), eps);
    }
    // the GEMM products only feed attention (v) and the fused norm (q, k): bf16 on CUDA
    Tensor q, k, v;
    {
      Section s(profile_, "q k v projections");
      v = ops_.compact(ops_.linear_compact(ub, b.sv_w, &b.sv_b).reshape({N, H, hd}));
      q = ops_.linear_compact(ub, b.sq_w, &b.sq_b);
      k = ops_.linear_compact(ub, b.sk_w, &b.sk_b);
    }
    {
      Section s(profile_, "q k RMSNorm and RoPE");
      q = ops_.rms_norm_rope(q, b.s_norm_q, eps, H, rcos, rsin);
      k = ops_.rms_norm_rope(k, b.s_norm_k, eps, H, rcos, rsin);
    }
    ub = Tensor();
    Tensor o = mode == AttentionMode::Moga ? self_attention_moga(bi, routing, q, k, v, g, wp)
                                           : self_attention_dense(q, k, v);
    q = k = v = Tensor();
    const Tensor gate1 = mod(2), gate2 = mod(5);
    {
      Section s(profile_, "output projection and residual");
      ops_.linear_residual_(xs, o.reshape({N, d}), b.so_w, &b.so_b, &gate1);  // xs += gate1 (o W + b)
    }
    o = Tensor();

    // Cross-attention (no modulation, no gate): adds its output projection to xs.
    {
      Section s(profile_, "cross-attention");
      cross_attention_(b, bi, xs, text, g);
    }

    // FFN, tiled over tokens so the hidden [tile, ffn_dim] stays small at long lengths.
    const int64_t tile = 16384;
    for (int64_t r0 = 0; r0 < N; r0 += tile) {
      Tensor xr = N <= tile ? xs : xs.rows(r0, std::min(N, r0 + tile));
      Tensor xn, h;
      {
        Section s(profile_, "norm and modulation");
        xn = ops_.layer_norm_modulate_gemm(xr, mod(3), mod(4), eps);
      }
      {
        // the hidden [tile, ffn_dim] never exists in float32 on CUDA (Ops::linear_gelu)
        Section s(profile_, "FFN up (GELU)");
        h = ops_.linear_gelu(xn, b.ffn1_w, &b.ffn1_b);
      }
      xn = Tensor();
      Section s(profile_, "FFN down and residual");
      ops_.linear_residual_(xr, h, b.ffn2_w, &b.ffn2_b, &gate2);  // xr += gate2 (h W + b)
    }
  }

  // Head (step 5): head.modulation + e (not e0) -> shift, scale; linear in float32.
  Tensor hm = ops_.add_row(head_mod, e);  // [2, d]
  Tensor y = ops_.linear(ops_.layer_norm_modulate(xs, hm.rows(0, 1), hm.rows(1, 2), eps), head_w,
                         &head_b);
  return ops_.download(ops_.unpatchify(y, cfg_.out_dim, g.F, g.H, g.W, pt, ph, pw));  // step 6
}

// ---- routing statistics ------------------------------------------------------------------------

std::string WanDit::routing_report() const {
  std::ostringstream o;
  if (group_sizes_.empty()) return "MoGA routing: no MoGA forward has run yet";
  int64_t N = 0;
  for (int64_t s : group_sizes_[0]) N += s;
  const int M = cfg_.moga.groups;
  o << "MoGA routing (" << N << " tokens, M = " << M << " groups; tokens per group, block by block):";
  for (size_t bi = 0; bi < group_sizes_.size(); ++bi) {
    const auto& gs = group_sizes_[bi];
    if (gs.empty()) continue;
    o << "\n  block " << bi << ": [";
    int64_t empty = 0;
    for (size_t i = 0; i < gs.size(); ++i) {
      o << (i ? ", " : "") << gs[i];
      empty += gs[i] == 0;
    }
    o << "]";
    if (N > 0 && M > 0) {
      o.precision(2);
      const int64_t smallest = *std::min_element(gs.begin(), gs.end());
      o << std::fixed << "  largest " << largest_group_share(gs) << "x fair share, smallest "
        << double(smallest) * double(gs.size()) / double(N) << "x";
      o.unsetf(std::ios::fixed);
    }
    if (empty) o << ", " << empty << " empty";
  }
  return o.str();
}

// ---- routing over many forwards -----------------------------------------------------------------

double largest_group_share(const std::vector<int64_t>& sizes) {
  int64_t n = 0, mx = 0;
  for (int64_t v : sizes) n += v, mx = std::max(mx, v);
  return n > 0 ? double(mx) * double(sizes.size()) / double(n) : 0.0;
}

void RoutingTally::add(const std::vector<std::vector<int64_t>>& group_sizes, int step) {
  if (blocks_.size() < group_sizes.size()) blocks_.resize(group_sizes.size());
  bool any = false;
  for (size_t bi = 0; bi < group_sizes.size(); ++bi) {
    const double share = largest_group_share(group_sizes[bi]);
    if (share <= 0) continue;  // no groups or no tokens in this block
    Block& b = blocks_[bi];
    if (share > b.worst) b.worst = share, b.worst_step = step;
    b.sum += share;
    ++b.count;
    any = true;
  }
  forwards_ += any;
}

double RoutingTally::worst() const {
  double w = 0;
  for (const Block& b : blocks_) w = std::max(w, b.worst);
  return w;
}

std::string RoutingTally::report() const {
  if (forwards_ == 0) return "";
  std::ostringstream o;
  o << "MoGA routing over the whole sampling (" << forwards_
    << " forwards; the largest group against the fair share N/M, per block):";
  o.precision(2);
  o << std::fixed;
  for (size_t bi = 0; bi < blocks_.size(); ++bi) {
    const Block& b = blocks_[bi];
    if (b.count == 0) continue;
    o << "\n  block " << bi << ": largest " << b.worst << "x fair share at worst (step "
      << b.worst_step << "), " << b.sum / b.count << "x on average";
  }
  return o.str();
}

}  // namespace mg
