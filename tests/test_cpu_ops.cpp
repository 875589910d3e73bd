// Each CPU op against a naive, loop-by-loop reference on random data.
#include "test_util.h"
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "mogagen/ops.h"

using namespace mg;

namespace {

using testutil::randn;

void expect_close(const Tensor& a, const Tensor& b, double tol = 1e-5) {
  ASSERT_EQ(a.numel(), b.numel());
  EXPECT_LT(rel_error(a, b), tol);
}

Tensor naive_linear(const Tensor& x, const Tensor& w, const Tensor* b) {
  const int64_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
  Tensor y = Tensor::empty({m, n});
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = b ? b->f32()[j] : 0.0;
      for (int64_t l = 0; l < k; ++l) s += double(x.f32()[i * k + l]) * w.f32()[j * k + l];
      y.f32()[i * n + j] = float(s);
    }
  return y;
}

// o[i,h,:] = softmax_j(scale q_i.k_j + bias[h,i,j]) v_j over a key range
void naive_attn(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& o, int64_t q0,
                int64_t q1, int64_t k0, int64_t k1, float scale, const Tensor* bias) {
  const int64_t h = q.dim(1), d = q.dim(2), nq = q.dim(0), nk = k.dim(0);
  for (int64_t hh = 0; hh < h; ++hh)
    for (int64_t i = q0; i < q1; ++i) {
      std::vector<double> s(k1 - k0);
      double mx = -1e300;
      for (int64_t j = k0; j < k1; ++j) {
        double a = 0;
        for (int64_t c = 0; c < d; ++c)
          a += double(q.f32()[(i * h + hh) * d + c]) * k.f32()[(j * h + hh) * d + c];
        a *= scale;
        if (bias) a += bias->f32()[(hh * nq + i) * nk + j];
        s[j - k0] = a;
        mx = std::max(mx, a);
      }
      double sum = 0;
      for (auto& x : s) sum += (x = std::exp(x - mx));
      for (int64_t c = 0; c < d; ++c) {
        double acc = 0;
        for (int64_t j = k0; j < k1; ++j) acc += s[j - k0] / sum * v.f32()[(j * h + hh) * d + c];
        o.f32()[(i * h + hh) * d + c] = float(acc);
      }
    }
}

}  // namespace

TEST(CpuOps, LinearMatchesNaive) {
  auto ops = make_cpu_ops();
  Tensor x = randn({7, 13}, 1), w = randn({5, 13}, 2), b = randn({5}, 3);
  expect_close(ops->linear(x, w, &b), naive_linear(x, w, &b));
  expect_close(ops->linear(x, w, nullptr), naive_linear(x, w, nullptr));
  // leading dims are flattened
  Tensor y = ops->linear(x.reshape({7, 1, 13}), w, &b);
  EXPECT_EQ(y.shape(), (Shape{7, 1, 5}));
}

TEST(CpuOps, LinearGeluIsTheComposition) {
  auto ops = make_cpu_ops();
  Tensor x = randn({9, 16}, 60), w = randn({24, 16}, 61), b = randn({24}, 62);
  expect_close(ops->linear_gelu(x, w, &b), ops->gelu_tanh(ops->linear(x, w, &b)), 1e-12);
}

// The GEMM-input forms are the float32 values themselves on the CPU (the reference).
TEST(CpuOps, GemmInputFormsAreFloat32) {
  auto ops = make_cpu_ops();
  const Tensor x = randn({6, 16}, 68), sh = randn({16}, 69), sc = randn({16}, 70);
  EXPECT_EQ(rel_error(ops->gemm_input(x), x), 0.0);
  const Tensor g = ops->layer_norm_modulate_gemm(x, sh, sc, 1e-6f);
  EXPECT_EQ(g.dtype(), DType::F32);
  EXPECT_EQ(rel_error(g, ops->layer_norm_modulate(x, sh, sc, 1e-6f)), 0.0);
  const Tensor w = randn({8, 16}, 79), b = randn({8}, 80);
  const Tensor lc = ops->linear_compact(x, w, &b);
  EXPECT_EQ(lc.dtype(), DType::F32);
  EXPECT_EQ(rel_error(lc, ops->linear(x, w, &b)), 0.0);
  EXPECT_EQ(rel_error(ops->layer_norm_gemm(x, &sh, &sc, 1e-6f), ops->layer_norm(x, &sh, &sc, 1e-6f)), 0.0);
  const Tensor q = ops->rms_norm_compact(x, sh, 1e-6f, 4);
  EXPECT_EQ(q.shape(), (Shape{6, 4, 4}));
  EXPECT_EQ(rel_error(q, ops->rms_norm(x, sh, 1e-6f).reshape({6, 4, 4})), 0.0);
  EXPECT_THROW(ops->rms_norm_compact(x, sh, 1e-6f, 5), Error);
}

