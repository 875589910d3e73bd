// umT5 encoder: golden outputs (wan-a; wan-c with 150 tokens, past max_distance), the exact
// relative-position bucket table, config parsing and inference, a plain host reference on a
// tiny random model, and `verify t5` on a case whose padding is not only at the end.
#include "test_util.h"
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <utility>

#include "models/umt5/umt5.h"
#include "pipeline/verify.h"

using namespace mg;
namespace fs = std::filesystem;

// ---- golden ------------------------------------------------------------------------------

class UMT5Golden : public ::testing::TestWithParam<const char*> {};

TEST_P(UMT5Golden, MatchesReference) {
  const std::string dir = testutil::golden_dir() + "/" + GetParam() + "/t5";
  if (!fs::exists(dir)) GTEST_SKIP() << "golden data absent: " << dir;
  auto ops = make_cpu_ops();
  const auto lines = verify_t5(dir, *ops);
  ASSERT_EQ(lines.size(), 1u);
  std::cout << "  " << GetParam() << " " << lines[0].name << ": rel " << lines[0].rel_err << "\n";
  EXPECT_LE(lines[0].rel_err, 1e-4) << lines[0].name;
}

INSTANTIATE_TEST_SUITE_P(Sets, UMT5Golden, ::testing::Values("wan-a", "wan-c"));

// ---- relative position buckets --------------------------------------------------------------

TEST(UMT5, RelativeBucketTableIsExact) {
  // wan-notes §2.3: offsets for n = |rel| >= 8, with the integer boundaries 16, 32, 64.
  struct Row {
    int lo, hi, off;
  } rows[] = {{8, 11, 8},   {12, 15, 9},  {16, 22, 10}, {23, 31, 11},
              {32, 45, 12}, {46, 63, 13}, {64, 90, 14}, {91, 600, 15}};
  for (const auto& r : rows)
    for (int n = r.lo; n <= r.hi; ++n) {
      EXPECT_EQ(t5_relative_bucket(n, 32, 128), 16 + r.off) << "rel +" << n;
      EXPECT_EQ(t5_relative_bucket(-n, 32, 128), r.off) << "rel -" << n;
    }
  for (int n = 0; n < 8; ++n) {
    EXPECT_EQ(t5_relative_bucket(-n, 32, 128), n);
    if (n) {
      EXPECT_EQ(t5_relative_bucket(n, 32, 128), 16 + n);
    }
  }
  // the integer boundaries a fast log gets wrong, and far past max_distance
  EXPECT_EQ(t5_relative_bucket(15, 32, 128), 25);
  EXPECT_EQ(t5_relative_bucket(16, 32, 128), 26);
  EXPECT_EQ(t5_relative_bucket(-31, 32, 128), 11);
  EXPECT_EQ(t5_relative_bucket(-32, 32, 128), 12);
  EXPECT_EQ(t5_relative_bucket(63, 32, 128), 29);
  EXPECT_EQ(t5_relative_bucket(64, 32, 128), 30);
  EXPECT_EQ(t5_relative_bucket(-100000, 32, 128), 15);
  EXPECT_EQ(t5_relative_bucket(100000, 32, 128), 31);
}

// ---- config ---------------------------------------------------------------------------------

