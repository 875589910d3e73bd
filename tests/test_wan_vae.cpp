// The Wan2.1 VAE decoder: golden decodes (both weight namings), frame counts, streaming
// equals decode_all, causality, bounded cache memory, config parsing and inference, and the
// weight-check error paths.
#include "test_util.h"
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>

#include "mogagen/checkpoint.h"
#include "mogagen/safetensors.h"
#include "models/wan_vae/wan_vae.h"
#include "pipeline/json_locate.h"
#include "pipeline/verify.h"

using namespace mg;
namespace fs = std::filesystem;

namespace {

std::string golden_vae(const std::string& set) {
  return testutil::golden_dir() + "/" + set + "/vae";
}

bool have_golden(const std::string& set) {
  std::error_code ec;
  return fs::is_regular_file(golden_vae(set) + "/case.safetensors", ec);
}

#define SKIP_WITHOUT_GOLDEN(set)                                                        \
  if (!have_golden(set))                                                                \
  GTEST_SKIP() << "golden set " << golden_vae(set)                                      \
               << " is absent (it ships with the project workspace, not with a clone)"

using testutil::randn;

// Random decoder weights for `c` (Wan names), plus an encoder tensor so that the file looks
// like a whole VAE; `skip` leaves tensors out.
std::string write_random_vae(const fs::path& dir, const WanVaeConfig& c,
                             const std::vector<std::string>& skip = {}, uint32_t seed = 11) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::map<std::string, Tensor> ts;
  for (const auto& w : c.expected_weights()) {
    if (std::find(skip.begin(), skip.end(), w.name) != skip.end()) continue;
    Tensor t = Tensor::empty(w.shape);
    const bool gamma = w.name.find("gamma") != std::string::npos;
    const bool bias = w.name.size() > 5 && w.name.compare(w.name.size() - 5, 5, ".bias") == 0;
    const float fan_in = float(shape_numel(w.shape) / std::max<int64_t>(1, w.shape[0]));
    const float scale = gamma ? 0.1f : bias ? 0.05f : 1.0f / std::sqrt(fan_in);
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = (gamma ? 1.0f : 0.0f) + scale * nd(rng);
    ts[w.name] = t;
  }
  ts["encoder.conv1.weight"] = randn({int64_t(c.base_dim), 3, 3, 3, 3}, seed + 1, 0.1f);
  ts["encoder.conv1.bias"] = Tensor::zeros({int64_t(c.base_dim)});
  const std::string file = (dir / "vae.safetensors").string();
  write_safetensors(file, ts);
  return file;
}

WanVaeConfig tiny_config() {
  WanVaeConfig c;
  c.base_dim = 4;
  return c;  // dim_mult {1,2,4,4}, num_res_blocks 2, temperal_downsample {F,T,T}
}

// Frames [t0, t1) of a host [C, T, H, W] tensor.
Tensor host_slice_time(const Tensor& x, int64_t t0, int64_t t1) {
  const int64_t C = x.dim(0), T = x.dim(1), HW = x.dim(2) * x.dim(3), n = t1 - t0;
  Tensor y = Tensor::empty({C, n, x.dim(2), x.dim(3)});
  for (int64_t c = 0; c < C; ++c)
    std::copy(x.f32() + (c * T + t0) * HW, x.f32() + (c * T + t1) * HW, y.f32() + c * n * HW);
  return y;
}

ExitCode code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  return ExitCode::Ok;
}

struct GoldenCase {
  WanVaeConfig cfg;
  Tensor z, video_unclamped, video;
};

GoldenCase load_case(const std::string& set) {
  GoldenCase g;
  const std::string dir = golden_vae(set);
  g.cfg = WanVaeConfig::from_json(parse_json_file(dir + "/config.json").value);
  const TensorSource cs = TensorSource::open(dir + "/case.safetensors");
  const Tensor mean = cs.load_f32("latents_mean"), sd = cs.load_f32("latents_std");
  g.cfg.latents_mean.assign(mean.f32(), mean.f32() + mean.numel());
  g.cfg.latents_std.assign(sd.f32(), sd.f32() + sd.numel());
  g.z = cs.load_f32("z");
  g.video_unclamped = cs.load_f32("video_unclamped");
  g.video = cs.load_f32("video");
  return g;
}