// T5's relative position bias: bias[h, i, j] = table[bucket[j - i + L - 1], h], against the
// gather-and-transpose it replaced (every entry written from the right table cell).
TEST(CpuOps, RelativePositionBias) {
  auto ops = make_cpu_ops();
  const int64_t nb = 6, H = 3;
  const Tensor table = randn({nb, H}, 71);
  for (int64_t L : {1, 2, 9}) {
    std::vector<int64_t> rel(size_t(2 * L - 1)), full;
    for (size_t r = 0; r < rel.size(); ++r) rel[r] = int64_t(r * 5 + 1) % nb;
    for (int64_t i = 0; i < L; ++i)
      for (int64_t j = 0; j < L; ++j) full.push_back(rel[size_t(j - i + L - 1)]);
    const Tensor ref = ops->transpose(ops->gather_rows(table, full)).reshape({H, L, L});
    const Tensor y = ops->relative_position_bias(table, ops->index(rel), L);
    EXPECT_EQ(y.shape(), (Shape{H, L, L}));
    EXPECT_EQ(rel_error(y, ref), 0.0) << "L " << L;
  }
  // offsets beyond the table, or a bucket list of the wrong length, are refused
  EXPECT_THROW(ops->relative_position_bias(table, ops->index({0, nb, 0}), 2), Error);
  EXPECT_THROW(ops->relative_position_bias(table, ops->index({0, 1}), 2), Error);
}

// The CPU's MoGA permutation ops are their definitions: a permutation undone with weights
// (zeros, then the scatter), and the branch mean in float32.
TEST(CpuOps, UnpermuteRowsAndMeanInput) {
  auto ops = make_cpu_ops();
  const Tensor x = randn({5, 4}, 72), a = randn({5, 4}, 73);
  const std::vector<int64_t> perm{3, 0, 4, 1, 2};
  const Tensor w = Tensor::from_vector({0.5f, 2.0f, -1.0f, 0.25f, 3.0f}, {5});
  const Tensor y = ops->unpermute_rows(x, ops->index(perm), &w);
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = 0; j < 4; ++j)
      EXPECT_EQ(y.f32()[perm[size_t(i)] * 4 + j], x.f32()[i * 4 + j] * w.f32()[i]);
  const Tensor m = ops->add_scale_gemm_input(a, x, 1.0f / 3.0f);
  EXPECT_EQ(m.dtype(), DType::F32);
  for (int64_t i = 0; i < 20; ++i) EXPECT_EQ(m.f32()[i], (a.f32()[i] + x.f32()[i]) * (1.0f / 3.0f));
  EXPECT_THROW(ops->unpermute_rows(x, ops->index({0, 0, 1, 2, 3}), nullptr), Error);  // a repeat
}

// linear_residual_ is its definition on the CPU: linear, then gated_add_ (or add_).
TEST(CpuOps, LinearResidualIsTheComposition) {
  auto ops = make_cpu_ops();
  const Tensor x = randn({6, 8}, 74), w = randn({5, 8}, 75), b = randn({5}, 76), g = randn({1, 5}, 77);
  const Tensor acc0 = randn({6, 5}, 78);
  Tensor gated = acc0.clone(), plain = acc0.clone(), want_g = acc0.clone(), want_p = acc0.clone();
  ops->linear_residual_(gated, x, w, &b, &g);
  ops->gated_add_(want_g, ops->linear(x, w, &b), g);
  ops->linear_residual_(plain, x, w, &b, nullptr);
  ops->add_(want_p, ops->linear(x, w, &b));
  EXPECT_EQ(rel_error(gated, want_g), 0.0);
  EXPECT_EQ(rel_error(plain, want_p), 0.0);
  EXPECT_GT(rel_error(gated, acc0), 0.0);
}