TEST(UMT5, ConfigFromHuggingFaceJson) {
  const auto c = UMT5Config::from_json(nlohmann::json::parse(R"({
      "architectures": ["UMT5EncoderModel"], "model_type": "umt5", "vocab_size": 300,
      "d_model": 48, "d_kv": 12, "d_ff": 80, "num_layers": 3, "num_decoder_layers": 3,
      "num_heads": 4, "relative_attention_num_buckets": 32,
      "relative_attention_max_distance": 64, "layer_norm_epsilon": 1e-5,
      "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": true})"));
  EXPECT_EQ(c.vocab_size, 300);
  EXPECT_EQ(c.d_model, 48);
  EXPECT_EQ(c.d_kv, 12);
  EXPECT_EQ(c.d_ff, 80);
  EXPECT_EQ(c.num_layers, 3);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.relative_attention_num_buckets, 32);
  EXPECT_EQ(c.relative_attention_max_distance, 64);
  EXPECT_DOUBLE_EQ(c.layer_norm_epsilon, 1e-5);
  const auto w = c.expected_weights();
  EXPECT_EQ(w.size(), 2u + 3u * 10u);
  std::map<std::string, Shape> by_name;
  for (const auto& s : w) by_name[s.name] = s.shape;
  EXPECT_EQ(by_name.at("shared.weight"), (Shape{300, 48}));
  EXPECT_EQ(by_name.at("encoder.block.2.layer.0.SelfAttention.q.weight"), (Shape{48, 48}));
  EXPECT_EQ(by_name.at("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"),
            (Shape{32, 4}));
  EXPECT_EQ(by_name.at("encoder.block.0.layer.1.DenseReluDense.wo.weight"), (Shape{48, 80}));
  EXPECT_EQ(by_name.at("encoder.final_layer_norm.weight"), (Shape{48}));
  // defaults are umT5-XXL's
  const auto xxl = UMT5Config::from_json(nlohmann::json::object());
  EXPECT_EQ(xxl.d_model, 4096);
  EXPECT_EQ(xxl.num_layers, 24);
  EXPECT_EQ(xxl.relative_attention_max_distance, 128);
  EXPECT_THROW(UMT5Config::from_json(nlohmann::json::parse(R"({"d_model": "big"})")), Error);
  EXPECT_THROW(UMT5Config::from_json(nlohmann::json::parse(R"({"num_heads": 0})")), Error);
}

// ---- a tiny random model against a plain host reference ------------------------------------

namespace {

UMT5Config tiny_config() {
  UMT5Config c;
  c.vocab_size = 50;
  c.d_model = 24;
  c.d_kv = 8;
  c.num_heads = 3;
  c.d_ff = 40;
  c.num_layers = 2;
  c.relative_attention_num_buckets = 32;
  c.relative_attention_max_distance = 20;  // so that a 40-token input passes it
  c.layer_norm_epsilon = 1e-6;
  return c;
}

std::map<std::string, Tensor> tiny_weights(const UMT5Config& c, uint32_t seed) {
  std::map<std::string, Tensor> w;
  for (const auto& s : c.expected_weights()) {
    const bool norm = s.name.find("layer_norm") != std::string::npos;
    const float scale = norm ? 0.2f : s.shape.size() == 2 ? 1.0f / std::sqrt(float(s.shape[1])) : 1.0f;
    Tensor t = testutil::randn(s.shape, seed++, scale);
    if (norm)
      for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] += 1.0f;
    if (s.name == "shared.weight")
      for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] *= 4.0f;
    w[s.name] = t;
  }
  return w;
}

