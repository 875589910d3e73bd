// mogagen_bench: times the engine's stages at the real Wan2.1 shapes with random weights
// and prints seconds and achieved TFLOP/s. Needs no weights, FFmpeg or SentencePiece.
//
//   mogagen_bench dit --model 1.3b|14b [--frames 21 --height 60 --width 104] [--attention
//                 dense|moga --groups 5 --router balanced|random] [--iters 3] [--warmup 1] [--layers N]
//                 [--device cuda] [--profile on] [--log quiet|info|verbose] [--norm-weights one|small]
//   mogagen_bench vae [--frames 21 --height 60 --width 104] [--profile on]
//   mogagen_bench t5 [--tokens 512] [--profile on]
//   mogagen_bench attention [--tokens N --segment S --heads H] [--operands normal|unit|small]
//                 (head size 128; S = 0: dense; operands N(0, 1) as the peer's torch.randn,
//                 of magnitude 1/16 to 4, or below 1)
//
// Weights are views into one shared pool of random bf16 values (never zeros), with the
// norms' scales near 1 as in a trained model (random_source says why that matters).
// MoGA's speed depends on the routing: random routers send most tokens to one group (the
// residual stream's shared component decides every token's argmax), which a trained
// router with the balance loss does not. So by default (--router balanced) the router
// biases are first calibrated on a short clip, as loss-free balancing does, until no group
// holds more than 1.1x its fair share; the timed forward then reports the balance it
// actually had. --router random keeps them as drawn.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "mogagen/checkpoint.h"
#include "mogagen/log.h"
#include "mogagen/ops.h"
#include "models/umt5/umt5.h"
#include "models/wan_dit/wan_dit.h"
#include "models/wan_vae/wan_vae.h"
#include "pipeline/scheduler.h"

using namespace mg;