// The VAE's cache after a chunk: the last two frames of [old, x] in time order, from no cache
// yet, one or two cached frames, and one or three new frames.
TEST(CpuOps, CacheTailKeepsTheLastFrames) {
  auto ops = make_cpu_ops();
  const int64_t f = 6;  // 2 x 3 pixels
  auto frames = [&](int64_t t, float base) {  // [1, t, 2, 3], frame i filled with base + i
    Tensor v = Tensor::empty({1, t, 2, 3});
    for (int64_t i = 0; i < t * f; ++i) v.f32()[i] = base + float(i / f);
    return v;
  };
  for (int64_t old_t : {0, 1, 2})
    for (int64_t t : {1, 3}) {
      const Tensor old = old_t ? frames(old_t, 10.0f) : Tensor(), x = frames(t, 20.0f);
      const Tensor k = ops->cache_tail(old, x, 2);
      std::vector<float> want;  // the timeline [old, x], its last two frames
      for (int64_t i = 0; i < old_t; ++i) want.push_back(10.0f + float(i));
      for (int64_t i = 0; i < t; ++i) want.push_back(20.0f + float(i));
      want.erase(want.begin(), want.end() - std::min<int64_t>(2, int64_t(want.size())));
      ASSERT_EQ(k.dim(1), int64_t(want.size())) << "old " << old_t << ", x " << t;
      for (size_t j = 0; j < want.size(); ++j)
        for (int64_t p = 0; p < f; ++p) EXPECT_EQ(k.f32()[int64_t(j) * f + p], want[j]);
    }
}

// rms_norm_rope is exactly its composition on the CPU (the reference).
TEST(CpuOps, RmsNormRopeIsTheComposition) {
  auto ops = make_cpu_ops();
  const int64_t n = 7, h = 3, hd = 8;
  const Tensor x = randn({n, h * hd}, 64), w = randn({h * hd}, 65);
  const Tensor c = randn({n, hd / 2}, 66), s = randn({n, hd / 2}, 67);
  Tensor ref = ops->rms_norm(x, w, 1e-6f).reshape({n, h, hd});
  ops->rope_(ref, c, s);
  const Tensor y = ops->rms_norm_rope(x, w, 1e-6f, h, c, s);
  EXPECT_EQ(y.shape(), (Shape{n, h, hd}));
  EXPECT_EQ(rel_error(y, ref), 0.0);
  EXPECT_THROW(ops->rms_norm_rope(x, w, 1e-6f, 5, c, s), Error);  // 24 is not 5 heads
}

// The CPU is the exact reference: frames held for a later chunk stay float32 as they were.
TEST(CpuOps, HoldFramesIsExact) {
  auto ops = make_cpu_ops();
  const Tensor a = randn({3, 2, 4, 5}, 63);
  const Tensor h = ops->hold_frames(a);
  EXPECT_EQ(h.dtype(), DType::F32);
  EXPECT_EQ(rel_error(h, a), 0.0);
}

TEST(CpuOps, AttentionWithBiasMatchesNaive) {
  auto ops = make_cpu_ops();
  Tensor q = randn({9, 3, 8}, 4), k = randn({11, 3, 8}, 5), v = randn({11, 3, 8}, 6);
  Tensor bias = randn({3, 9, 11}, 7);
  Tensor ref = Tensor::zeros(q.shape());
  naive_attn(q, k, v, ref, 0, 9, 0, 11, 0.3f, &bias);
  expect_close(ops->attention(q, k, v, 0.3f, &bias), ref);
  Tensor ref2 = Tensor::zeros(q.shape());
  naive_attn(q, k, v, ref2, 0, 9, 0, 11, 1.0f, nullptr);
  expect_close(ops->attention(q, k, v, 1.0f, nullptr), ref2);
}

TEST(CpuOps, AttentionVarlenMatchesPerSegment) {
  auto ops = make_cpu_ops();
  Tensor q = randn({10, 2, 4}, 8), k = randn({12, 2, 4}, 9), v = randn({12, 2, 4}, 10);
  CuSeqlens cq{0, 3, 3, 10}, ck{0, 5, 7, 12};  // middle query segment is empty
  Tensor ref = Tensor::zeros(q.shape());
  naive_attn(q, k, v, ref, 0, 3, 0, 5, 0.5f, nullptr);
  naive_attn(q, k, v, ref, 3, 10, 7, 12, 0.5f, nullptr);
  expect_close(ops->attention_varlen(q, k, v, cq, ck, 0.5f), ref);
  EXPECT_THROW(ops->attention_varlen(q, k, v, {0, 3}, {0, 12}, 0.5f), Error);
}