// The encoder written out with loops, in double: wan-notes §2.2.
std::vector<double> reference_encode(const UMT5Config& c, const std::map<std::string, Tensor>& w,
                                     const std::vector<int64_t>& ids) {
  const int64_t L = int64_t(ids.size()), d = c.d_model, H = c.num_heads, dk = c.d_kv,
                inner = H * dk, f = c.d_ff;
  auto W = [&](const std::string& n) { return w.at(n).f32(); };
  std::vector<double> x(size_t(L * d));
  for (int64_t i = 0; i < L; ++i)
    for (int64_t k = 0; k < d; ++k) x[size_t(i * d + k)] = W("shared.weight")[ids[size_t(i)] * d + k];
  auto rms = [&](const std::vector<double>& in, const float* g) {
    std::vector<double> out(in.size());
    for (int64_t i = 0; i < L; ++i) {
      double ss = 0;
      for (int64_t k = 0; k < d; ++k) ss += in[size_t(i * d + k)] * in[size_t(i * d + k)];
      const double r = 1.0 / std::sqrt(ss / double(d) + c.layer_norm_epsilon);
      for (int64_t k = 0; k < d; ++k) out[size_t(i * d + k)] = in[size_t(i * d + k)] * r * g[k];
    }
    return out;
  };
  auto lin = [&](const std::vector<double>& in, int64_t K, const float* wt, int64_t N) {
    std::vector<double> out(size_t(L * N));
    for (int64_t i = 0; i < L; ++i)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += in[size_t(i * K + k)] * wt[n * K + k];
        out[size_t(i * N + n)] = s;
      }
    return out;
  };
  for (int b = 0; b < c.num_layers; ++b) {
    const std::string p = "encoder.block." + std::to_string(b) + ".";
    const auto a = rms(x, W(p + "layer.0.layer_norm.weight"));
    const auto q = lin(a, d, W(p + "layer.0.SelfAttention.q.weight"), inner);
    const auto k = lin(a, d, W(p + "layer.0.SelfAttention.k.weight"), inner);
    const auto v = lin(a, d, W(p + "layer.0.SelfAttention.v.weight"), inner);
    const float* table = W(p + "layer.0.SelfAttention.relative_attention_bias.weight");
    std::vector<double> o(size_t(L * inner), 0.0);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < L; ++i) {
        std::vector<double> lg(static_cast<size_t>(L));
        double mx = -1e300;
        for (int64_t j = 0; j < L; ++j) {
          double s = 0;
          for (int64_t e = 0; e < dk; ++e) s += q[size_t(i * inner + h * dk + e)] * k[size_t(j * inner + h * dk + e)];
          const int bk = t5_relative_bucket(j - i, c.relative_attention_num_buckets,
                                            c.relative_attention_max_distance);
          lg[size_t(j)] = s + table[bk * H + h];  // no 1/sqrt(d_kv)
          mx = std::max(mx, lg[size_t(j)]);
        }
        double den = 0;
        for (auto& z : lg) den += (z = std::exp(z - mx));
        for (int64_t j = 0; j < L; ++j)
          for (int64_t e = 0; e < dk; ++e)
            o[size_t(i * inner + h * dk + e)] += lg[size_t(j)] / den * v[size_t(j * inner + h * dk + e)];
      }
    const auto ao = lin(o, inner, W(p + "layer.0.SelfAttention.o.weight"), d);
    for (size_t t = 0; t < x.size(); ++t) x[t] += ao[t];
    const auto bn = rms(x, W(p + "layer.1.layer_norm.weight"));
    const auto g0 = lin(bn, d, W(p + "layer.1.DenseReluDense.wi_0.weight"), f);
    const auto g1 = lin(bn, d, W(p + "layer.1.DenseReluDense.wi_1.weight"), f);
    std::vector<double> gg(g0.size());
    for (size_t t = 0; t < gg.size(); ++t) {
      const double z = g0[t];
      gg[t] = 0.5 * z * (1.0 + std::tanh(std::sqrt(2.0 / 3.14159265358979323846) * (z + 0.044715 * z * z * z))) * g1[t];
    }
    const auto fo = lin(gg, f, W(p + "layer.1.DenseReluDense.wo.weight"), d);
    for (size_t t = 0; t < x.size(); ++t) x[t] += fo[t];
  }
  return rms(x, W("encoder.final_layer_norm.weight"));
}