namespace {

struct Args {
  std::string what = "dit", model = "1.3b", device = "cuda", attention = "dense", router = "balanced";
  int frames = 21, height = 60, width = 104, iters = 3, groups = 5, tokens = 512, text = 512;
  int layers = 0;  // 0: the model's; fewer for quick looks (routing, CPU runs)
  int heads = 40, segment = -1;  // attention: one case of --tokens split into --segment
  bool tokens_set = false;
  std::string operands = "normal";  // attention: q, k, v drawn N(0, 1), "unit" or "small"
  bool profile = false;
  int warmup = 1;  // untimed forwards first (plans, allocator); 0 for very long runs
};

std::shared_ptr<void> g_pool;
int64_t g_pool_n = 0;

// Whether a weight is a norm's scale (RMSNorm / LayerNorm weight, the VAE's gamma).
bool is_norm_scale(const std::string& name) {
  auto ends = [&](const char* e) {
    const size_t n = std::strlen(e);
    return name.size() >= n && name.compare(name.size() - n, n, e) == 0;
  };
  return ends(".gamma") || (name.find("norm") != std::string::npos && ends(".weight"));
}

bool g_unit_norms = true;  // --norm-weights one (the default) or small

// Random bf16 tensor views into a shared pool (values 0.02 N(0, 1), about 1/sqrt(fan_in)).
// Norm scales are 1 + 0.02 N(0, 1), as in a trained model (and in the PyTorch peer, whose
// norms start at 1): under the H200's power cap the speed of attention depends on the size
// of its operands (docs/performance.md, ninth session), and RMS-normed q and k are of unit
// size only where the norm's scale is. --norm-weights small keeps the pool's values there
// too (the benches up to the ninth session: q and k about 50 times smaller).
TensorSource random_source(const std::vector<WeightSpec>& specs) {
  const int64_t pool = int64_t(96) << 20;  // 96M values; larger tensors repeat the pool
  if (g_pool_n == 0) {
    g_pool_n = pool;
    Tensor noise = gaussian_noise({g_pool_n}, 1234);
    for (int64_t i = 0; i < g_pool_n; ++i) noise.f32()[i] *= 0.02f;
    Tensor bf = noise.to(DType::BF16);
    g_pool = bf.storage();
  }
  std::map<std::string, Tensor> m;
  uint64_t h = 1469598103934665603ull;
  for (const auto& w : specs) {
    if (w.optional && w.name.find("router") == std::string::npos) continue;
    for (char c : w.name) h = (h ^ uint8_t(c)) * 1099511628211ull;
    const int64_t n = shape_numel(w.shape);
    auto* base = static_cast<uint16_t*>(static_cast<Storage*>(g_pool.get())->data);
    if (n + 4096 <= g_pool_n) {
      const int64_t off = int64_t(h % uint64_t(g_pool_n - n));
      Tensor view = Tensor::wrap(base + off, w.shape, DType::BF16, Device::cpu(), g_pool);
      if (g_unit_norms && is_norm_scale(w.name)) {  // 1 + the pool's values
        Tensor f = view.to(DType::F32);
        for (int64_t i = 0; i < n; ++i) f.f32()[i] += 1.0f;
        view = f.to(DType::BF16);
      }
      m[w.name] = view;
    } else {  // e.g. the 256k x 4096 umT5 embedding table
      Tensor t = Tensor::empty(w.shape, DType::BF16);
      for (int64_t o = 0; o < n; o += g_pool_n - 4096)
        std::memcpy(t.data<uint16_t>() + o, base + (h + o) % 4096,
                    size_t(std::min(n - o, g_pool_n - 4096)) * 2);
      m[w.name] = t;
    }
  }
  return TensorSource::from_tensors(std::move(m), "(random bf16 weights)");
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

WanDitConfig dit_config(const std::string& m) {
  WanDitConfig c;
  if (m == "14b") {
    c.dim = 5120, c.ffn_dim = 13824, c.num_heads = 40, c.num_layers = 40;
  } else if (m == "1.3b") {
    c.dim = 1536, c.ffn_dim = 8960, c.num_heads = 12, c.num_layers = 30;
  } else {
    throw usage_error("--model: expected 1.3b or 14b");
  }
  return c;
}

// Device memory of the timed runs (the allocator's own count; 0 on the CPU backend).
void print_memory(Ops& ops, const char* what, size_t before) {
  const Ops::MemoryStats m = ops.memory_stats();
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::printf("%s memory: peak %.2f GiB held by tensors (%.2f GiB of it before the run: weights "
              "and inputs), %.2f GiB reserved\n",
              what, double(m.peak_live) / gib, double(before) / gib, double(m.reserved) / gib);
}

// Runs `run` once with the model's part profile on and prints each part's seconds and
// share of the run (the rest as "everything else", described by `rest`).
template <typename Model, typename Run>
void print_profile(Model& m, Run run, const char* what, const char* rest) {
  m.set_profiling(true);
  const double s = now();
  run();
  const double total = now() - s;
  double parts = 0;
  std::printf("%s profile (one run, %.3f s with the synchronizes):\n", what, total);
  for (const auto& [name, sec] : m.profile()) {
    std::printf("  %-32s %8.4f s  %5.1f%%\n", name.c_str(), sec, 100.0 * sec / total);
    parts += sec;
  }
  std::printf("  %-32s %8.4f s  %5.1f%%  %s\n", "everything else", total - parts,
              100.0 * (total - parts) / total, rest);
  m.set_profiling(false);
}

// The fused attention's counters between two Ops::attention_stats() readings: plans built
// (and the host seconds spent building and timing them), fused calls, ragged calls run
// segment by segment, and calls that fell back to float32; of the fused calls, those that
// ran our sm90 kernel rather than cuDNN's. Any plan building or fallback inside a timed run
// shows here.
void print_attention_stats(const char* what, const Ops::AttentionStats& a, const Ops::AttentionStats& b) {
  std::printf("%s attention: %lld plans built (%.2f s, %lld of them timing configurations), %lld fused "
              "calls (%lld on our sm90 kernel), %lld segment by segment, %lld float32 fallbacks\n",
              what, (long long)(b.plans - a.plans), b.plan_seconds - a.plan_seconds,
              (long long)(b.timed_choices - a.timed_choices),
              (long long)(b.fused_calls - a.fused_calls), (long long)(b.sm90_calls - a.sm90_calls),
              (long long)(b.per_segment_calls - a.per_segment_calls), (long long)(b.f32_calls - a.f32_calls));
}

// Largest group over its fair share N/M: the worst block's and the mean over blocks.
std::pair<double, double> routing_balance(const std::vector<std::vector<int64_t>>& sizes) {
  double worst = 0, sum = 0;
  int blocks = 0;
  for (const auto& gs : sizes) {
    if (gs.empty()) continue;
    const double share = largest_group_share(gs);
    worst = std::max(worst, share);
    sum += share;
    ++blocks;
  }
  return {worst, blocks ? sum / blocks : 0.0};
}

// Calibrates every block's router bias on a clip of at most 8 latent frames (same frame
// size, the timed timestep) until no group holds more than 1.1x its fair share: each round
// lowers an over-full group's logit and raises an under-full one's by the log of the
// ratio (clamped, with a shrinking step), as loss-free balancing does. The result looks
// like a router trained with the balance loss, at no cost to the timed forward.
void balance_routers(const Args& a, WanDit& dit, const WanDit::TextCache& text) {
  const int L = dit.config().num_layers, M = dit.config().moga.groups;
  const int frames = std::min(a.frames, 8);
  const Tensor x = gaussian_noise({16, frames, a.height, a.width}, 19);
  std::vector<std::vector<float>> bias;
  for (int i = 0; i < L; ++i) bias.push_back(dit.router_bias(i));
  double first = 0, worst = 0;
  int round = 0;
  double step = 1.0;  // logit units; shrinks so that the sizes settle instead of swinging
  for (; round < 60; ++round, step *= 0.93) {
    dit.forward(x, 500.0, text, {}, AttentionMode::Moga);
    const auto& sizes = dit.group_sizes();
    worst = routing_balance(sizes).first;
    if (round == 0) first = worst;
    if (worst <= 1.1) break;
    for (int i = 0; i < L; ++i) {
      int64_t n = 0;
      for (int64_t v : sizes[size_t(i)]) n += v;
      for (int g = 0; g < M; ++g) {
        const double share = std::max(double(sizes[size_t(i)][size_t(g)]), 0.5) * M / double(n);
        bias[size_t(i)][size_t(g)] -= float(step * std::clamp(std::log(share), -1.0, 1.0));
      }
      dit.set_router_bias(i, bias[size_t(i)]);
    }
  }
  std::printf("dit routers: biases calibrated on %d latent frames in %d rounds: largest group "
              "%.2fx -> %.2fx its fair share (worst block)\n", frames, round, first, worst);
}

int bench_dit(const Args& a, Ops& ops) {
  WanDitConfig cfg = dit_config(a.model);
  if (a.attention == "moga") cfg.moga.groups = a.groups;
  if (a.layers > 0) cfg.num_layers = std::min(cfg.num_layers, a.layers);
  const double t0 = now();
  WeightMap wm = WeightMap::from_source(random_source(cfg.expected_weights()), Component::DiT);
  WanDit dit(cfg, wm, ops);
  ops.synchronize();
  std::printf("dit %s: weights ready in %.1f s\n", a.model.c_str(), now() - t0);
  Tensor ctx = gaussian_noise({a.text, cfg.text_dim}, 7);
  auto text = dit.prepare_context({ctx});
  Tensor x = gaussian_noise({16, a.frames, a.height, a.width}, 9);
  const AttentionMode mode = a.attention == "moga" ? AttentionMode::Moga : AttentionMode::Dense;
  const double N = double(a.frames) * (a.height / 2) * (a.width / 2), d = cfg.dim, f = cfg.ffn_dim;
  const double L = cfg.num_layers;
  const double gemm = L * (2 * N * 4 * d * d + 2 * N * 2 * d * d + 2 * N * 2 * d * f);
  if (mode == AttentionMode::Moga && a.router == "balanced") balance_routers(a, dit, text);
  else if (a.router != "balanced" && a.router != "random")
    throw usage_error("--router: expected balanced or random, got " + a.router);
  const size_t weights_bytes = ops.memory_stats().live;  // weights, text K/V, inputs
  const Ops::AttentionStats st0 = ops.attention_stats();
  for (int i = 0; i < a.warmup; ++i) dit.forward(x, 999.0, text, {}, mode);  // plans, allocator
  ops.synchronize();
  const Ops::AttentionStats st1 = ops.attention_stats();
  print_attention_stats("dit warm-up", st0, st1);
  ops.reset_peak_memory();
  std::vector<double> times;
  for (int i = 0; i < a.iters; ++i) {
    const double s = now();
    dit.forward(x, 500.0 + i, text, {}, mode);
    ops.synchronize();
    times.push_back(now() - s);
  }
  print_attention_stats("dit timed runs", st1, ops.attention_stats());
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2];
  // attention FLOPs the last forward executed (MoGA: what the routing left to compute)
  const double attn = dit.attention_flops();
  // issue 5's floor: executed GEMM FLOPs at 740 TFLOP/s plus attention FLOPs at 600 TFLOP/s
  const double floor_s = gemm / 740e12 + attn / 600e12;
  std::printf("dit %s %s N=%.0f: median %.3f s over %d (min %.3f)  GEMM %.1f TFLOP, attention %.1f TFLOP, %.0f TFLOP/s; FLOP floor %.3f s (%.2fx)\n",
              a.model.c_str(), a.attention.c_str(), N, med, a.iters, times.front(), gemm / 1e12, attn / 1e12,
              (gemm + attn) / med / 1e12, floor_s, med / floor_s);
  print_memory(ops, "dit", weights_bytes);
  if (mode == AttentionMode::Moga) {
    const auto [worst, mean] = routing_balance(dit.group_sizes());
    std::printf("dit routing (timed forward, M = %d): largest group %.2fx its fair share in the worst "
                "block, %.2fx on average over blocks\n", cfg.moga.groups, worst, mean);
    if (a.profile) std::printf("%s\n", dit.routing_report().c_str());
  }
  if (a.profile) {
    // One more forward with every part bracketed by a synchronize: where the step goes,
    // and the share of MoGA's routing and permutation (issue 5). At the first timed
    // forward's timestep, so that it routes alike and does the same work (profiles at
    // another timestep, where the routers calibrated at the timed one leave larger groups,
    // gave the group branch 1.9x (1.3B) and about 4.6x (14B) its time in the timed forward).
    const Ops::AttentionStats st2 = ops.attention_stats();
    print_profile(dit, [&] { dit.forward(x, 500.0, text, {}, mode); }, "dit",
                  "(time embedding, patchify, modulation, head, download)");
    print_attention_stats("dit profiled run", st2, ops.attention_stats());
    std::printf("dit profiled run: attention %.1f TFLOP executed\n", dit.attention_flops() / 1e12);
    if (mode == AttentionMode::Moga) {
      const auto [pw, pm] = routing_balance(dit.group_sizes());
      std::printf("dit routing (profiled forward): largest group %.2fx its fair share in the worst block, "
                  "%.2fx on average\n", pw, pm);
    }
  }
  return 0;
}

int bench_vae(const Args& a, Ops& ops) {
  WanVaeConfig cfg;
  WeightMap wm = WeightMap::from_source(random_source(cfg.expected_weights()), Component::VAE);
  WanVaeDecoder dec(cfg, wm, ops);
  Tensor z = gaussian_noise({16, a.frames, a.height, a.width}, 3);
  int64_t frames = 0;
  auto sink = [&](const Tensor& f) { frames += f.dim(1); };
  // warm-up: 3 latent frames meet every conv shape of a longer decode (the causal caches
  // are full from the third chunk on), so the timed decode builds no plan
  dec.decode(gaussian_noise({16, 3, a.height, a.width}, 3), sink);
  ops.synchronize();
  const size_t weights_bytes = ops.memory_stats().live;
  ops.reset_peak_memory();
  frames = 0;
  const double s = now();
  dec.decode(z, sink);
  ops.synchronize();
  const double t = now() - s;
  std::printf("vae decode %d latent frames -> %lld frames %dx%d: %.3f s (%.1f frames/s)\n", a.frames,
              (long long)frames, a.width * 8, a.height * 8, t, frames / t);
  print_memory(ops, "vae", weights_bytes);
  if (a.profile) print_profile(dec, [&] { dec.decode(z, sink); }, "vae", "(latent upload, conv2, slices)");
  return 0;
}

// splitmix64's finalizer: a counter-based hash, so that any element can be drawn alone
uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// n bf16 attention operands: N(0, 1) (`normal`: 65,536 Box-Muller draws, one picked by each
// element's hash), or a random sign and mantissa with exponents 2^-4..2^1 (`unit`) or
// 2^-6..2^-1 (`small`). Each element is the hash of (seed, index), drawn on all cores: the
// attention bench fills about 18 G values (the MoGA cases at 187,200 tokens), which one
// core drawing Box-Muller per element took some 6 minutes for.
void fill_operand(uint16_t* p, int64_t n, uint32_t seed, const std::string& operands) {
  static const std::vector<uint16_t> normal_table = [] {
    std::vector<uint16_t> t(65536);
    for (size_t j = 0; j < t.size(); ++j) {  // Box-Muller on two uniforms in (0, 1]
      const uint64_t r = mix64(0x5eed0000ull + j);
      const double u1 = (double(r >> 40) + 1.0) / 16777216.0, u2 = double((r >> 16) & 0xffffff) / 16777216.0;
      t[j] = f32_to_bf16(float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2)));
    }
    return t;
  }();
  const bool normal = operands == "normal";
  const uint32_t e0 = operands == "unit" ? 123 : 121;  // exponents e0..e0+5 (unit or small)
  const uint64_t base = uint64_t(seed) << 40;
  auto fill = [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const uint64_t r = mix64(base + uint64_t(i));
      p[i] = normal ? normal_table[r & 0xffff]
                    : uint16_t(((r >> 63) << 15) | ((e0 + (r >> 20) % 6) << 7) | ((r >> 8) & 0x7f));
    }
  };
  const int64_t threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 64);
  const int64_t chunk = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads && t * chunk < n; ++t)
    pool.emplace_back(fill, t * chunk, std::min(n, (t + 1) * chunk));
  fill(0, std::min(n, chunk));
  for (auto& th : pool) th.join();
}