TEST(CpuOps, NormsMatchNaive) {
  auto ops = make_cpu_ops();
  Tensor x = randn({6, 10}, 11, 3.0f), w = randn({10}, 12), b = randn({10}, 13);
  Tensor sh = randn({10}, 14), sc = randn({10}, 15);
  Tensor ln = Tensor::empty(x.shape()), lnm = Tensor::empty(x.shape()), rms = Tensor::empty(x.shape());
  for (int i = 0; i < 6; ++i) {
    double m = 0, v = 0, ss = 0;
    for (int j = 0; j < 10; ++j) m += x.f32()[i * 10 + j];
    m /= 10;
    for (int j = 0; j < 10; ++j) {
      double d = x.f32()[i * 10 + j] - m;
      v += d * d;
      ss += double(x.f32()[i * 10 + j]) * x.f32()[i * 10 + j];
    }
    v /= 10;
    for (int j = 0; j < 10; ++j) {
      double n = (x.f32()[i * 10 + j] - m) / std::sqrt(v + 1e-6);
      ln.f32()[i * 10 + j] = float(n * w.f32()[j] + b.f32()[j]);
      lnm.f32()[i * 10 + j] = float(n * (1 + sc.f32()[j]) + sh.f32()[j]);
      rms.f32()[i * 10 + j] = float(x.f32()[i * 10 + j] / std::sqrt(ss / 10 + 1e-6) * w.f32()[j]);
    }
  }
  expect_close(ops->layer_norm(x, &w, &b, 1e-6f), ln);
  expect_close(ops->layer_norm_modulate(x, sh, sc, 1e-6f), lnm);
  expect_close(ops->rms_norm(x, w, 1e-6f), rms);
}

TEST(CpuOps, ChannelL2NormMatchesNaive) {
  auto ops = make_cpu_ops();
  Tensor x = randn({5, 2, 3, 4}, 16), g = randn({5}, 17);
  Tensor ref = Tensor::empty(x.shape());
  const int64_t p = 24;
  for (int64_t i = 0; i < p; ++i) {
    double ss = 0;
    for (int c = 0; c < 5; ++c) ss += double(x.f32()[c * p + i]) * x.f32()[c * p + i];
    double n = std::max(std::sqrt(ss), 1e-12);
    for (int c = 0; c < 5; ++c)
      ref.f32()[c * p + i] = float(x.f32()[c * p + i] / n * std::sqrt(5.0) * g.f32()[c]);
  }
  expect_close(ops->channel_l2_norm(x, g), ref);
  // an all-zero position stays zero (eps clamps the norm, no NaN)
  Tensor z = Tensor::zeros({3, 1, 1, 2});
  Tensor y = ops->channel_l2_norm(z, Tensor::full({3}, 1.0f));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(y.f32()[i], 0.0f);
}

TEST(CpuOps, ElementwiseMatchNaive) {
  auto ops = make_cpu_ops();
  Tensor a = randn({4, 6}, 18, 2.0f), b = randn({4, 6}, 19), g = randn({6}, 20);
  Tensor ge = ops->gelu_tanh(a), si = ops->silu(a), gm = ops->gelu_tanh_mul(a, b);
  Tensor ar = ops->add_row(a, g);
  Tensor acc = a.clone();
  ops->gated_add_(acc, b, g);
  for (int i = 0; i < 24; ++i) {
    const double x = a.f32()[i];
    const double gel = 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    EXPECT_NEAR(ge.f32()[i], gel, 1e-5);
    EXPECT_NEAR(si.f32()[i], x / (1 + std::exp(-x)), 1e-5);
    EXPECT_NEAR(gm.f32()[i], gel * b.f32()[i], 1e-5);
    EXPECT_NEAR(ar.f32()[i], x + g.f32()[i % 6], 1e-6);
    EXPECT_NEAR(acc.f32()[i], x + b.f32()[i] * g.f32()[i % 6], 1e-6);
  }
  Tensor c = ops->clamp(a, -1.0f, 1.0f);
  for (int i = 0; i < 24; ++i) EXPECT_EQ(c.f32()[i], std::min(1.0f, std::max(-1.0f, a.f32()[i])));
}