void check_golden(const std::string& set) {
  const GoldenCase g = load_case(set);
  auto ops = make_cpu_ops();
  for (const char* file : {"weights_wan.safetensors", "weights_diffusers.safetensors"}) {
    SCOPED_TRACE(set + "/" + file);
    const WeightMap m = WeightMap::open(golden_vae(set) + "/" + file, Component::VAE);
    WanVaeDecoder dec(g.cfg, m, *ops);
    const Tensor raw = dec.decode_all(g.z, /*clamp=*/false);
    const int64_t T = g.z.dim(1);
    ASSERT_EQ(raw.shape(), (Shape{3, 1 + 4 * (T - 1), 8 * g.z.dim(2), 8 * g.z.dim(3)}));
    ASSERT_EQ(raw.shape(), g.video_unclamped.shape());
    const double e_raw = rel_error(raw, g.video_unclamped);
    const Tensor clamped = dec.decode_all(g.z, /*clamp=*/true);
    const double e = rel_error(clamped, g.video);
    std::printf("[ vae golden ] %s %s: video_unclamped %.3e, video %.3e\n", set.c_str(), file, e_raw, e);
    EXPECT_LE(e_raw, 1e-4);
    EXPECT_LE(e, 1e-4);
    float lo = 0, hi = 0;
    for (int64_t i = 0; i < clamped.numel(); ++i) {
      lo = std::min(lo, clamped.f32()[i]);
      hi = std::max(hi, clamped.f32()[i]);
    }
    EXPECT_GE(lo, -1.0f);
    EXPECT_LE(hi, 1.0f);
    EXPECT_EQ(dec.max_cached_frames(), 2);
    EXPECT_EQ(dec.cache_slots(), 32);
  }
}

}  // namespace

// ---- golden --------------------------------------------------------------------------------

TEST(WanVaeGolden, WanA) {
  SKIP_WITHOUT_GOLDEN("wan-a");
  check_golden("wan-a");
}

TEST(WanVaeGolden, WanC) {
  SKIP_WITHOUT_GOLDEN("wan-c");
  check_golden("wan-c");
}

TEST(WanVaeGolden, VerifyVaeReportsBothNamings) {
  SKIP_WITHOUT_GOLDEN("wan-a");
  auto ops = make_cpu_ops();
  // The set folder resolves to its vae/ subfolder.
  const auto lines = verify_vae(golden_vae("wan-a") + "/..", *ops);
  std::vector<std::string> names;
  for (const auto& l : lines) {
    names.push_back(l.name);
    EXPECT_LE(l.rel_err, 1e-4) << l.name;
  }
  EXPECT_EQ(names, (std::vector<std::string>{"vae[wan] video_unclamped", "vae[wan] video",
                                             "vae[diffusers] video_unclamped", "vae[diffusers] video"}));
}

TEST(WanVaeGolden, InferMatchesConfigJson) {
  for (const std::string set : {"wan-a", "wan-c"}) {
    if (!have_golden(set)) GTEST_SKIP() << "golden set " << golden_vae(set) << " is absent";
    const WanVaeConfig want = WanVaeConfig::from_json(parse_json_file(golden_vae(set) + "/config.json").value);
    for (const char* file : {"weights_wan.safetensors", "weights_diffusers.safetensors"}) {
      SCOPED_TRACE(set + "/" + file);
      const WanVaeConfig got = WanVaeConfig::infer(WeightMap::open(golden_vae(set) + "/" + file, Component::VAE));
      EXPECT_EQ(got.base_dim, want.base_dim);
      EXPECT_EQ(got.z_dim, want.z_dim);
      EXPECT_EQ(got.dim_mult, want.dim_mult);
      EXPECT_EQ(got.num_res_blocks, want.num_res_blocks);
      EXPECT_EQ(got.temperal_downsample, want.temperal_downsample);
    }
  }
}