double rel(const Tensor& out, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (double(out.f32()[i]) - ref[i]) * (double(out.f32()[i]) - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

std::vector<int64_t> tiny_ids(int64_t L, uint32_t seed) {
  std::vector<int64_t> ids;
  uint32_t s = seed;
  for (int64_t i = 0; i + 1 < L; ++i) {
    s = s * 1664525u + 1013904223u;
    ids.push_back(4 + int64_t(s >> 8) % 46);
  }
  ids.push_back(1);  // EOS
  return ids;
}

}  // namespace

TEST(UMT5, MatchesHostReferenceOnTinyModel) {
  const UMT5Config c = tiny_config();
  const auto w = tiny_weights(c, 7);
  const WeightMap m = WeightMap::from_source(TensorSource::from_tensors(w), Component::T5);
  auto ops = make_cpu_ops();
  UMT5Encoder enc(c, m, *ops);
  for (int64_t L : {1, 5, 40}) {  // 40 tokens: offsets beyond max_distance 20
    const auto ids = tiny_ids(L, uint32_t(L));
    const Tensor out = enc.encode(ids);
    ASSERT_EQ(out.shape(), (Shape{L, c.d_model}));
    EXPECT_LE(rel(out, reference_encode(c, w, ids)), 1e-5) << "L = " << L;
  }
  EXPECT_THROW(enc.encode({}), Error);
  try {
    enc.encode({5, 50, 1});  // id 50 is outside a 50-row vocabulary
    FAIL() << "no error for an out-of-vocabulary id";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadInput);
  }
}

// The TF32 policy (MOGAGEN_T5_MATMUL) changes nothing on the exact CPU backend, restores
// the backend's mode after encoding, and a bad value is an input error naming the variable.
TEST(UMT5, MatmulPolicyFromEnvironment) {
  const char* old = std::getenv("MOGAGEN_T5_MATMUL");
  const std::string saved = old ? old : "";
  unsetenv("MOGAGEN_T5_MATMUL");
  EXPECT_EQ(t5_matmul_from_env(), T5Matmul::SplitQK);
  setenv("MOGAGEN_T5_MATMUL", "exact", 1);
  EXPECT_EQ(t5_matmul_from_env(), T5Matmul::Exact);
  setenv("MOGAGEN_T5_MATMUL", "tf32", 1);
  EXPECT_EQ(t5_matmul_from_env(), T5Matmul::Tf32);
  setenv("MOGAGEN_T5_MATMUL", "split-qk", 1);
  EXPECT_EQ(t5_matmul_from_env(), T5Matmul::SplitQK);
  setenv("MOGAGEN_T5_MATMUL", "tf32-except-qk", 1);
  EXPECT_EQ(t5_matmul_from_env(), T5Matmul::Tf32ExceptQK);
  setenv("MOGAGEN_T5_MATMUL", "fast", 1);
  try {
    t5_matmul_from_env();
    ADD_FAILURE() << "no error for MOGAGEN_T5_MATMUL=fast";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadInput);
    EXPECT_NE(std::string(e.what()).find("MOGAGEN_T5_MATMUL"), std::string::npos) << e.what();
  }
  if (old) setenv("MOGAGEN_T5_MATMUL", saved.c_str(), 1); else unsetenv("MOGAGEN_T5_MATMUL");

  const UMT5Config c = tiny_config();
  const auto w = tiny_weights(c, 7);
  const WeightMap m = WeightMap::from_source(TensorSource::from_tensors(w), Component::T5);
  auto ops = make_cpu_ops();
  const auto ids = tiny_ids(12, 3);
  for (T5Matmul mm : {T5Matmul::Exact, T5Matmul::Tf32ExceptQK, T5Matmul::SplitQK, T5Matmul::Tf32}) {
    UMT5Encoder enc(c, m, *ops, mm);
    EXPECT_LE(rel(enc.encode(ids), reference_encode(c, w, ids)), 1e-5);
    EXPECT_EQ(ops->set_f32_matmul(Ops::F32Matmul::Exact), Ops::F32Matmul::Exact);  // restored
  }
}