TEST(CpuOps, RopeMatchesNaive) {
  auto ops = make_cpu_ops();
  Tensor x = randn({3, 2, 6}, 21), ang = randn({3, 3}, 22);
  Tensor c = Tensor::empty({3, 3}), s = Tensor::empty({3, 3});
  for (int i = 0; i < 9; ++i) {
    c.f32()[i] = std::cos(ang.f32()[i]);
    s.f32()[i] = std::sin(ang.f32()[i]);
  }
  Tensor y = x.clone();
  ops->rope_(y, c, s);
  for (int n = 0; n < 3; ++n)
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 3; ++j) {
        const float re = x.f32()[(n * 2 + h) * 6 + 2 * j], im = x.f32()[(n * 2 + h) * 6 + 2 * j + 1];
        const float a = ang.f32()[n * 3 + j];
        EXPECT_NEAR(y.f32()[(n * 2 + h) * 6 + 2 * j], re * std::cos(a) - im * std::sin(a), 1e-5);
        EXPECT_NEAR(y.f32()[(n * 2 + h) * 6 + 2 * j + 1], re * std::sin(a) + im * std::cos(a), 1e-5);
      }
}

TEST(CpuOps, Conv3dMatchesNaive) {
  auto ops = make_cpu_ops();
  Tensor x = randn({3, 4, 5, 6}, 23), w = randn({2, 3, 3, 3, 3}, 24), b = randn({2}, 25);
  Tensor y = ops->conv3d(x, w, &b, 2, 1, 1);  // causal: 2 frames in front
  ASSERT_EQ(y.shape(), (Shape{2, 4, 5, 6}));
  Tensor ref = Tensor::empty(y.shape());
  for (int co = 0; co < 2; ++co)
    for (int t = 0; t < 4; ++t)
      for (int i = 0; i < 5; ++i)
        for (int j = 0; j < 6; ++j) {
          double s = b.f32()[co];
          for (int ci = 0; ci < 3; ++ci)
            for (int dt = 0; dt < 3; ++dt)
              for (int dy = 0; dy < 3; ++dy)
                for (int dx = 0; dx < 3; ++dx) {
                  const int it = t + dt - 2, iy = i + dy - 1, ix = j + dx - 1;
                  if (it < 0 || iy < 0 || iy >= 5 || ix < 0 || ix >= 6) continue;
                  s += double(w.f32()[(((co * 3 + ci) * 3 + dt) * 3 + dy) * 3 + dx]) *
                       x.f32()[((ci * 4 + it) * 5 + iy) * 6 + ix];
                }
          ref.f32()[((co * 4 + t) * 5 + i) * 6 + j] = float(s);
        }
  expect_close(y, ref);
  // 1x1x1 conv equals a linear over channels
  Tensor w1 = randn({4, 3, 1, 1, 1}, 26);
  Tensor y1 = ops->conv3d(x, w1, nullptr, 0, 0, 0);
  Tensor lin = ops->linear(ops->transpose(x.reshape({3, 120})), w1.reshape({4, 3}), nullptr);
  expect_close(y1.reshape({4, 120}), ops->transpose(lin));
}

TEST(CpuOps, VideoReshapesMatchNaive) {
  auto ops = make_cpu_ops();
  Tensor x = randn({4, 2, 2, 3}, 27);
  Tensor u = ops->upsample2x(x);
  ASSERT_EQ(u.shape(), (Shape{4, 2, 4, 6}));
  for (int c = 0; c < 4; ++c)
    for (int t = 0; t < 2; ++t)
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 6; ++j)
          EXPECT_EQ(u.f32()[((c * 2 + t) * 4 + i) * 6 + j], x.f32()[((c * 2 + t) * 2 + i / 2) * 3 + j / 2]);
  Tensor il = ops->interleave_time(x);  // [2, 4, 2, 3]
  ASSERT_EQ(il.shape(), (Shape{2, 4, 2, 3}));
  for (int s = 0; s < 2; ++s)
    for (int c = 0; c < 2; ++c)
      for (int t = 0; t < 2; ++t)
        for (int p = 0; p < 6; ++p)
          EXPECT_EQ(il.f32()[(c * 4 + 2 * t + s) * 6 + p], x.f32()[((s * 2 + c) * 2 + t) * 6 + p]);
  Tensor cat = ops->cat_time(x, ops->slice_time(x, 1, 2));
  ASSERT_EQ(cat.shape(), (Shape{4, 3, 2, 3}));
  for (int c = 0; c < 4; ++c)
    for (int p = 0; p < 6; ++p) {
      EXPECT_EQ(cat.f32()[(c * 3 + 0) * 6 + p], x.f32()[(c * 2 + 0) * 6 + p]);
      EXPECT_EQ(cat.f32()[(c * 3 + 2) * 6 + p], x.f32()[(c * 2 + 1) * 6 + p]);
    }
  Tensor m = randn({3, 5}, 28), tr = ops->transpose(m);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 5; ++j) EXPECT_EQ(tr.f32()[j * 3 + i], m.f32()[i * 5 + j]);
}