// ---- streaming, causality, memory -----------------------------------------------------------

TEST(WanVae, StreamingSinkEqualsDecodeAll) {
  testutil::TempDir tmp("vae-stream");
  const WanVaeConfig c = tiny_config();
  const WeightMap m = WeightMap::open(write_random_vae(tmp.path, c), Component::VAE);
  auto ops = make_cpu_ops();
  WanVaeDecoder dec(c, m, *ops);
  const Tensor z = randn({16, 4, 3, 5}, 3);
  std::vector<Tensor> chunks;
  dec.decode(z, [&](const Tensor& f) { chunks.push_back(f.clone()); }, /*clamp=*/true);
  ASSERT_EQ(chunks.size(), 4u);
  const Tensor all = dec.decode_all(z, true);
  ASSERT_EQ(all.shape(), (Shape{3, 13, 24, 40}));
  EXPECT_EQ(dec.output_frames(4), 13);
  int64_t t0 = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i].shape(), (Shape{3, i == 0 ? 1 : 4, 24, 40})) << "chunk " << i;
    const Tensor ref = host_slice_time(all, t0, t0 + chunks[i].dim(1));
    EXPECT_EQ(rel_error(chunks[i], ref), 0.0) << "chunk " << i;
    t0 += chunks[i].dim(1);
  }
  EXPECT_EQ(t0, 13);
}

// The decoder is causal: the first frames of a longer latent decode exactly like the
// shorter latent on its own.
TEST(WanVae, CausalPrefix) {
  testutil::TempDir tmp("vae-causal");
  const WanVaeConfig c = tiny_config();
  const WeightMap m = WeightMap::open(write_random_vae(tmp.path, c), Component::VAE);
  auto ops = make_cpu_ops();
  WanVaeDecoder dec(c, m, *ops);
  const Tensor z = randn({16, 3, 2, 3}, 5);
  const Tensor full = dec.decode_all(z, false);
  ASSERT_EQ(full.dim(1), 9);
  for (int64_t T : {1, 2}) {
    const Tensor part = dec.decode_all(host_slice_time(z, 0, T), false);
    ASSERT_EQ(part.dim(1), 1 + 4 * (T - 1));
    EXPECT_EQ(rel_error(part, host_slice_time(full, 0, part.dim(1))), 0.0) << "T=" << T;
  }
  // Later latent frames do change later output frames (the cache carries context).
  Tensor z2 = z.clone();
  const int64_t HW = z.dim(2) * z.dim(3);
  for (int64_t ch = 0; ch < 16; ++ch) z2.f32()[(ch * 3 + 1) * HW] += 1.0f;  // perturb frame 1
  const Tensor pert = dec.decode_all(z2, false);
  EXPECT_EQ(rel_error(host_slice_time(pert, 0, 1), host_slice_time(full, 0, 1)), 0.0);
  EXPECT_GT(rel_error(host_slice_time(pert, 5, 9), host_slice_time(full, 5, 9)), 1e-6);
}

// The cache never holds more than two frames per slot, and its size does not grow with
// the number of latent frames.
TEST(WanVae, CacheMemoryIsBounded) {
  testutil::TempDir tmp("vae-mem");
  const WanVaeConfig c = tiny_config();
  const WeightMap m = WeightMap::open(write_random_vae(tmp.path, c), Component::VAE);
  auto ops = make_cpu_ops();
  WanVaeDecoder dec(c, m, *ops);
  size_t bytes3 = 0;
  for (int64_t T : {3, 7}) {
    int64_t frames = 0, calls = 0;
    dec.decode(randn({16, T, 2, 2}, 9), [&](const Tensor& f) {
      frames += f.dim(1);
      ++calls;
    });
    EXPECT_EQ(calls, T);
    EXPECT_EQ(frames, 1 + 4 * (T - 1));
    EXPECT_EQ(dec.max_cached_frames(), 2);
    EXPECT_EQ(dec.cache_slots(), 32);  // 1 + 4 + 12*2 + 2 + 1, as in wan-notes §3.4
    if (T == 3) bytes3 = dec.max_cache_bytes();
  }
  EXPECT_GT(bytes3, 0u);
  EXPECT_EQ(dec.max_cache_bytes(), bytes3);
}