// One attention shape: `segments` query/key segments (equal lengths in each pair) of H
// heads of head size d, bf16 operands filled with hashed values: N(0, 1) (`normal`, the
// default, as the PyTorch peer's torch.randn), magnitudes 1/16 to 4 (`unit`) or 2^-6 to 1
// (`small`, the benches up to the eighth session). Under the H200's power cap the size of
// the operands changes the speed by a few percent (docs/performance.md, ninth session).
// One untimed call builds the cuDNN plan (and, on sm_90, times our kernel against cuDNN's
// for the shape class); then the median of the timed calls, and which kernel ran them.
void bench_attention_case(Ops& ops, const char* what, const std::vector<int64_t>& seg_q,
                          const std::vector<int64_t>& seg_kv, int64_t H, int64_t d, int iters,
                          const std::string& operands) {
  int64_t nq = 0, nk = 0;
  double pairs = 0;
  CuSeqlens cq{0}, ck{0};
  for (size_t i = 0; i < seg_q.size(); ++i) {
    nq += seg_q[i], nk += seg_kv[i];
    pairs += double(seg_q[i]) * double(seg_kv[i]);
    cq.push_back(nq);
    ck.push_back(nk);
  }
  auto operand = [&](int64_t n, uint32_t seed) {
    Tensor h = Tensor::empty({n, H, d}, DType::BF16);
    fill_operand(h.data<uint16_t>(), h.numel(), seed, operands);
    return ops.weight(h, false);
  };
  const Tensor q = operand(nq, 1), k = operand(nk, 2), v = operand(nk, 3);
  const float scale = 1.0f / std::sqrt(float(d));
  auto run = [&] {
    return seg_q.size() == 1 ? ops.attention(q, k, v, scale) : ops.attention_varlen(q, k, v, cq, ck, scale);
  };
  run();
  ops.synchronize();
  std::vector<double> times;
  const Ops::AttentionStats a = ops.attention_stats();
  for (int i = 0; i < std::max(iters, 3); ++i) {
    const double s = now();
    Tensor o = run();
    ops.synchronize();
    times.push_back(now() - s);
  }
  const Ops::AttentionStats b = ops.attention_stats();
  // which kernel ran the timed calls: ours (sm90), cuDNN's, or the float32 fallback
  const int64_t calls = b.fused_calls - a.fused_calls, mine = b.sm90_calls - a.sm90_calls;
  const char* kernel = calls == 0 ? "fallback" : mine == calls ? "sm90" : mine == 0 ? "cuDNN" : "mixed";
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2], flops = 4.0 * pairs * double(H) * double(d);
  std::printf("attention %-44s H=%-3lld d=%lld tokens=%-7lld %8.3f ms  %6.1f TFLOP/s (%s operands, %s)\n", what,
              (long long)H, (long long)d, (long long)nq, med * 1e3, flops / med / 1e12, operands.c_str(), kernel);
}