TEST(CpuOps, GatherScatterRows) {
  auto ops = make_cpu_ops();
  Tensor x = randn({5, 3}, 29);
  Tensor g = ops->gather_rows(x, {4, 0, 4});
  for (int j = 0; j < 3; ++j) {
    EXPECT_EQ(g.f32()[j], x.f32()[12 + j]);
    EXPECT_EQ(g.f32()[3 + j], x.f32()[j]);
  }
  Tensor out = Tensor::zeros({5, 3});
  std::vector<float> w{0.5f, 2.0f, 1.0f};
  ops->scatter_add_rows_(out, g, {1, 2, 1}, &w);
  for (int j = 0; j < 3; ++j) {
    EXPECT_FLOAT_EQ(out.f32()[3 + j], 0.5f * x.f32()[12 + j] + x.f32()[12 + j]);
    EXPECT_FLOAT_EQ(out.f32()[6 + j], 2.0f * x.f32()[j]);
    EXPECT_EQ(out.f32()[j], 0.0f);
  }
  EXPECT_THROW(ops->gather_rows(x, {5}), Error);
}

// Index tensors (Ops::index) give the same gathers and scatters as host lists; a repeated
// row in a scatter's index tensor is refused (one writer per row).
TEST(CpuOps, GatherScatterWithIndexTensors) {
  auto ops = make_cpu_ops();
  Tensor x = randn({6, 4}, 31);
  const std::vector<int64_t> perm{5, 2, 0, 3};
  const Tensor idx = ops->index(perm);
  ASSERT_EQ(idx.dtype(), DType::I64);
  expect_close(ops->gather_rows(x, idx), ops->gather_rows(x, perm), 1e-12);
  const Tensor src = randn({4, 4}, 32);
  const std::vector<float> w{0.5f, -2.0f, 1.5f, 3.0f};
  Tensor a = randn({6, 4}, 33), b = a.clone();
  const Tensor wt = Tensor::from_vector(w, {4});
  ops->scatter_add_rows_(a, src, idx, &wt);
  ops->scatter_add_rows_(b, src, perm, &w);
  expect_close(a, b, 1e-12);
  Tensor c = Tensor::zeros({6, 4});
  EXPECT_THROW(ops->scatter_add_rows_(c, randn({2, 4}, 34), ops->index({1, 1})), Error);
  EXPECT_THROW(ops->gather_rows(x, ops->index({6})), Error);
}