// A non-default shape: two up stages, one temporal, one residual block per stage.
TEST(WanVae, OtherConfigurationDecodesAndInfers) {
  testutil::TempDir tmp("vae-other");
  WanVaeConfig c;
  c.base_dim = 6;
  c.dim_mult = {1, 2, 2};
  c.num_res_blocks = 1;
  c.temperal_downsample = {true, false};  // decoder: temporal upsample in the last up stage
  const WeightMap m = WeightMap::open(write_random_vae(tmp.path, c), Component::VAE);
  const WanVaeConfig got = WanVaeConfig::infer(m);
  EXPECT_EQ(got.base_dim, 6);
  EXPECT_EQ(got.dim_mult, c.dim_mult);
  EXPECT_EQ(got.num_res_blocks, 1);
  EXPECT_EQ(got.temperal_downsample, c.temperal_downsample);
  auto ops = make_cpu_ops();
  WanVaeDecoder dec(got, m, *ops);
  const Tensor out = dec.decode_all(randn({16, 3, 3, 2}, 1), true);
  EXPECT_EQ(out.shape(), (Shape{3, 1 + 2 * 2, 12, 8}));
  EXPECT_EQ(dec.max_cached_frames(), 2);
  EXPECT_EQ(dec.cache_slots(), 1 + 4 + 6 * 2 + 1 + 1);
  for (int64_t i = 0; i < out.numel(); ++i) ASSERT_TRUE(std::isfinite(out.f32()[i]));
}

// ---- config ---------------------------------------------------------------------------------

TEST(WanVaeConfig, DefaultsAreWan21) {
  const WanVaeConfig c;
  EXPECT_EQ(c.base_dim, 96);
  EXPECT_EQ(c.z_dim, 16);
  EXPECT_EQ(c.dim_mult, (std::vector<int>{1, 2, 4, 4}));
  EXPECT_EQ(c.num_res_blocks, 2);
  EXPECT_EQ(c.temperal_downsample, (std::vector<bool>{false, true, true}));
  ASSERT_EQ(c.latents_mean.size(), 16u);
  ASSERT_EQ(c.latents_std.size(), 16u);
  EXPECT_FLOAT_EQ(c.latents_mean[0], -0.7571f);
  EXPECT_FLOAT_EQ(c.latents_mean[7], 1.5508f);
  EXPECT_FLOAT_EQ(c.latents_mean[15], -0.2921f);
  EXPECT_FLOAT_EQ(c.latents_std[0], 2.8184f);
  EXPECT_FLOAT_EQ(c.latents_std[15], 1.9160f);
  EXPECT_EQ(c.decoder_dims(), (std::vector<int64_t>{384, 384, 384, 192, 96}));
  EXPECT_EQ(c.spatial_factor(), 8);
  EXPECT_EQ(c.temporal_factor(), 4);
  // 73.3 M decoder parameters (wan-notes §3.3) plus conv2.
  int64_t n = 0;
  for (const auto& w : c.expected_weights()) n += shape_numel(w.shape);
  EXPECT_NEAR(double(n), 73.3e6, 0.1e6);
}

TEST(WanVaeConfig, FromJsonWanAndDiffusersNames) {
  const auto wan = WanVaeConfig::from_json(nlohmann::json::parse(
      R"({"dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
          "attn_scales": [], "temperal_downsample": [false, true, true], "dropout": 0.0})"));
  EXPECT_EQ(wan.base_dim, 8);
  EXPECT_FLOAT_EQ(wan.latents_std[3], 2.6558f);
  nlohmann::json d = nlohmann::json::parse(
      R"({"_class_name": "AutoencoderKLWan", "base_dim": 12, "z_dim": 16, "dim_mult": [1, 2, 2],
          "num_res_blocks": 1, "attn_scales": [], "temperal_downsample": [false, true]})");
  d["latents_mean"] = std::vector<float>(16, 0.5f);
  d["latents_std"] = std::vector<float>(16, 2.0f);
  const auto dif = WanVaeConfig::from_json(d);
  EXPECT_EQ(dif.base_dim, 12);
  EXPECT_EQ(dif.dim_mult, (std::vector<int>{1, 2, 2}));
  EXPECT_EQ(dif.num_res_blocks, 1);
  EXPECT_EQ(dif.temperal_downsample, (std::vector<bool>{false, true}));
  EXPECT_EQ(dif.latents_mean, std::vector<float>(16, 0.5f));
  EXPECT_EQ(dif.latents_std, std::vector<float>(16, 2.0f));
  EXPECT_EQ(dif.temporal_factor(), 2);
  EXPECT_EQ(dif.spatial_factor(), 4);
}

