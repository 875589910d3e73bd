// The Wan2.1 DiT: golden outputs (dense from both weight namings; MoGA and per-shot captions),
// config parsing, shape inference and the error paths.
#include "test_util.h"
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>

#include "mogagen/checkpoint.h"
#include "mogagen/safetensors.h"
#include "models/wan_dit/wan_dit.h"
#include "pipeline/verify.h"

using namespace mg;
namespace fs = std::filesystem;

namespace {

std::string golden() { return testutil::golden_dir(); }

// Small random weights for every expected tensor (routers when `routers`); `skip` names
// tensors to leave out.
std::string write_random_dit(const fs::path& dir, const WanDitConfig& c, bool routers,
                             const std::vector<std::string>& skip = {}, uint32_t seed = 7) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::map<std::string, Tensor> ts;
  for (const auto& w : c.expected_weights()) {
    if (w.optional && !routers) continue;
    if (std::find(skip.begin(), skip.end(), w.name) != skip.end()) continue;
    Tensor t = Tensor::empty(w.shape);
    const auto ends = [&](const std::string& s) {
      return w.name.size() >= s.size() && w.name.compare(w.name.size() - s.size(), s.size(), s) == 0;
    };
    const bool gain = ends("norm_q.weight") || ends("norm_k.weight") || ends("norm3.weight");
    float scale = 1.0f / std::sqrt(float(shape_numel(w.shape) / std::max<int64_t>(1, w.shape[0])));
    if (ends(".bias")) scale = 0.05f;
    if (w.name.find("modulation") != std::string::npos) scale = 0.1f;
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = (gain ? 1.0f : 0.0f) + scale * nd(rng);
    ts[w.name] = t;
  }
  const std::string file = (dir / "dit.safetensors").string();
  write_safetensors(file, ts);
  return file;
}

WanDitConfig tiny_config(int groups) {
  WanDitConfig c;
  c.dim = 64;
  c.num_heads = 2;  // head_dim 32
  c.ffn_dim = 96;
  c.num_layers = 2;
  c.text_len = 8;
  c.text_dim = 24;
  c.moga.groups = groups;
  c.moga.temporal_group = 2;
  return c;
}

Tensor random_tensor(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = nd(rng);
  return t;
}

void expect_all_within(const std::vector<VerifyLine>& lines, double tol) {
  for (const auto& l : lines) {
    std::cout << "  " << l.name << "  rel_err " << l.rel_err << "\n";
    EXPECT_LE(l.rel_err, tol) << l.name;
  }
}

bool has_line(const std::vector<VerifyLine>& lines, const std::string& part) {
  for (const auto& l : lines)
    if (l.name.find(part) != std::string::npos) return true;
  return false;
}

}  // namespace

// ---- golden ---------------------------------------------------------------------------------

TEST(WanDitGolden, WanA) {
  const std::string dir = golden() + "/wan-a/dit";
  if (!fs::exists(dir)) GTEST_SKIP() << "golden data absent: " << dir;
  auto ops = make_cpu_ops();
  const auto lines = verify_dit(golden() + "/wan-a", *ops);
  EXPECT_GE(lines.size(), 6u);
  EXPECT_TRUE(has_line(lines, "dit[wan] out_t0"));
  EXPECT_TRUE(has_line(lines, "dit[diffusers] out_t2"));
  expect_all_within(lines, 1e-4);
}

TEST(WanDitGolden, WanC) {
  const std::string dir = golden() + "/wan-c/dit";
  if (!fs::exists(dir)) GTEST_SKIP() << "golden data absent: " << dir;
  auto ops = make_cpu_ops();
  const auto lines = verify_dit(dir, *ops);
  EXPECT_GE(lines.size(), 6u);
  EXPECT_TRUE(has_line(lines, "dit[wan] out_t1"));
  EXPECT_TRUE(has_line(lines, "dit[diffusers] out_t1"));
  expect_all_within(lines, 1e-4);
}