// route_groups: argmax with ties to the lowest index, p_win = softmax at the winner,
// tokens stably sorted by group, group sizes; per-token host copies only when asked.
TEST(CpuOps, RouteGroups) {
  auto ops = make_cpu_ops();
  const std::vector<float> l{
      1, 1, 0,     // tie between 0 and 1 -> 0
      0, 2, 1,     // 1
      3, 0, 0,     // 0
      0, 0, 0,     // three-way tie -> 0, p = 1/3
      -1, 5, 5,    // tie between 1 and 2 -> 1
      0, 1, 4,     // 2
      2, 2, 2.5f,  // 2
  };
  const Tensor logits = Tensor::from_vector(l, {7, 3});
  const auto r = ops->route_groups(logits, true);
  EXPECT_EQ(r.sizes, (std::vector<int64_t>{3, 2, 2}));
  EXPECT_EQ(r.gid, (std::vector<int>{0, 1, 0, 0, 1, 2, 2}));
  ASSERT_EQ(r.order.dtype(), DType::I64);
  const std::vector<int64_t> order(r.order.data<int64_t>(), r.order.data<int64_t>() + 7);
  EXPECT_EQ(order, (std::vector<int64_t>{0, 2, 3, 1, 4, 5, 6}));
  for (int64_t i = 0; i < 7; ++i) {
    const int64_t t = order[i];
    double sum = 0;
    for (int m = 0; m < 3; ++m) sum += std::exp(double(l[t * 3 + m]) - double(l[t * 3 + r.gid[t]]));
    EXPECT_NEAR(r.weight.f32()[i], 1.0 / sum, 1e-7) << "token " << t;
    EXPECT_FLOAT_EQ(r.p_win[t], r.weight.f32()[i]);
  }
  EXPECT_NEAR(r.p_win[3], 1.0 / 3.0, 1e-7);
  const auto quiet = ops->route_groups(logits);
  EXPECT_TRUE(quiet.gid.empty());
  EXPECT_TRUE(quiet.p_win.empty());
  EXPECT_EQ(quiet.sizes, r.sizes);
}

TEST(Tensor, DtypeConversions) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.5f)), 1.5f);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32(f32_to_f16(0.333251953125f)), 0.333251953125f);
  EXPECT_EQ(f8e4m3_to_f32(0x38), 1.0f);   // exp 7, mant 0
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);  // max finite
  EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0x7f)));
  Tensor t = Tensor::from_vector({1.0f, -2.5f, 3.25f}, {3});
  Tensor back = t.to(DType::BF16).to(DType::F32);
  EXPECT_EQ(rel_error(back, t), 0.0);
  EXPECT_TRUE(std::isinf(rel_error(Tensor::from_vector({NAN, 0, 0}, {3}), t)));
}

// Ops::patchify / unpatchify follow the documented layouts: patchify's feature c * P +
// (i * ph + a) * pw + b of token (f, y, x) reads x[c, f pt + i, y ph + a, x pw + b], and
// unpatchify's feature ((i * ph + a) * pw + b) * C + c lands there.
TEST(CpuOps, PatchifyLayouts) {
  auto ops = make_cpu_ops();
  const int64_t C = 3, T = 4, h = 6, w = 4;
  const int pt = 2, ph = 3, pw = 2, P = pt * ph * pw;
  Tensor x = Tensor::empty({C, T, h, w});
  for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = float(i);
  const Tensor p = ops->patchify(x, pt, ph, pw);
  const int64_t F = T / pt, H = h / ph, W = w / pw;
  ASSERT_EQ(p.shape(), (Shape{F * H * W, C * P}));
  int checked = 0;
  for (int64_t f = 0; f < F; ++f)
    for (int64_t y = 0; y < H; ++y)
      for (int64_t xx = 0; xx < W; ++xx)
        for (int64_t c = 0; c < C; ++c)
          for (int i = 0; i < pt; ++i)
            for (int a = 0; a < ph; ++a)
              for (int b = 0; b < pw; ++b) {
                const int64_t n = (f * H + y) * W + xx;
                const float want = float(((c * T + f * pt + i) * h + y * ph + a) * w + xx * pw + b);
                EXPECT_EQ(p.f32()[n * C * P + c * P + (i * ph + a) * pw + b], want);
                if (checked++ % 37 == 0) {  // unpatchify: one feature set, where it lands
                  Tensor yv = Tensor::zeros({F * H * W, C * P});
                  yv.f32()[n * C * P + ((i * ph + a) * pw + b) * C + c] = 1.0f;
                  const Tensor v = ops->unpatchify(yv, C, F, H, W, pt, ph, pw);
                  EXPECT_EQ(v.f32()[int64_t(want)], 1.0f);
                  double sum = 0;
                  for (int64_t e = 0; e < v.numel(); ++e) sum += v.f32()[e];
                  EXPECT_EQ(sum, 1.0);
                }
              }
  EXPECT_EQ(checked, C * T * h * w);
  // shapes that are not whole patches, or a head output of the wrong size, are refused
  EXPECT_THROW(ops->patchify(Tensor::zeros({C, T, h + 1, w}), pt, ph, pw), Error);
  EXPECT_THROW(ops->unpatchify(Tensor::zeros({F * H * W + 1, C * P}), C, F, H, W, pt, ph, pw), Error);
}