// Issue 4's attention targets (dense at 40 and 12 heads x 32,760 tokens; varlen segments of
// 2k tokens and more) and the calls of a MoGA forward at 187,200 tokens (1.3B: 12 heads;
// groups of N/M, and the window and frame branches' 1,560-token segments). --tokens and
// --segment give one case of your own instead (dense when --segment is 0).
int bench_attention(const Args& a, Ops& ops) {
  auto split = [](int64_t total, int64_t seg) {
    std::vector<int64_t> s;
    for (int64_t t = 0; t < total; t += seg) s.push_back(std::min(seg, total - t));
    return s;
  };
  const int64_t d = 128;
  if (a.segment >= 0 && a.tokens_set) {
    const auto s = a.segment > 0 ? split(a.tokens, a.segment) : std::vector<int64_t>{a.tokens};
    const std::string what = a.segment > 0 ? "varlen, segments of " + std::to_string(a.segment) : "dense";
    bench_attention_case(ops, what.c_str(), s, s, a.heads, d, a.iters, a.operands);
    return 0;
  }
  // the 1.3B shape first, as the peer's part_attn times it: at the start, before the GPU
  // reaches its power cap (a few calls at 12 heads do not; docs/performance.md, tenth session)
  bench_attention_case(ops, "dense (1.3B shape)", {32760}, {32760}, 12, d, a.iters, a.operands);
  bench_attention_case(ops, "dense (14B shape)", {32760}, {32760}, 40, d, a.iters, a.operands);
  for (int64_t seg : {2048, 4096, 8192, 16384}) {
    const auto s = split(131072, seg);
    bench_attention_case(ops, ("varlen, segments of " + std::to_string(seg)).c_str(), s, s, 40, d, a.iters, a.operands);
  }
  const int64_t N = 187200, M = a.groups;
  const auto groups = split(N, (N + M - 1) / M);
  bench_attention_case(ops, ("MoGA groups, 187,200 tokens / " + std::to_string(M)).c_str(), groups,
                       groups, 12, d, a.iters, a.operands);
  const auto frames = split(N, 1560);
  bench_attention_case(ops, "MoGA frames or windows, 120 x 1,560", frames, frames, 12, d, a.iters, a.operands);
  // the 14B shape (40 heads), and groups as a trained router leaves them (uneven: one
  // block's sizes from a calibrated 14B forward)
  bench_attention_case(ops, ("MoGA groups (14B), 187,200 tokens / " + std::to_string(M)).c_str(), groups,
                       groups, 40, d, a.iters, a.operands);
  bench_attention_case(ops, "MoGA frames or windows (14B), 120 x 1,560", frames, frames, 40, d, a.iters, a.operands);
  const std::vector<int64_t> uneven{40305, 37464, 35201, 36846, 37384};
  bench_attention_case(ops, "MoGA groups, uneven (35,201 to 40,305)", uneven, uneven, 12, d, a.iters, a.operands);
  bench_attention_case(ops, "dense, 187,200 tokens", {N}, {N}, 12, d, 1, a.operands);
  return 0;
}