TEST(MogaGolden, AllCases) {
  const std::string dir = golden() + "/moga-a";
  if (!fs::exists(dir)) GTEST_SKIP() << "golden data absent: " << dir;
  auto ops = make_cpu_ops();
  const auto lines = verify_moga(dir, *ops);
  for (const char* c : {"moga_multishot out", "moga_oneshot out", "dense_multishot out",
                        "moga_multishot layer0_gid", "moga_oneshot layer0_gid",
                        "moga_multishot layer0_pwin"})
    EXPECT_TRUE(has_line(lines, c)) << c;
  expect_all_within(lines, 1e-4);
  for (const auto& l : lines) {
    if (l.name.find("layer0_gid") != std::string::npos) {
      EXPECT_EQ(l.rel_err, 0.0) << l.name;
    }
  }
}

TEST(MogaGolden, MissingFolderIsAnInputError) {
  auto ops = make_cpu_ops();
  try {
    verify_moga("/nonexistent/golden-moga", *ops);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadInput);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/golden-moga"), std::string::npos);
  }
}

// ---- config -------------------------------------------------------------------------------------

TEST(WanDitConfig, FromWanJson) {
  std::ifstream f(std::string(MOGAGEN_SOURCE_DIR) + "/configs/wan2.1-t2v-1.3b.json");
  ASSERT_TRUE(f.good());
  const WanDitConfig c = WanDitConfig::from_json(nlohmann::json::parse(f));
  EXPECT_EQ(c.dim, 1536);
  EXPECT_EQ(c.num_heads, 12);
  EXPECT_EQ(c.head_dim(), 128);
  EXPECT_EQ(c.ffn_dim, 8960);
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.text_len, 512);
  EXPECT_EQ(c.text_dim, 4096);
  EXPECT_EQ(c.freq_dim, 256);
  EXPECT_EQ(c.in_dim, 16);
  EXPECT_EQ(c.out_dim, 16);
  EXPECT_EQ(c.patch[1], 2);
  EXPECT_DOUBLE_EQ(c.eps, 1e-6);
  EXPECT_EQ(c.moga.groups, 0);
  EXPECT_EQ(c.attention, AttentionMode::Dense);
}

TEST(WanDitConfig, FromDiffusersJson) {
  const auto j = nlohmann::json::parse(R"({
    "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0",
    "added_kv_proj_dim": null, "attention_head_dim": 128, "cross_attn_norm": true,
    "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "image_dim": null, "in_channels": 16,
    "num_attention_heads": 40, "num_layers": 40, "out_channels": 16, "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096})");
  const WanDitConfig c = WanDitConfig::from_json(j);
  EXPECT_EQ(c.dim, 5120);
  EXPECT_EQ(c.num_heads, 40);
  EXPECT_EQ(c.ffn_dim, 13824);
  EXPECT_EQ(c.num_layers, 40);
  EXPECT_EQ(c.text_len, 512);
  EXPECT_EQ(c.text_dim, 4096);
  EXPECT_EQ(c.in_dim, 16);
  EXPECT_EQ(c.out_dim, 16);
}

TEST(WanDitConfig, MogaAttentionBlock) {
  std::ifstream f(std::string(MOGAGEN_SOURCE_DIR) + "/configs/tiny-moga-t2v.json");
  ASSERT_TRUE(f.good());
  const WanDitConfig c = WanDitConfig::from_json(nlohmann::json::parse(f)["dit"]);
  EXPECT_EQ(c.attention, AttentionMode::Moga);
  EXPECT_EQ(c.moga.groups, 3);
  EXPECT_EQ(c.moga.windows[0], 2);
  EXPECT_EQ(c.moga.windows[1], 2);
  EXPECT_EQ(c.moga.temporal_group, 2);
  EXPECT_EQ(c.moga.kv_extend, 2);
  auto j = nlohmann::json::parse(R"({"dim": 64, "num_heads": 2, "ffn_dim": 96, "num_layers": 1,
                                     "attention": {"type": "moga", "windows": [3, 1]}})");
  const WanDitConfig d = WanDitConfig::from_json(j);
  EXPECT_EQ(d.moga.windows[0], 3);
  EXPECT_EQ(d.moga.windows[1], 1);
  EXPECT_EQ(d.moga.temporal_group, 4);  // defaults
  EXPECT_EQ(d.moga.kv_extend, 2);
}