// On the GPU each policy stays within the bf16 bar of the CPU reference, and the default
// (TF32 except q/k) within the TF32 one.
TEST(UMT5, GpuMatmulPoliciesMatchCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const UMT5Config c = tiny_config();
  const auto w = tiny_weights(c, 9);
  const WeightMap m = WeightMap::from_source(TensorSource::from_tensors(w), Component::T5);
  auto gpu = make_cuda_ops(0);
  const auto ids = tiny_ids(40, 5);
  const auto ref = reference_encode(c, w, ids);
  for (auto [mm, tol] : {std::pair{T5Matmul::Exact, 1e-5}, {T5Matmul::Tf32ExceptQK, 3e-3},
                         {T5Matmul::SplitQK, 3e-3}, {T5Matmul::Tf32, 2e-2}}) {
    UMT5Encoder enc(c, m, *gpu, mm);
    const double e = rel(enc.encode(ids), ref);
    std::printf("  umT5 GPU policy %d: rel err %.3e\n", int(mm), e);
    EXPECT_LE(e, tol) << int(mm);
  }
}

TEST(UMT5, InfersConfigFromWeights) {
  const UMT5Config c = tiny_config();
  const WeightMap m = WeightMap::from_source(TensorSource::from_tensors(tiny_weights(c, 3)), Component::T5);
  const UMT5Config i = UMT5Config::infer(m);
  EXPECT_EQ(i.vocab_size, c.vocab_size);
  EXPECT_EQ(i.d_model, c.d_model);
  EXPECT_EQ(i.d_kv, c.d_kv);
  EXPECT_EQ(i.d_ff, c.d_ff);
  EXPECT_EQ(i.num_layers, c.num_layers);
  EXPECT_EQ(i.num_heads, c.num_heads);
  EXPECT_EQ(i.relative_attention_num_buckets, c.relative_attention_num_buckets);
}

TEST(UMT5, VerifyComparesTheMaskedRowsWherever) {
  // A case with padding before and after the real tokens: verify encodes only the real ones
  // and compares them with the reference rows at the mask's positions.
  const UMT5Config c = tiny_config();
  const auto w = tiny_weights(c, 11);
  const auto ids = tiny_ids(30, 5);
  const auto ref = reference_encode(c, w, ids);
  const int64_t pad_front = 3, pad_back = 7, L = pad_front + 30 + pad_back, d = c.d_model;
  Tensor in_ids = Tensor::zeros({L}, DType::I64), mask = Tensor::zeros({L}, DType::I64);
  Tensor hs = testutil::randn({L, d}, 99);  // padded rows: anything
  for (int64_t i = 0; i < 30; ++i) {
    in_ids.data<int64_t>()[pad_front + i] = ids[size_t(i)];
    mask.data<int64_t>()[pad_front + i] = 1;
    for (int64_t k = 0; k < d; ++k) hs.f32()[(pad_front + i) * d + k] = float(ref[size_t(i * d + k)]);
  }
  const testutil::TempDir tmp("umt5");
  const std::string& dir = tmp.path;
  std::ofstream(dir + "/config.json")
      << nlohmann::json{{"vocab_size", c.vocab_size}, {"d_model", c.d_model}, {"d_kv", c.d_kv},
                        {"d_ff", c.d_ff}, {"num_layers", c.num_layers}, {"num_heads", c.num_heads},
                        {"relative_attention_num_buckets", c.relative_attention_num_buckets},
                        {"relative_attention_max_distance", c.relative_attention_max_distance},
                        {"layer_norm_epsilon", c.layer_norm_epsilon}}
             .dump();
  write_safetensors(dir + "/weights_hf.safetensors", w);
  write_safetensors(dir + "/case.safetensors",
                    {{"input_ids", in_ids}, {"attention_mask", mask}, {"last_hidden_state", hs}});
  auto ops = make_cpu_ops();
  const auto lines = verify_t5(dir, *ops);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].name, "t5[hf] last_hidden_state");
  EXPECT_LE(lines[0].rel_err, 1e-5);
  // a case without the expected tensor is an input error
  write_safetensors(dir + "/case.safetensors", {{"input_ids", in_ids}, {"attention_mask", mask}});
  try {
    verify_t5(dir, *ops);
    FAIL() << "no error for a case without last_hidden_state";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadInput);
    EXPECT_NE(std::string(e.what()).find("last_hidden_state"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}