TEST(WanVaeConfig, FromJsonRejectsBadValues) {
  const char* bad[] = {
      R"({"base_dim": "96"})",
      R"({"dim_mult": 4})",
      R"({"dim_mult": [1, 2, 4, 4], "temperal_downsample": [false, true]})",
      R"({"base_dim": 0})",
      R"({"attn_scales": [1.0]})",
      R"({"latents_mean": [0.0, 1.0]})",
      R"({"z_dim": 8, "latents_mean": [0,0,0,0,0,0,0,0], "latents_std": [1,1,1,1,1,1,1,0]})",
      R"([1, 2])",
  };
  for (const char* s : bad)
    EXPECT_EQ(code_of([&] { WanVaeConfig::from_json(nlohmann::json::parse(s)); }), ExitCode::BadWeights) << s;
}

// ---- weights --------------------------------------------------------------------------------

TEST(WanVae, MissingTensorIsBadWeights) {
  testutil::TempDir tmp("vae-missing");
  const WanVaeConfig c = tiny_config();
  const WeightMap m = WeightMap::open(write_random_vae(tmp.path, c, {"decoder.upsamples.7.time_conv.weight"}),
                                      Component::VAE);
  auto ops = make_cpu_ops();
  try {
    WanVaeDecoder dec(c, m, *ops);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadWeights);
    EXPECT_NE(std::string(e.what()).find("decoder.upsamples.7.time_conv.weight"), std::string::npos) << e.what();
  }
}

TEST(WanVae, ConfigWeightMismatchIsBadWeights) {
  testutil::TempDir tmp("vae-mismatch");
  const WanVaeConfig c = tiny_config();
  const WeightMap m = WeightMap::open(write_random_vae(tmp.path, c), Component::VAE);
  auto ops = make_cpu_ops();
  WanVaeConfig wrong_width = c;
  wrong_width.base_dim = 8;
  EXPECT_EQ(code_of([&] { WanVaeDecoder d(wrong_width, m, *ops); }), ExitCode::BadWeights);
  WanVaeConfig fewer_blocks = c;  // names shift: the file has more decoder tensors
  fewer_blocks.num_res_blocks = 1;
  EXPECT_EQ(code_of([&] { WanVaeDecoder d(fewer_blocks, m, *ops); }), ExitCode::BadWeights);
  WanVaeConfig no_time = c;  // a time_conv the config does not describe
  no_time.temperal_downsample = {false, false, true};
  EXPECT_EQ(code_of([&] { WanVaeDecoder d(no_time, m, *ops); }), ExitCode::BadWeights);
}

TEST(WanVae, RejectsMalformedLatent) {
  testutil::TempDir tmp("vae-latent");
  const WanVaeConfig c = tiny_config();
  const WeightMap m = WeightMap::open(write_random_vae(tmp.path, c), Component::VAE);
  auto ops = make_cpu_ops();
  WanVaeDecoder dec(c, m, *ops);
  EXPECT_EQ(code_of([&] { dec.decode_all(randn({8, 2, 2, 2}, 1)); }), ExitCode::Internal);
  EXPECT_EQ(code_of([&] { dec.decode_all(randn({16, 2, 2}, 1)); }), ExitCode::Internal);
  EXPECT_EQ(code_of([&] { dec.decode_all(Tensor::zeros({16, 0, 2, 2})); }), ExitCode::Internal);
}