TEST(WanDitConfig, BadFieldsAreInputErrors) {
  auto expect_bad = [](const char* text, const char* mention) {
    try {
      WanDitConfig::from_json(nlohmann::json::parse(text));
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::BadInput) << e.what();
      EXPECT_NE(std::string(e.what()).find(mention), std::string::npos) << e.what();
    }
  };
  expect_bad(R"({"dim": "big", "num_heads": 2, "ffn_dim": 8, "num_layers": 1})", "dim");
  expect_bad(R"({"dim": 64, "num_heads": 2, "ffn_dim": 8})", "num_layers");
  expect_bad(R"({"dim": 64, "num_heads": 3, "ffn_dim": 8, "num_layers": 1})", "num_heads");
  expect_bad(R"({"dim": 64, "num_heads": 2, "ffn_dim": 8, "num_layers": 1,
                 "attention": {"type": "sparse"}})", "sparse");
  expect_bad(R"({"dim": 64, "num_heads": 2, "ffn_dim": 8, "num_layers": 1,
                 "attention": {"windows": [2]}})", "windows");
  expect_bad(R"({"dim": 64, "num_heads": 2, "ffn_dim": 8, "num_layers": 1,
                 "model_type": "i2v"})", "i2v");
}

TEST(WanDitConfig, InferFromShapes) {
  testutil::TempDir tmp("dit-infer");
  WanDitConfig c;
  c.dim = 256;
  c.num_heads = 2;  // head_dim 128, as every Wan2.1 model
  c.ffn_dim = 320;
  c.num_layers = 3;
  c.text_dim = 48;
  c.moga.groups = 4;
  const std::string file = write_random_dit(tmp.path, c, true);
  const WeightMap m = WeightMap::open(file, Component::DiT);
  const WanDitConfig g = WanDitConfig::infer(m);
  EXPECT_EQ(g.dim, 256);
  EXPECT_EQ(g.num_heads, 2);
  EXPECT_EQ(g.ffn_dim, 320);
  EXPECT_EQ(g.num_layers, 3);
  EXPECT_EQ(g.text_dim, 48);
  EXPECT_EQ(g.freq_dim, 256);
  EXPECT_EQ(g.in_dim, 16);
  EXPECT_EQ(g.out_dim, 16);
  EXPECT_EQ(g.text_len, 512);
  EXPECT_EQ(g.moga.groups, 4);
  EXPECT_EQ(g.expected_weights().size(), c.expected_weights().size());
}

// ---- errors --------------------------------------------------------------------------------------

TEST(WanDitErrors, MogaWithoutRoutersIsAClearError) {
  testutil::TempDir tmp("dit-norouter");
  const WanDitConfig c = tiny_config(0);
  const WeightMap m = WeightMap::open(write_random_dit(tmp.path, c, false), Component::DiT);
  auto ops = make_cpu_ops();
  WanDit dit(c, m, *ops);
  EXPECT_FALSE(dit.has_routers());
  const auto text = dit.prepare_context({random_tensor({3, c.text_dim}, 1)});
  const Tensor x = random_tensor({16, 2, 4, 4}, 2);
  EXPECT_EQ(dit.forward(x, 500.0, text, {}, AttentionMode::Dense).shape(), x.shape());
  try {
    dit.forward(x, 500.0, text, {}, AttentionMode::Moga);
    FAIL() << "MoGA without routers was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadWeights);
    EXPECT_NE(std::string(e.what()).find(
                  "asking for MoGA on a checkpoint without router weights"),
              std::string::npos)
        << e.what();
  }
}