int bench_t5(const Args& a, Ops& ops) {
  UMT5Config cfg;  // umT5-XXL
  WeightMap wm = WeightMap::from_source(random_source(cfg.expected_weights()), Component::T5);
  UMT5Encoder enc(cfg, wm, ops);
  std::vector<int64_t> ids(a.tokens);
  for (int i = 0; i < a.tokens; ++i) ids[i] = 5 + (i * 7919) % 250000;
  enc.encode(ids);
  std::vector<double> times;
  for (int i = 0; i < std::max(a.iters, 5); ++i) {
    const double s = now();
    enc.encode(ids);
    times.push_back(now() - s);
  }
  std::sort(times.begin(), times.end());
  std::printf("umt5-xxl %d tokens: median %.1f ms\n", a.tokens, times[times.size() / 2] * 1e3);
  if (a.profile) print_profile(enc, [&] { enc.encode(ids); }, "umt5", "");
  return 0;
}

// Whether option k's value v is one of `allowed`; if not, says so ("mogagen_bench: --k:
// expected a, b or c, found 'v'") for the caller's usage exit.
bool one_of(const std::string& k, const std::string& v, std::initializer_list<const char*> allowed) {
  std::string expected;
  size_t i = 0;
  for (const char* x : allowed) {
    if (v == x) return true;
    expected += (i == 0 ? "" : i + 1 == allowed.size() ? " or " : ", ") + std::string(x);
    ++i;
  }
  std::fprintf(stderr, "mogagen_bench: %s: expected %s, found '%s'\n", k.c_str(), expected.c_str(), v.c_str());
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (argc > 1) a.what = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") a.model = v;
    else if (k == "--device") a.device = v;
    else if (k == "--attention") a.attention = v;
    else if (k == "--frames") a.frames = std::stoi(v);
    else if (k == "--height") a.height = std::stoi(v);
    else if (k == "--width") a.width = std::stoi(v);
    else if (k == "--iters") a.iters = std::stoi(v);
    else if (k == "--groups") a.groups = std::stoi(v);
    else if (k == "--tokens") a.tokens = std::stoi(v), a.tokens_set = true;
    else if (k == "--heads") a.heads = std::stoi(v);
    else if (k == "--segment") a.segment = std::stoi(v);
    else if (k == "--text") a.text = std::stoi(v);
    else if (k == "--profile") a.profile = v == "1" || v == "on" || v == "true";
    else if (k == "--warmup") a.warmup = std::stoi(v);
    else if (k == "--router") a.router = v;
    else if (k == "--layers") a.layers = std::stoi(v);
    else if (k == "--norm-weights") {
      if (!one_of(k, v, {"one", "small"})) return 2;
      g_unit_norms = v == "one";
    }
    else if (k == "--operands") {
      if (!one_of(k, v, {"normal", "unit", "small"})) return 2;
      a.operands = v;
    }
    else if (k == "--log") {
      if (!one_of(k, v, {"quiet", "info", "verbose"})) return 2;
      set_log_level(v);
    }
    else {
      std::fprintf(stderr, "mogagen_bench: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  try {
    auto ops = make_ops(a.device);
    if (a.what == "dit") return bench_dit(a, *ops);
    if (a.what == "vae") return bench_vae(a, *ops);
    if (a.what == "t5") return bench_t5(a, *ops);
    if (a.what == "attention") return bench_attention(a, *ops);
    std::fprintf(stderr, "mogagen_bench: expected dit, vae, t5 or attention\n");
    return 2;
  } catch (const Error& e) {
    std::fprintf(stderr, "mogagen_bench: %s\n", e.what());
    return int(e.code());
  }
}