TEST(WanDitErrors, PartialRoutersAreRejected) {
  testutil::TempDir tmp("dit-partial");
  const WanDitConfig c = tiny_config(3);
  const std::string file = write_random_dit(
      tmp.path, c, true, {"blocks.1.self_attn.router.weight", "blocks.1.self_attn.router.bias"});
  const WeightMap m = WeightMap::open(file, Component::DiT);
  auto ops = make_cpu_ops();
  try {
    WanDit dit(c, m, *ops);
    FAIL() << "routers on some blocks only were accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadWeights);
    EXPECT_NE(std::string(e.what()).find("N = 1"), std::string::npos) << e.what();
  }
}

TEST(WanDitErrors, MissingTensorsAreReportedAtOnce) {
  testutil::TempDir tmp("dit-missing");
  const WanDitConfig c = tiny_config(0);
  const std::string file =
      write_random_dit(tmp.path, c, false, {"blocks.0.norm3.bias", "head.head.weight"});
  const WeightMap m = WeightMap::open(file, Component::DiT);
  auto ops = make_cpu_ops();
  try {
    WanDit dit(c, m, *ops);
    FAIL() << "missing tensors were accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadWeights);
    const std::string msg = e.what();
    EXPECT_NE(msg.find("blocks.0.norm3.bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find("head.head.weight"), std::string::npos) << msg;
  }
}

TEST(WanDitErrors, BadInputsAreClear) {
  testutil::TempDir tmp("dit-inputs");
  const WanDitConfig c = tiny_config(0);
  const WeightMap m = WeightMap::open(write_random_dit(tmp.path, c, false), Component::DiT);
  auto ops = make_cpu_ops();
  WanDit dit(c, m, *ops);
  // caption longer than text_len, wrong width
  EXPECT_THROW(dit.prepare_context({random_tensor({c.text_len + 1, c.text_dim}, 1)}), Error);
  EXPECT_THROW(dit.prepare_context({random_tensor({3, c.text_dim + 1}, 1)}), Error);
  const auto text = dit.prepare_context({random_tensor({3, c.text_dim}, 1)});
  const auto two = dit.prepare_context({random_tensor({3, c.text_dim}, 1), random_tensor({2, c.text_dim}, 2)});
  EXPECT_THROW(dit.forward(random_tensor({16, 3, 5, 4}, 2), 1.0, text, {}, AttentionMode::Dense),
               Error);  // odd height
  EXPECT_THROW(dit.forward(random_tensor({16, 3, 4, 4}, 2), 1.0, text, {1, 1}, AttentionMode::Dense),
               Error);  // shots do not cover the frames
  EXPECT_THROW(dit.forward(random_tensor({16, 3, 4, 4}, 2), 1.0, two, {1, 1, 1}, AttentionMode::Dense),
               Error);  // two captions, three shots
}

// ---- MoGA / multi-shot behaviour ----------------------------------------------------------------

TEST(WanDitMoga, RoutingStatisticsAndSharedCaption) {
  testutil::TempDir tmp("dit-moga");
  const WanDitConfig c = tiny_config(3);
  const WeightMap m = WeightMap::open(write_random_dit(tmp.path, c, true), Component::DiT);
  auto ops = make_cpu_ops();
  WanDit dit(c, m, *ops);
  ASSERT_TRUE(dit.has_routers());
  const Tensor cap = random_tensor({5, c.text_dim}, 3);
  const Tensor x = random_tensor({16, 5, 6, 8}, 4);  // 5 frames x 3 x 4 tokens
  const int64_t N = 5 * 3 * 4;
  const std::vector<int> shots{2, 3};
  int calls = 0;
  dit.set_routing_callback([&](int, const MogaRouting& r) {
    ++calls;
    int64_t total = 0;
    for (int64_t s : r.group_sizes) total += s;
    EXPECT_EQ(total, N);
  });
  const Tensor a = dit.forward(x, 321.5, dit.prepare_context({cap}), shots, AttentionMode::Moga);
  EXPECT_EQ(calls, c.num_layers);
  ASSERT_EQ(dit.layer0_routing().gid.size(), size_t(N));
  for (size_t i = 0; i < dit.layer0_routing().gid.size(); ++i) {
    EXPECT_GE(dit.layer0_routing().gid[i], 0);
    EXPECT_LT(dit.layer0_routing().gid[i], 3);
    EXPECT_GE(dit.layer0_routing().p_win[i], 1.0f / 3.0f - 1e-6f);
  }
  EXPECT_EQ(dit.group_sizes().size(), size_t(c.num_layers));
  {
    // --verbose's per-block line: the sizes, then the largest and smallest group against
    // the fair share N/M, from this forward's sizes
    const std::string rep = dit.routing_report();
    const auto& gs = dit.group_sizes()[1];
    const int64_t mx = *std::max_element(gs.begin(), gs.end()), mn = *std::min_element(gs.begin(), gs.end());
    char want[96];
    std::snprintf(want, sizeof want, "largest %.2fx fair share, smallest %.2fx", double(mx) * 3.0 / double(N),
                  double(mn) * 3.0 / double(N));
    const size_t at = rep.find("block 1: [");
    ASSERT_NE(at, std::string::npos) << rep;
    EXPECT_NE(rep.find(want, at), std::string::npos) << "wanted '" << want << "' in " << rep;
  }
  // One caption for all shots == the same caption given once per shot.
  const Tensor b =
      dit.forward(x, 321.5, dit.prepare_context({cap, cap}), shots, AttentionMode::Moga);
  EXPECT_LT(rel_error(b, a), 1e-6);
  // Different captions per shot change the result.
  const Tensor d = dit.forward(
      x, 321.5, dit.prepare_context({cap, random_tensor({4, c.text_dim}, 9)}), shots,
      AttentionMode::Moga);
  EXPECT_GT(rel_error(d, a), 1e-4);
  // The window settings are honoured: a different temporal group changes the output.
  MogaConfig mc = dit.config().moga;
  mc.temporal_group = 1;
  dit.set_moga_options(mc);
  EXPECT_EQ(dit.config().moga.groups, 3);
  const Tensor e = dit.forward(x, 321.5, dit.prepare_context({cap}), shots, AttentionMode::Moga);
  EXPECT_GT(rel_error(e, a), 1e-6);

  // Profiling times the parts of the forward without changing it.
  dit.set_profiling(true);
  const Tensor p = dit.forward(x, 321.5, dit.prepare_context({cap}), shots, AttentionMode::Moga);
  EXPECT_EQ(rel_error(p, e), 0.0);
  for (const char* part : {"moga routing", "moga permute", "self-attention: groups", "self-attention: windows",
                           "self-attention: frames", "cross-attention", "q k v projections",
                           "q k RMSNorm and RoPE", "output projection and residual", "norm and modulation",
                           "FFN up (GELU)", "FFN down and residual"}) {
    ASSERT_TRUE(dit.profile().count(part)) << part;
    EXPECT_GT(dit.profile().at(part), 0.0) << part;
  }
  EXPECT_FALSE(dit.profile().count("self-attention")) << "MoGA's attention is profiled per branch";
  // the dense forward: one self-attention part, no MoGA parts
  dit.set_profiling(true);
  dit.forward(x, 321.5, dit.prepare_context({cap}), shots, AttentionMode::Dense);
  EXPECT_GT(dit.profile().count("self-attention"), 0u);
  EXPECT_FALSE(dit.profile().count("moga routing"));
  EXPECT_FALSE(dit.profile().count("self-attention: groups"));
  dit.set_profiling(false);
  EXPECT_TRUE(dit.profile().empty());

  // Executed attention FLOPs (4 nq nk dim per segment): dense counts every pair; MoGA
  // counts its groups, frames and windows (the windows lie between nothing and all pairs).
  const double L = c.num_layers, D = c.dim, T = c.text_len, cross = L * 4.0 * N * T * D;
  dit.forward(x, 321.5, dit.prepare_context({cap}), shots, AttentionMode::Dense);
  EXPECT_DOUBLE_EQ(dit.attention_flops(), L * 4.0 * N * N * D + cross);
  dit.forward(x, 321.5, dit.prepare_context({cap}), shots, AttentionMode::Moga);
  double known = cross + L * 5 * 4.0 * 12 * 12 * D;  // 5 frames of 3 x 4 tokens
  for (const auto& sizes : dit.group_sizes())
    for (int64_t n : sizes) known += 4.0 * double(n) * double(n) * D;
  const double window = dit.attention_flops() - known;
  EXPECT_GT(window, 0.0);
  EXPECT_LE(window, L * 4.0 * N * N * D);
}

// A router bias set at run time moves the routing the way the spec's logits say: a bias of
// +1000 on group g (over-riding any x W_r^T) sends every token of that block to g, and
// router_bias() reads back what was set. Unknown blocks and wrong sizes are refused.
TEST(WanDitMoga, RouterBiasCanBeSetPerBlock) {
  testutil::TempDir tmp("dit-router-bias");
  const WanDitConfig c = tiny_config(3);
  const WeightMap m = WeightMap::open(write_random_dit(tmp.path, c, true), Component::DiT);
  auto ops = make_cpu_ops();
  WanDit dit(c, m, *ops);
  const Tensor x = random_tensor({16, 5, 6, 8}, 4);
  const auto text = dit.prepare_context({random_tensor({5, c.text_dim}, 3)});
  const int64_t N = 5 * 3 * 4;
  const std::vector<float> before = dit.router_bias(1);
  ASSERT_EQ(before.size(), 3u);
  std::vector<float> b = before;
  b[2] += 1000.0f;
  dit.set_router_bias(1, b);
  EXPECT_EQ(dit.router_bias(1), b);
  dit.forward(x, 500.0, text, {}, AttentionMode::Moga);
  EXPECT_EQ(dit.group_sizes()[1], (std::vector<int64_t>{0, 0, N}));
  EXPECT_LT(*std::max_element(dit.group_sizes()[0].begin(), dit.group_sizes()[0].end()), N)
      << "block 0 keeps its own routing";
  dit.set_router_bias(1, before);
  dit.forward(x, 500.0, text, {}, AttentionMode::Moga);
  EXPECT_LT(dit.group_sizes()[1][2], N);
  EXPECT_THROW(dit.set_router_bias(1, {0.0f, 0.0f}), Error);
  EXPECT_THROW(dit.set_router_bias(c.num_layers, before), Error);
  EXPECT_THROW(dit.router_bias(-1), Error);
}

// The --verbose balance over a whole sampling: per block the worst share (with its step) and
// the average, in lines the semantic tests read ("largest X.XXx fair share").
TEST(WanDitMoga, RoutingTallyReportsWorstAndAverage) {
  RoutingTally tally;
  EXPECT_EQ(tally.report(), "");
  EXPECT_EQ(tally.worst(), 0.0);
  tally.add({{25, 25, 25, 25}, {40, 20, 20, 20}}, 0);  // block 1: 1.60x
  tally.add({{10, 30, 30, 30}, {70, 10, 10, 10}}, 3);  // block 1: 2.80x at step 3
  EXPECT_NEAR(tally.worst(), 2.8, 1e-12);
  const std::string r = tally.report();
  EXPECT_NE(r.find("2 forwards"), std::string::npos) << r;
  EXPECT_NE(r.find("block 0: largest 1.20x fair share at worst (step 3), 1.10x on average"),
            std::string::npos) << r;
  EXPECT_NE(r.find("block 1: largest 2.80x fair share at worst (step 3), 2.20x on average"),
            std::string::npos) << r;
}
