// The CUDA backend against the float32 CPU reference, op by op, on random data.
// Tolerances (relative L2 error): 1e-2 where the CUDA backend computes in bf16 by design
// (GEMMs with BF16 weights, cuDNN attention), 1e-5 for everything computed in float32.
// Every test skips cleanly where no usable GPU is present (CI).
#include "test_util.h"
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>

#include "models/umt5/umt5.h"
#include "mogagen/ops.h"

using namespace mg;

namespace {

#define REQUIRE_CUDA() \
  if (!mg::cuda_available()) GTEST_SKIP() << "no CUDA device"

constexpr double kBf16Tol = 1e-2;
constexpr double kF32Tol = 1e-5;
constexpr double kTf32Tol = 3e-3;  // conv3d with F32 weights runs on TF32 tensor cores

using testutil::randn;

// Host tensor rounded through bf16 (what a BF16 weight holds).
Tensor bf16_round(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }

// The CUDA backend with MOGAGEN_CONV=cudnn: its VAE ops on float32 data, which the tests
// below hold to TF32 tolerances against the CPU. The default (bf16 convolutions, and the
// norm in front of them written in bf16) has its own checks in Conv3dCudnnAndIm2colAgree;
// `verify vae --device cuda` and the CPU-vs-GPU renders run it end to end.
// A CUDA backend made with MOGAGEN_CONV=mode (nullptr: unset, the default), the variable
// restored afterwards.
std::unique_ptr<Ops> cuda_ops_with_conv(const char* mode) {
  struct Restore {  // also when make_cuda_ops throws (a bad value)
    bool had;
    std::string value;
    ~Restore() {
      if (had)
        ::setenv("MOGAGEN_CONV", value.c_str(), 1);
      else
        ::unsetenv("MOGAGEN_CONV");
    }
  };
  const char* old = std::getenv("MOGAGEN_CONV");
  const Restore restore{old != nullptr, old ? old : ""};
  if (mode)
    ::setenv("MOGAGEN_CONV", mode, 1);
  else
    ::unsetenv("MOGAGEN_CONV");
  return make_cuda_ops(0);
}
std::unique_ptr<Ops> cuda_ops_float32_convolutions() { return cuda_ops_with_conv("cudnn"); }

// A CUDA backend made with the environment variables `vars` set (name, value), each
// restored afterwards.
std::unique_ptr<Ops> cuda_ops_with_env(const std::vector<std::pair<std::string, std::string>>& vars) {
  struct Restore {
    std::vector<std::pair<std::string, std::optional<std::string>>> old;
    ~Restore() {  // in reverse: a name given twice gets its first saved value back
      for (auto it = old.rbegin(); it != old.rend(); ++it) {
        if (it->second)
          ::setenv(it->first.c_str(), it->second->c_str(), 1);
        else
          ::unsetenv(it->first.c_str());
      }
    }
  } restore;
  for (const auto& [name, value] : vars) {
    const char* o = std::getenv(name.c_str());
    restore.old.emplace_back(name, o ? std::optional<std::string>(o) : std::nullopt);
    ::setenv(name.c_str(), value.c_str(), 1);
  }
  return make_cuda_ops(0);
}

struct Backends {
  std::unique_ptr<Ops> cpu = make_cpu_ops();
  std::unique_ptr<Ops> gpu = cuda_ops_float32_convolutions();
  Tensor up(const Tensor& h) { return gpu->upload(h); }
  Tensor down(const Tensor& d) { return gpu->download(d); }
};

double check(const Tensor& gpu_host, const Tensor& ref, double tol, const char* what) {
  EXPECT_EQ(gpu_host.shape(), ref.shape()) << what;
  if (gpu_host.numel() != ref.numel()) return 1.0;
  const double e = ref.numel() ? rel_error(gpu_host, ref) : 0.0;
  std::printf("  [%-44s] rel err %.3e (tol %.0e)\n", what, e, tol);
  EXPECT_LE(e, tol) << what;
  return e;
}

}  // namespace

TEST(CudaOps, UnavailableThrowsDeviceError) {
  if (mg::cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  try {
    make_cuda_ops(0);
    FAIL() << "make_cuda_ops should throw without a usable GPU";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::Device);
    EXPECT_FALSE(std::string(e.what()).empty());
  }
}

TEST(CudaOps, UploadDownloadZerosWeight) {
  REQUIRE_CUDA();
  Backends b;
  EXPECT_EQ(b.gpu->device().type, DeviceType::CUDA);
  Tensor h = randn({3, 5, 7}, 1);
  Tensor d = b.up(h);
  EXPECT_EQ(d.dtype(), DType::F32);
  EXPECT_FALSE(d.device().is_cpu());
  EXPECT_EQ(rel_error(b.down(d), h), 0.0);
  Tensor z = b.down(b.gpu->zeros({4, 33}));
  for (int64_t i = 0; i < z.numel(); ++i) ASSERT_EQ(z.f32()[i], 0.0f);
  EXPECT_EQ(b.gpu->empty({0, 8}).numel(), 0);
  // weight(): BF16 on the device by default, F32 when kept.
  Tensor w = b.gpu->weight(h);
  EXPECT_EQ(w.dtype(), DType::BF16);
  EXPECT_EQ(rel_error(b.down(w), bf16_round(h)), 0.0);
  Tensor wf = b.gpu->weight(h, true);
  EXPECT_EQ(wf.dtype(), DType::F32);
  EXPECT_EQ(rel_error(b.down(wf), h), 0.0);
  Tensor wb = b.gpu->weight(h.to(DType::BF16));  // BF16 host tensor goes up as is
  EXPECT_EQ(rel_error(b.down(wb), bf16_round(h)), 0.0);
  // Reuse through the caching allocator: many same-size temporaries.
  for (int i = 0; i < 100; ++i) {
    Tensor t = b.gpu->scale(d, 2.0f);
    (void)t;
  }
  EXPECT_EQ(rel_error(b.down(b.gpu->scale(d, 2.0f)), b.cpu->scale(h, 2.0f)), 0.0);
}

TEST(CudaOps, OutOfMemoryIsADeviceError) {
  REQUIRE_CUDA();
  Backends b;
  try {
    b.gpu->empty({int64_t(1) << 40});  // 4 TiB
    FAIL() << "expected an out-of-memory error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::Device);
    const std::string m = e.what();
    std::printf("  OOM message: %s\n", m.c_str());
    EXPECT_NE(m.find("out of memory"), std::string::npos) << m;
    EXPECT_NE(m.find("requested 4398046511104 bytes"), std::string::npos) << m;
    EXPECT_NE(m.find("free"), std::string::npos) << m;
  }
  // The backend still works afterwards.
  Tensor h = randn({16}, 2);
  EXPECT_EQ(rel_error(b.down(b.up(h)), h), 0.0);
}

TEST(CudaOps, LinearBf16) {
  REQUIRE_CUDA();
  Backends b;
  for (auto [m, k, n] : {std::array<int64_t, 3>{77, 320, 200}, {512, 1024, 768}, {1, 64, 3},
                         {33, 17, 5}}) {
    Tensor x = randn({m, k}, 10), w = randn({n, k}, 11, 0.05f), bias = randn({n}, 12);
    Tensor wd = b.gpu->weight(w), bd = b.gpu->weight(bias);
    ASSERT_EQ(wd.dtype(), DType::BF16);
    check(b.down(b.gpu->linear(b.up(x), wd, &bd)), b.cpu->linear(x, w, &bias), kBf16Tol,
          ("linear bf16 " + std::to_string(m) + "x" + std::to_string(k) + "x" + std::to_string(n))
              .c_str());
    check(b.down(b.gpu->linear(b.up(x), wd, nullptr)), b.cpu->linear(x, w, nullptr), kBf16Tol,
          "linear bf16 no bias");
  }
  // Leading dims are flattened.
  Tensor x = randn({4, 3, 64}, 13), w = randn({10, 64}, 14);
  Tensor y = b.gpu->linear(b.up(x), b.gpu->weight(w), nullptr);
  EXPECT_EQ(y.shape(), (Shape{4, 3, 10}));
  check(b.down(y), b.cpu->linear(x, w, nullptr), kBf16Tol, "linear bf16 3-D x");
}

// gemm_input converts once what linear() would convert per call: bit-identical results.
TEST(CudaOps, GemmInputIsWhatLinearReads) {
  REQUIRE_CUDA();
  Backends b;
  const Tensor x = randn({50, 96}, 30), w = randn({40, 96}, 31, 0.05f), bias = randn({40}, 32);
  const Tensor xd = b.up(x), wd = b.gpu->weight(w), bd = b.gpu->weight(bias, true);
  const Tensor xb = b.gpu->gemm_input(xd);
  EXPECT_EQ(xb.dtype(), DType::BF16);
  check(b.down(b.gpu->linear(xb, wd, &bd)), b.down(b.gpu->linear(xd, wd, &bd)), 0.0,
        "linear of gemm_input");
  EXPECT_EQ(b.cpu->gemm_input(x).dtype(), DType::F32);  // the CPU keeps float32
}

TEST(CudaOps, LinearF32) {
  REQUIRE_CUDA();
  Backends b;
  for (auto [m, k, n] : {std::array<int64_t, 3>{77, 320, 200}, {1, 256, 1536}, {9, 13, 5}}) {
    Tensor x = randn({m, k}, 20), w = randn({n, k}, 21, 0.05f), bias = randn({n}, 22);
    Tensor wd = b.gpu->weight(w, true), bd = b.gpu->weight(bias, true);
    ASSERT_EQ(wd.dtype(), DType::F32);
    check(b.down(b.gpu->linear(b.up(x), wd, &bd)), b.cpu->linear(x, w, &bias), kF32Tol,
          "linear f32 (TF32 off)");
    // TF32 tensor cores on request: close, but no longer float32-exact
    EXPECT_EQ(b.gpu->set_f32_matmul(Ops::F32Matmul::Tf32), Ops::F32Matmul::Exact);
    const double e = check(b.down(b.gpu->linear(b.up(x), wd, &bd)), b.cpu->linear(x, w, &bias),
                           kTf32Tol, "linear f32 (TF32 on)");
    if (k >= 256 && m >= 16) {  // (cuBLAS runs m = 1 as an exact float32 GEMV: seen on the H200)
      EXPECT_GT(e, 1e-6) << "TF32 mode ran exact float32";
    }
    EXPECT_EQ(b.gpu->set_f32_matmul(Ops::F32Matmul::Exact), Ops::F32Matmul::Tf32);
  }
}

// The FFN's first layer: bias and tanh-GELU in cuBLASLt's epilogue, bf16 out; the same
// values as the float32 composition up to bf16 rounding, and the composition for F32
// weights.
TEST(CudaOps, LinearGelu) {
  REQUIRE_CUDA();
  Backends b;
  for (auto [m, k, n] : {std::array<int64_t, 3>{300, 256, 1024}, {77, 64, 200}, {16384, 128, 384}}) {
    Tensor x = randn({m, k}, 140), w = randn({n, k}, 141, 0.1f), bias = randn({n}, 142);
    const Tensor ref = b.cpu->gelu_tanh(b.cpu->linear(bf16_round(x), bf16_round(w), &bias));
    const Tensor wd = b.gpu->weight(w), bd = b.gpu->weight(bias, true);
    const Tensor y = b.gpu->linear_gelu(b.up(x), wd, &bd);
    EXPECT_EQ(y.dtype(), DType::BF16) << "no cuBLASLt GELU epilogue: the composition ran";
    EXPECT_EQ(y.shape(), (Shape{m, n}));
    check(b.down(y), ref, kBf16Tol, "linear_gelu bf16 epilogue");
    check(b.down(y), b.down(b.gpu->gelu_tanh(b.gpu->linear(b.up(x), wd, &bd))), 5e-3,
          "linear_gelu vs GPU composition");
    const Tensor no_bias = b.gpu->linear_gelu(b.up(x), wd, nullptr);
    check(b.down(no_bias), b.cpu->gelu_tanh(b.cpu->linear(bf16_round(x), bf16_round(w), nullptr)),
          kBf16Tol, "linear_gelu without bias");
  }
  Tensor x = randn({40, 32}, 143), w = randn({48, 32}, 144, 0.1f);
  const Tensor y = b.gpu->linear_gelu(b.up(x), b.gpu->weight(w, true), nullptr);
  EXPECT_EQ(y.dtype(), DType::F32);  // float32 weights: the exact composition
  check(b.down(y), b.cpu->gelu_tanh(b.cpu->linear(x, w, nullptr)), kF32Tol, "linear_gelu f32");
}

// linear_compact: the GEMM writes bf16 (bias in the epilogue); float32 weights fall back to
// linear(). Against the CPU on bf16-rounded operands, and against the GPU's linear rounded.
TEST(CudaOps, LinearCompact) {
  REQUIRE_CUDA();
  Backends b;
  for (auto [m, k, n] : {std::array<int64_t, 3>{300, 256, 1024}, {77, 64, 200}, {4096, 1536, 1536}}) {
    const Tensor x = randn({m, k}, 153), w = randn({n, k}, 154, 0.1f), bias = randn({n}, 155);
    const Tensor wd = b.gpu->weight(w), bd = b.gpu->weight(bias, true);
    for (const bool with_bias : {true, false}) {
      const Tensor* hb = with_bias ? &bias : nullptr;
      const Tensor* db = with_bias ? &bd : nullptr;
      const Tensor y = b.gpu->linear_compact(b.up(x), wd, db);
      EXPECT_EQ(y.dtype(), DType::BF16) << "no cuBLASLt bf16 output: linear() ran";
      EXPECT_EQ(y.shape(), (Shape{m, n}));
      check(b.down(y), b.cpu->linear(bf16_round(x), bf16_round(w), hb), kBf16Tol,
            with_bias ? "linear_compact" : "linear_compact without bias");
      check(b.down(y), bf16_round(b.down(b.gpu->linear(b.up(x), wd, db))), 5e-3,
            "linear_compact vs GPU linear, rounded");
    }
  }
  const Tensor x = randn({40, 32}, 156), w = randn({48, 32}, 157, 0.1f);
  const Tensor y = b.gpu->linear_compact(b.up(x), b.gpu->weight(w, true), nullptr);
  EXPECT_EQ(y.dtype(), DType::F32);
  check(b.down(y), b.cpu->linear(x, w, nullptr), kF32Tol, "linear_compact f32 weights");
}

// Split float32 products: the weight's two bf16 parts rebuild it to about 2^-16, and three
// bf16 GEMMs of split operands come within 1e-4 of the exact float32 product, where one
// bf16 GEMM is near 1e-2 and TF32 near 1e-3. The CPU's split is the weight itself (exact).
TEST(CudaOps, LinearSplit) {
  REQUIRE_CUDA();
  Backends b;
  for (auto [m, k, n] : {std::array<int64_t, 3>{512, 4096, 512}, {77, 64, 200}, {5, 33, 7}}) {
    const Tensor x = randn({m, k}, 158), w = randn({n, k}, 159, 0.05f), bias = randn({n}, 160);
    const Ops::SplitWeight sw = b.gpu->split_weight(b.gpu->weight(w, true));
    ASSERT_TRUE(sw.lo.defined());
    EXPECT_EQ(sw.hi.dtype(), DType::BF16);
    const Tensor back = b.cpu->add(b.down(sw.hi), b.down(sw.lo));
    EXPECT_LE(rel_error(back, w), 2e-5) << "hi + lo does not rebuild the weight";
    const Tensor bd = b.gpu->weight(bias, true);
    const Tensor ref = b.cpu->linear(x, w, &bias);
    const double e = check(b.down(b.gpu->linear_split(b.up(x), sw, &bd)), ref, 1e-4, "linear_split");
    const double e16 = rel_error(b.down(b.gpu->linear(b.up(x), b.gpu->weight(w), &bd)), ref);
    EXPECT_LT(e * 20, e16) << "split products no better than one bf16 GEMM";
    const Ops::SplitWeight cs = b.cpu->split_weight(w);
    EXPECT_FALSE(cs.lo.defined());
    EXPECT_EQ(rel_error(b.cpu->linear_split(x, cs, &bias), ref), 0.0);
  }
}

// The residual update folded into the GEMM: acc += gate (.) (x w^T + b), with and without
// gate and bias, into a whole tensor and into a row slice (the FFN's tiles). The update
// (acc after minus before) is compared, so the check is not diluted by acc itself. The
// gated case must differ in rounding from the GPU composition somewhere: identical bits
// would mean the fused path never ran.
// The gate's rows of a weight, rounded to bf16 as CUDA's linear_residual_ folds them:
// bf16(gate[r] * bf16(w[r, c])).
Tensor gated_weight_bf16(const Tensor& w, const Tensor& gate) {
  Tensor y = bf16_round(w).clone();
  const int64_t rows = w.dim(0), cols = w.dim(1);
  float* p = y.data<float>();
  const float* g = gate.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) p[r * cols + c] *= g[r];
  return bf16_round(y);
}

TEST(CudaOps, LinearResidual) {
  REQUIRE_CUDA();
  Backends b;
  for (auto [m, k, n] : {std::array<int64_t, 3>{300, 256, 1024}, {77, 64, 200}, {4096, 1536, 1536}}) {
    const Tensor x = randn({m, k}, 145), w = randn({n, k}, 146, 0.1f), bias = randn({n}, 147);
    const Tensor gate = randn({1, n}, 148), acc0 = randn({m, n}, 149, 4.0f);
    const Tensor wd = b.gpu->weight(w), bd = b.gpu->weight(bias, true), gd = b.up(gate);
    const Tensor gb = b.cpu->mul(gate.reshape({n}), bias);  // gate (.) b
    for (int variant = 0; variant < 3; ++variant) {  // gate and bias; bias only; gate only
      const Tensor* db = variant == 2 ? nullptr : &bd;
      const Tensor* dg = variant == 1 ? nullptr : &gd;
      // the reference with the operands CUDA multiplies: bf16 x, and the weight rows
      // scaled by the gate and rounded to bf16 (the bias scaled in float32)
      Tensor ref = acc0.clone();
      if (variant == 1)
        b.cpu->linear_residual_(ref, bf16_round(x), bf16_round(w), &bias, nullptr);
      else
        b.cpu->linear_residual_(ref, bf16_round(x), gated_weight_bf16(w, gate),
                                variant == 0 ? &gb : nullptr, nullptr);
      Tensor acc = b.up(acc0);
      b.gpu->linear_residual_(acc, b.up(x), wd, db, dg);
      const char* what[3] = {"linear_residual_ gate and bias", "linear_residual_ no gate",
                             "linear_residual_ no bias"};
      check(b.cpu->add(b.down(acc), b.cpu->scale(acc0, -1.0f)),
            b.cpu->add(ref, b.cpu->scale(acc0, -1.0f)), 1e-4, what[variant]);
      if (variant == 0) {
        Tensor comp = b.up(acc0);
        b.gpu->gated_add_(comp, b.gpu->linear(b.up(x), wd, &bd), gd);
        EXPECT_GT(rel_error(b.down(acc), b.down(comp)), 0.0)
            << "bit-identical to the composition: the fused GEMM (gated weight, C = D) did not run";
      }
    }
    // into rows [m/3, m) of a larger tensor, as the FFN's tiles update the stream
    const int64_t r0 = m / 3;
    Tensor big = b.up(acc0), ref = acc0.clone();
    Tensor tile = big.rows(r0, m), ref_tile = ref.rows(r0, m);
    b.gpu->linear_residual_(tile, b.up(x.rows(r0, m).clone()), wd, &bd, &gd);
    b.cpu->linear_residual_(ref_tile, bf16_round(x.rows(r0, m).clone()), gated_weight_bf16(w, gate),
                            &gb, nullptr);
    check(b.cpu->add(b.down(big), b.cpu->scale(acc0, -1.0f)), b.cpu->add(ref, b.cpu->scale(acc0, -1.0f)),
          1e-4, "linear_residual_ into a row slice");
  }
  // float32 weights: the exact composition
  const Tensor x = randn({40, 32}, 150), w = randn({48, 32}, 151, 0.1f), acc0 = randn({40, 48}, 152);
  Tensor ref = acc0.clone(), acc = b.up(acc0);
  b.cpu->linear_residual_(ref, x, w, nullptr, nullptr);
  b.gpu->linear_residual_(acc, b.up(x), b.gpu->weight(w, true), nullptr, nullptr);
  check(b.down(acc), ref, kF32Tol, "linear_residual_ f32 weights");
}

TEST(CudaOps, Elementwise) {
  REQUIRE_CUDA();
  Backends b;
  for (int64_t n : {int64_t(1), int64_t(1023), int64_t(4096), int64_t(100003)}) {
    Tensor x = randn({n}, 30, 2.0f), z = randn({n}, 31);
    Tensor dx = b.up(x), dz = b.up(z);
    check(b.down(b.gpu->add(dx, dz)), b.cpu->add(x, z), kF32Tol, "add");
    check(b.down(b.gpu->mul(dx, dz)), b.cpu->mul(x, z), kF32Tol, "mul");
    check(b.down(b.gpu->gelu_tanh(dx)), b.cpu->gelu_tanh(x), kF32Tol, "gelu_tanh");
    check(b.down(b.gpu->silu(dx)), b.cpu->silu(x), kF32Tol, "silu");
    check(b.down(b.gpu->gelu_tanh_mul(dx, dz)), b.cpu->gelu_tanh_mul(x, z), kF32Tol,
          "gelu_tanh_mul");
    check(b.down(b.gpu->scale(dx, -0.37f)), b.cpu->scale(x, -0.37f), kF32Tol, "scale");
    check(b.down(b.gpu->clamp(dx, -0.5f, 1.25f)), b.cpu->clamp(x, -0.5f, 1.25f), kF32Tol, "clamp");
    Tensor hx = x.clone();
    b.cpu->add_(hx, z);
    b.gpu->add_(dx, dz);
    check(b.down(dx), hx, kF32Tol, "add_");
  }
  // Row broadcasts, with F32 and BF16 (weight) rows.
  Tensor a = randn({37, 96}, 32), y = randn({37, 96}, 33), g = randn({96}, 34);
  {
    Tensor ha = a.clone(), da = b.up(a);
    b.cpu->gated_add_(ha, y, g);
    b.gpu->gated_add_(da, b.up(y), b.gpu->weight(g, true));
    check(b.down(da), ha, kF32Tol, "gated_add_");
  }
  {
    Tensor ha = a.clone(), da = b.up(a);
    b.cpu->gated_add_(ha, y, bf16_round(g));
    b.gpu->gated_add_(da, b.up(y), b.gpu->weight(g));
    check(b.down(da), ha, kF32Tol, "gated_add_ (bf16 gate)");
  }
  check(b.down(b.gpu->add_row(b.up(a), b.up(g))), b.cpu->add_row(a, g), kF32Tol, "add_row");
  check(b.down(b.gpu->add_row(b.up(a), b.gpu->weight(g))), b.cpu->add_row(a, bf16_round(g)),
        kF32Tol, "add_row (bf16 row)");
  // add of an F32 weight and an activation (the DiT's modulation + e0)
  Tensor m6 = randn({6, 32}, 35), e0 = randn({6 * 32}, 36);
  check(b.down(b.gpu->add(b.gpu->weight(m6, true), b.up(e0).reshape({6, 32}))),
        b.cpu->add(m6, e0.reshape({6, 32})), kF32Tol, "add(weight, activation)");
}

TEST(CudaOps, Norms) {
  REQUIRE_CUDA();
  Backends b;
  for (auto [n, d] : {std::array<int64_t, 2>{37, 96}, {5, 5120}, {300, 128}, {3, 7}}) {
    Tensor x = randn({n, d}, 40, 3.0f), w = randn({d}, 41), bb = randn({d}, 42);
    Tensor sh = randn({d}, 43), sc = randn({d}, 44, 0.3f);
    Tensor dx = b.up(x);
    Tensor dw = b.gpu->weight(w, true), db = b.gpu->weight(bb, true);
    check(b.down(b.gpu->layer_norm(dx, &dw, &db, 1e-6f)), b.cpu->layer_norm(x, &w, &bb, 1e-6f),
          kF32Tol, "layer_norm affine");
    check(b.down(b.gpu->layer_norm(dx, nullptr, nullptr, 1e-5f)),
          b.cpu->layer_norm(x, nullptr, nullptr, 1e-5f), kF32Tol, "layer_norm plain");
    Tensor w16 = b.gpu->weight(w), b16 = b.gpu->weight(bb);
    Tensor rw = bf16_round(w), rb = bf16_round(bb);
    check(b.down(b.gpu->layer_norm(dx, &w16, &b16, 1e-6f)), b.cpu->layer_norm(x, &rw, &rb, 1e-6f),
          kF32Tol, "layer_norm bf16 affine");
    check(b.down(b.gpu->layer_norm_modulate(dx, b.up(sh), b.up(sc), 1e-6f)),
          b.cpu->layer_norm_modulate(x, sh, sc, 1e-6f), kF32Tol, "layer_norm_modulate");
    // the GEMM form: bf16 written directly, the float32 values rounded once
    const Tensor g = b.gpu->layer_norm_modulate_gemm(dx, b.up(sh), b.up(sc), 1e-6f);
    EXPECT_EQ(g.dtype(), DType::BF16);
    check(b.down(g), b.down(b.gpu->gemm_input(b.gpu->layer_norm_modulate(dx, b.up(sh), b.up(sc), 1e-6f))),
          0.0, "layer_norm_modulate_gemm");
    check(b.down(b.gpu->rms_norm(dx, dw, 1e-6f)), b.cpu->rms_norm(x, w, 1e-6f), kF32Tol,
          "rms_norm");
  }
  // channels held in registers (up to 384: 16 and 96 as the VAE's widths, 384 the most) or
  // read twice (400)
  for (auto [c, t, h, w] : {std::array<int64_t, 4>{16, 3, 8, 6}, {96, 2, 17, 13}, {1, 1, 1, 5}, {384, 1, 9, 11},
                            {400, 1, 5, 7}}) {
    Tensor x = randn({c, t, h, w}, 45), g = randn({c}, 46);
    check(b.down(b.gpu->channel_l2_norm(b.up(x), b.gpu->weight(g, true))),
          b.cpu->channel_l2_norm(x, g), kF32Tol, "channel_l2_norm");
    // the fused norm and SiLU: the GPU's own two passes, bit for bit, and the CPU
    const Tensor gd = b.gpu->weight(g, true);
    check(b.down(b.gpu->channel_l2_norm_silu(b.up(x), gd)),
          b.down(b.gpu->silu(b.gpu->channel_l2_norm(b.up(x), gd))), 0.0, "channel_l2_norm_silu vs two passes");
    check(b.down(b.gpu->channel_l2_norm_silu(b.up(x), gd)), b.cpu->silu(b.cpu->channel_l2_norm(x, g)),
          kF32Tol, "channel_l2_norm_silu");
  }
}

// MOGAGEN_CONV=bf16-ndhwc (the default): the bf16 convolution on channels-last copies (input assembled
// and output widened by transposing passes, the weight reordered once). The same arithmetic
// as the channels-first bf16 path: the float32 convolution of the bf16-rounded operands,
// rounded to bf16 before the bias; with a cached front and with a residual. Channel counts
// that are not multiples of 8 (the last case) take the channels-first path.
TEST(CudaOps, Conv3dChannelsLast) {
  REQUIRE_CUDA();
  Backends b;
  std::unique_ptr<Ops> cl = cuda_ops_with_conv("bf16-ndhwc"), cf = cuda_ops_with_conv("bf16");
  struct Case {
    int64_t ci, t, h, w, co, kt, kh, kw;
    int pt, ph, pw;
  };
  for (const Case& c : {Case{32, 1, 12, 20, 48, 3, 3, 3, 2, 1, 1}, Case{16, 4, 9, 14, 40, 3, 3, 3, 0, 1, 1},
                        Case{24, 2, 8, 8, 16, 1, 3, 3, 0, 1, 1}, Case{12, 2, 7, 9, 20, 3, 3, 3, 2, 1, 1}}) {
    SCOPED_TRACE("ci " + std::to_string(c.ci) + " co " + std::to_string(c.co));
    const Tensor x = randn({c.ci, c.t, c.h, c.w}, 130), w = randn({c.co, c.ci, c.kt, c.kh, c.kw}, 131, 0.05f);
    const Tensor bias = randn({c.co}, 132);
    const Tensor ref16 = b.cpu->conv3d(bf16_round(x), bf16_round(w), &bias, c.pt, c.ph, c.pw);
    const Tensor lw = cl->weight(w, true), lb = cl->weight(bias, true);
    const Tensor got = cl->download(cl->conv3d(cl->upload(x), lw, &lb, c.pt, c.ph, c.pw));
    check(got, ref16, 4e-3, "conv3d bf16 channels last");
    const Tensor fw = cf->weight(w, true), fb = cf->weight(bias, true);
    const Tensor first = cf->download(cf->conv3d(cf->upload(x), fw, &fb, c.pt, c.ph, c.pw));
    check(got, first, 4e-3, "channels last against channels first");
    if (c.kt > 1) {
      const Tensor front = randn({c.ci, 2, c.h, c.w}, 133);
      const int pt = std::max(0, c.pt - 2);
      const Tensor held = cl->hold_frames(cl->upload(front));
      const Tensor a = cl->download(cl->conv3d_after(held, cl->upload(x), lw, &lb, pt, c.ph, c.pw));
      check(a, b.cpu->conv3d(bf16_round(b.cpu->cat_time(front, x)), bf16_round(w), &bias, pt, c.ph, c.pw), 4e-3,
            "conv3d_after bf16 channels last");
      const Tensor res = randn(a.shape(), 134);
      const Tensor ar = cl->download(cl->conv3d_after_add(held, cl->upload(x), lw, &lb, pt, c.ph, c.pw, cl->upload(res)));
      EXPECT_EQ(rel_error(ar, b.cpu->add(a, res)), 0.0) << "conv3d_after_add channels last";
    }
  }
}

TEST(CudaOps, Rope) {
  REQUIRE_CUDA();
  Backends b;
  const int64_t n = 50, h = 3, hd = 16;
  Tensor x = randn({n, h, hd}, 50), ang = randn({n, hd / 2}, 51, 3.0f);
  Tensor c = Tensor::empty({n, hd / 2}), s = Tensor::empty({n, hd / 2});
  for (int64_t i = 0; i < c.numel(); ++i) {
    c.f32()[i] = std::cos(ang.f32()[i]);
    s.f32()[i] = std::sin(ang.f32()[i]);
  }
  Tensor hx = x.clone(), dx = b.up(x);
  b.cpu->rope_(hx, c, s);
  b.gpu->rope_(dx, b.up(c), b.up(s));
  check(b.down(dx), hx, kF32Tol, "rope_");
}

TEST(CudaOps, AttentionCudnnDense) {
  REQUIRE_CUDA();
  Backends b;
  b.gpu = cuda_ops_with_env({{"MOGAGEN_ATTENTION_KERNEL", "cudnn"}});
  const float sc = 1.0f / std::sqrt(128.0f);
  for (auto [nq, nk, h] : {std::array<int64_t, 3>{300, 300, 4}, {1000, 77, 2}, {64, 512, 12},
                           {1, 5, 1}}) {
    Tensor q = randn({nq, h, 128}, 60), k = randn({nk, h, 128}, 61), v = randn({nk, h, 128}, 62);
    check(b.down(b.gpu->attention(b.up(q), b.up(k), b.up(v), sc)), b.cpu->attention(q, k, v, sc),
          kBf16Tol,
          ("attention d128 " + std::to_string(nq) + "x" + std::to_string(nk) + " h" +
           std::to_string(h))
              .c_str());
  }
  // head dim 64
  Tensor q = randn({200, 8, 64}, 63), k = randn({150, 8, 64}, 64), v = randn({150, 8, 64}, 65);
  const Tensor o = b.gpu->attention(b.up(q), b.up(k), b.up(v), 0.125f);
  check(b.down(o), b.cpu->attention(q, k, v, 0.125f), kBf16Tol, "attention d64");
  // cuDNN's bf16 output comes back as it is, and the ops that read it take it: a GEMM
  // (bf16 and float32 weights), an in-place add, a scatter
  EXPECT_EQ(o.dtype(), DType::BF16);
  const Tensor of = b.down(o).reshape({200, 512});
  const Tensor w = randn({32, 512}, 66, 0.05f);
  check(b.down(b.gpu->linear(o.reshape({200, 512}), b.gpu->weight(w), nullptr)),
        b.cpu->linear(of, bf16_round(w), nullptr), kBf16Tol, "linear of a bf16 attention output");
  check(b.down(b.gpu->linear(o.reshape({200, 512}), b.gpu->weight(w, true), nullptr)),
        b.cpu->linear(of, w, nullptr), kF32Tol, "f32 linear of a bf16 attention output");
  Tensor acc = b.gpu->zeros({200, 512});
  b.gpu->add_(acc, o.reshape({200, 512}));
  check(b.down(acc), of, 0.0, "add_ of a bf16 attention output");
  std::vector<int64_t> perm(200);
  for (int64_t i = 0; i < 200; ++i) perm[i] = (i * 7) % 200;
  Tensor sc2 = b.gpu->zeros({200, 512});
  b.gpu->scatter_add_rows_(sc2, o.reshape({200, 512}), b.gpu->index(perm));
  Tensor want = Tensor::zeros({200, 512});
  b.cpu->scatter_add_rows_(want, of, perm);
  check(b.down(sc2), want, 0.0, "scatter of a bf16 attention output");
}

TEST(CudaOps, AttentionFallbackBiasAndWideHeads) {
  REQUIRE_CUDA();
  Backends b;
  {  // umT5: additive position bias, head dim 64 -> exact fp32 path
    const int64_t n = 50, h = 4, d = 64;
    Tensor q = randn({n, h, d}, 70), k = randn({n, h, d}, 71), v = randn({n, h, d}, 72);
    Tensor bias = randn({h, n, n}, 73, 2.0f);
    check(b.down(b.gpu->attention(b.up(q), b.up(k), b.up(v), 1.0f)),
          b.cpu->attention(q, k, v, 1.0f), kBf16Tol, "attention d64 no bias (cuDNN)");
    Tensor db = b.up(bias);
    check(b.down(b.gpu->attention(b.up(q), b.up(k), b.up(v), 1.0f, &db)),
          b.cpu->attention(q, k, v, 1.0f, &bias), kF32Tol, "attention + bias (fp32 fallback)");
  }
  {  // VAE middle attention: one head of 384
    const int64_t n = 130, d = 384;
    Tensor q = randn({n, 1, d}, 74), k = randn({n, 1, d}, 75), v = randn({n, 1, d}, 76);
    const float sc = 1.0f / std::sqrt(float(d));
    check(b.down(b.gpu->attention(b.up(q), b.up(k), b.up(v), sc)), b.cpu->attention(q, k, v, sc),
          kF32Tol, "attention d384 (fp32 fallback)");
  }
}

TEST(CudaOps, AttentionVarlen) {
  REQUIRE_CUDA();
  Backends b;
  b.gpu = cuda_ops_with_env({{"MOGAGEN_ATTENTION_KERNEL", "cudnn"}});  // the plan counts below are cuDNN's
  const int64_t h = 4, d = 128;
  const float sc = 1.0f / std::sqrt(float(d));
  {  // self-attention within segments, incl. a 1-token and an empty segment -> cuDNN ragged
    CuSeqlens cu{0, 300, 301, 301, 818, 882};
    Tensor q = randn({882, h, d}, 80), k = randn({882, h, d}, 81), v = randn({882, h, d}, 82);
    const Ops::AttentionStats s0 = b.gpu->attention_stats();
    check(b.down(b.gpu->attention_varlen(b.up(q), b.up(k), b.up(v), cu, cu, sc)),
          b.cpu->attention_varlen(q, k, v, cu, cu, sc), kBf16Tol, "varlen self (cuDNN ragged)");
    const Ops::AttentionStats s1 = b.gpu->attention_stats();
    EXPECT_EQ(s1.fused_calls - s0.fused_calls, 1) << "one fused ragged call";
    EXPECT_EQ(s1.f32_calls, s0.f32_calls);
    EXPECT_EQ(s1.per_segment_calls, s0.per_segment_calls);
    EXPECT_GE(s1.plans - s0.plans, 1);
    EXPECT_GT(s1.plan_seconds, s0.plan_seconds);
    // same shapes again: plan cache hit (no plan built)
    check(b.down(b.gpu->attention_varlen(b.up(v), b.up(q), b.up(k), cu, cu, sc)),
          b.cpu->attention_varlen(v, q, k, cu, cu, sc), kBf16Tol, "varlen self, cached plan");
    const Ops::AttentionStats s2 = b.gpu->attention_stats();
    EXPECT_EQ(s2.plans, s1.plans);
    EXPECT_EQ(s2.fused_calls - s1.fused_calls, 1);
  }
  {  // cross: different q and kv segment lengths
    CuSeqlens cq{0, 100, 150, 400}, ck{0, 30, 107, 120};
    Tensor q = randn({400, h, d}, 83), k = randn({120, h, d}, 84), v = randn({120, h, d}, 85);
    check(b.down(b.gpu->attention_varlen(b.up(q), b.up(k), b.up(v), cq, ck, sc)),
          b.cpu->attention_varlen(q, k, v, cq, ck, sc), kBf16Tol, "varlen cross (cuDNN ragged)");
  }
  {  // a segment with queries but no keys -> exact fallback, zero rows
    CuSeqlens cq{0, 10, 25, 40}, ck{0, 12, 12, 30};
    Tensor q = randn({40, h, d}, 86), k = randn({30, h, d}, 87), v = randn({30, h, d}, 88);
    const Ops::AttentionStats s0 = b.gpu->attention_stats();
    check(b.down(b.gpu->attention_varlen(b.up(q), b.up(k), b.up(v), cq, ck, sc)),
          b.cpu->attention_varlen(q, k, v, cq, ck, sc), kF32Tol, "varlen one-sided (fp32)");
    EXPECT_EQ(b.gpu->attention_stats().f32_calls - s0.f32_calls, 1) << "the fallback is counted";
  }
  {  // single segment -> dense plan
    CuSeqlens cu{0, 257};
    Tensor q = randn({257, h, d}, 89), k = randn({257, h, d}, 90), v = randn({257, h, d}, 91);
    check(b.down(b.gpu->attention_varlen(b.up(q), b.up(k), b.up(v), cu, cu, sc)),
          b.cpu->attention_varlen(q, k, v, cu, cu, sc), kBf16Tol, "varlen one segment");
  }
}

// Plans by family (dense or ragged, heads, head size): the first shape of a family times its
// candidates, the later ones build only the chosen configuration; with
// MOGAGEN_SDPA_KNOBS=search the first also times knob variants, and a winning variant is
// rebuilt by value for the later shapes. Every path gives the CPU's values and every new
// shape builds one plan; by default and with one candidate, no later shape of a family (nor
// any shape with one candidate) times configurations again. (A knob variant may not build
// for another shape; then that shape times the heuristics' list, which is allowed.)
TEST(CudaOps, AttentionPlanFamilies) {
  REQUIRE_CUDA();
  Backends b;
  const int64_t h = 4, d = 128;
  const float sc = 1.0f / std::sqrt(float(d));
  // cuDNN's plans alone (on an sm_90 GPU our kernel would take over the classes it wins)
  const std::pair<std::string, std::string> cudnn{"MOGAGEN_ATTENTION_KERNEL", "cudnn"};
  std::unique_ptr<Ops> plain = cuda_ops_with_env({cudnn}),
                       knobs = cuda_ops_with_env({cudnn, {"MOGAGEN_SDPA_KNOBS", "search"}}),
                       one = cuda_ops_with_env({cudnn, {"MOGAGEN_SDPA_CANDIDATES", "1"}}),
                       // values out of range: a warning each, then the defaults (4, no search)
                       bad = cuda_ops_with_env({cudnn, {"MOGAGEN_SDPA_CANDIDATES", "0"}, {"MOGAGEN_SDPA_KNOBS", "maybe"}});
  for (Ops* g : {plain.get(), knobs.get(), one.get(), bad.get()}) {
    SCOPED_TRACE(g == plain.get()   ? "default"
                 : g == knobs.get() ? "knob search"
                 : g == one.get()   ? "one candidate"
                                    : "bad values");
    const bool one_candidate = g == one.get(), strict = g != knobs.get();
    int seed = 140;
    bool first = true;
    // ragged: three shapes whose longest segments fall in different length buckets
    for (const CuSeqlens& cu : {CuSeqlens{0, 70, 200, 230}, CuSeqlens{0, 500, 530, 900}, CuSeqlens{0, 40, 1100}}) {
      const int64_t n = cu.back();
      const Tensor q = randn({n, h, d}, seed++), k = randn({n, h, d}, seed++), v = randn({n, h, d}, seed++);
      const Ops::AttentionStats s0 = g->attention_stats();
      const Tensor got = g->download(g->attention_varlen(g->upload(q), g->upload(k), g->upload(v), cu, cu, sc));
      const Ops::AttentionStats s1 = g->attention_stats();
      check(got, b.cpu->attention_varlen(q, k, v, cu, cu, sc), kBf16Tol, "ragged, a family's shapes");
      EXPECT_EQ(s1.fused_calls - s0.fused_calls, 1);
      EXPECT_EQ(s1.f32_calls, s0.f32_calls);
      EXPECT_EQ(s1.plans - s0.plans, 1) << "one plan for each new shape";
      if (strict && (!first || one_candidate)) {
        EXPECT_EQ(s1.timed_choices, s0.timed_choices) << "timed again";
      }
      first = false;
    }
    first = true;
    // dense: two shapes of one family
    for (const int64_t n : {int64_t{190}, int64_t{333}}) {
      const Tensor q = randn({n, h, d}, seed++), k = randn({n + 7, h, d}, seed++), v = randn({n + 7, h, d}, seed++);
      const Ops::AttentionStats s0 = g->attention_stats();
      check(g->download(g->attention(g->upload(q), g->upload(k), g->upload(v), sc)), b.cpu->attention(q, k, v, sc),
            kBf16Tol, "dense, a family's shapes");
      const Ops::AttentionStats s1 = g->attention_stats();
      EXPECT_EQ(s1.fused_calls - s0.fused_calls, 1);
      EXPECT_EQ(s1.plans - s0.plans, 1);
      if (strict && (!first || one_candidate)) {
        EXPECT_EQ(s1.timed_choices, s0.timed_choices) << "timed again";
      }
      first = false;
    }
  }
}

TEST(CudaOps, AttentionFallbackForced) {
  REQUIRE_CUDA();
  setenv("MOGAGEN_NO_CUDNN", "1", 1);
  Backends b;
  unsetenv("MOGAGEN_NO_CUDNN");
  const int64_t h = 4, d = 128;
  const float sc = 1.0f / std::sqrt(float(d));
  Tensor q = randn({300, h, d}, 92), k = randn({200, h, d}, 93), v = randn({200, h, d}, 94);
  check(b.down(b.gpu->attention(b.up(q), b.up(k), b.up(v), sc)), b.cpu->attention(q, k, v, sc),
        kF32Tol, "attention d128 forced fp32");
  CuSeqlens cq{0, 100, 300}, ck{0, 150, 200};
  check(b.down(b.gpu->attention_varlen(b.up(q), b.up(k), b.up(v), cq, ck, sc)),
        b.cpu->attention_varlen(q, k, v, cq, ck, sc), kF32Tol, "varlen forced fp32");
}

// Whether device 0 is an sm_90 GPU (H100, H200): where our attention kernel runs.
bool sm90_gpu() { return cuda_compute_capability(0) == 90; }

// kernels/flash_sm90.cu forced (MOGAGEN_ATTENTION_KERNEL=sm90) against the CPU: lengths that
// are not multiples of its 128-row query tiles or 176-row key blocks, a single key block,
// one query, wide logits (q 8 times larger: the running maximum is raised late and by much),
// ragged self- and cross-attention with 1-row segments; every call must have run our kernel.
TEST(CudaOps, AttentionSm90Kernel) {
  REQUIRE_CUDA();
  if (!sm90_gpu()) GTEST_SKIP() << "not an sm_90 GPU";
  Backends b;
  b.gpu = cuda_ops_with_env({{"MOGAGEN_ATTENTION_KERNEL", "sm90"}});
  const float sc = 1.0f / std::sqrt(128.0f);
  int seed = 300;
  for (auto [nq, nk, h, qs] : {std::array<int64_t, 4>{300, 517, 3, 1}, {129, 100, 2, 1}, {256, 352, 1, 1},
                               {1, 9, 1, 1}, {1000, 1500, 2, 8}, {77, 2000, 5, 8}}) {
    const Tensor q = randn({nq, h, 128}, seed++, float(qs)), k = randn({nk, h, 128}, seed++),
                 v = randn({nk, h, 128}, seed++);
    const Ops::AttentionStats s0 = b.gpu->attention_stats();
    const Tensor o = b.gpu->attention(b.up(q), b.up(k), b.up(v), sc);
    const Ops::AttentionStats s1 = b.gpu->attention_stats();
    check(b.down(o), b.cpu->attention(q, k, v, sc), kBf16Tol,
          ("sm90 " + std::to_string(nq) + "x" + std::to_string(nk) + " h" + std::to_string(h) + " q x" +
           std::to_string(qs))
              .c_str());
    EXPECT_EQ(s1.sm90_calls - s0.sm90_calls, 1) << "our kernel ran";
    EXPECT_EQ(s1.fused_calls - s0.fused_calls, 1);
    EXPECT_EQ(o.dtype(), DType::BF16);
  }
  const int64_t h = 4;
  for (auto [cq, ck] : {std::pair<CuSeqlens, CuSeqlens>{{0, 300, 301, 818, 882}, {0, 300, 301, 818, 882}},
                        {{0, 100, 150, 400}, {0, 30, 107, 400}},
                        {{0, 1, 2, 200}, {0, 177, 178, 179}}}) {
    const Tensor q = randn({cq.back(), h, 128}, seed++, 4.0f), k = randn({ck.back(), h, 128}, seed++),
                 v = randn({ck.back(), h, 128}, seed++);
    const Ops::AttentionStats s0 = b.gpu->attention_stats();
    check(b.down(b.gpu->attention_varlen(b.up(q), b.up(k), b.up(v), cq, ck, sc)),
          b.cpu->attention_varlen(q, k, v, cq, ck, sc), kBf16Tol, "sm90 ragged");
    const Ops::AttentionStats s1 = b.gpu->attention_stats();
    EXPECT_EQ(s1.sm90_calls - s0.sm90_calls, 1) << "one ragged call of our kernel";
    EXPECT_EQ(s1.per_segment_calls, s0.per_segment_calls);
    EXPECT_EQ(s1.f32_calls, s0.f32_calls);
  }
}

// The default: each shape class's first call times our kernel against cuDNN's and keeps the
// faster; either way the result is right, and a class is timed once. A bad value of
// MOGAGEN_ATTENTION_KERNEL warns and means the default.
TEST(CudaOps, AttentionKernelChoice) {
  REQUIRE_CUDA();
  Backends b;
  std::unique_ptr<Ops> bad = cuda_ops_with_env({{"MOGAGEN_ATTENTION_KERNEL", "fastest"}});
  const float sc = 1.0f / std::sqrt(128.0f);
  for (Ops* g : {b.gpu.get(), bad.get()}) {
    int64_t ours = -1;
    for (int rep = 0; rep < 3; ++rep) {
      const Tensor q = randn({700, 2, 128}, 400 + rep), k = randn({900, 2, 128}, 410 + rep),
                   v = randn({900, 2, 128}, 420 + rep);
      const Ops::AttentionStats s0 = g->attention_stats();
      check(g->download(g->attention(g->upload(q), g->upload(k), g->upload(v), sc)), b.cpu->attention(q, k, v, sc),
            kBf16Tol, "attention, the class's choice");
      const Ops::AttentionStats s1 = g->attention_stats();
      EXPECT_EQ(s1.fused_calls - s0.fused_calls, 1);
      if (!sm90_gpu()) {
        EXPECT_EQ(s1.sm90_calls, s0.sm90_calls) << "our kernel runs on sm_90 only";
      }
      if (rep > 0) {
        EXPECT_EQ(s1.sm90_calls - s0.sm90_calls, ours) << "the class kept its kernel";
      }
      ours = s1.sm90_calls - s0.sm90_calls;
    }
  }
}

TEST(CudaOps, GatherScatter) {
  REQUIRE_CUDA();
  Backends b;
  Tensor x = randn({20, 3, 5}, 100);
  std::vector<int64_t> idx{3, 0, 19, 3, 7, 7, 7, 12};
  check(b.down(b.gpu->gather_rows(b.up(x), idx)), b.cpu->gather_rows(x, idx), kF32Tol,
        "gather_rows");
  Tensor src = randn({8, 3, 5}, 101);
  std::vector<float> w{0.5f, -1.0f, 2.0f, 0.25f, 1.0f, 3.0f, -0.5f, 0.1f};
  for (const std::vector<float>* wp : {static_cast<const std::vector<float>*>(nullptr), static_cast<const std::vector<float>*>(&w)}) {
    Tensor ho = x.clone(), dout = b.up(x);
    b.cpu->scatter_add_rows_(ho, src, idx, wp);
    b.gpu->scatter_add_rows_(dout, b.up(src), idx, wp);
    check(b.down(dout), ho, kF32Tol, wp ? "scatter_add_rows_ weighted" : "scatter_add_rows_");
  }
  EXPECT_THROW(b.gpu->gather_rows(b.up(x), {20}), Error);
}

// Device index tensors: gathers and (repeat-free) weighted scatters as on the CPU.
TEST(CudaOps, GatherScatterWithIndexTensors) {
  REQUIRE_CUDA();
  Backends b;
  Tensor x = randn({4000, 3, 8}, 110);
  std::vector<int64_t> perm(4000);
  for (int64_t i = 0; i < 4000; ++i) perm[i] = (i * 2741) % 4000;  // a permutation
  perm.resize(3000);                                                // part of one
  std::vector<float> w(3000);
  for (size_t i = 0; i < w.size(); ++i) w[i] = 0.25f + 0.001f * float(i % 977);
  const Tensor di = b.gpu->index(perm), hi = b.cpu->index(perm);
  ASSERT_EQ(di.dtype(), DType::I64);
  check(b.down(b.gpu->gather_rows(b.up(x), di)), b.cpu->gather_rows(x, hi), 0.0,
        "gather_rows (device index)");
  const Tensor src = randn({3000, 3, 8}, 111), wh = Tensor::from_vector(w, {3000});
  const Tensor wd = b.up(wh);
  Tensor ho = x.clone(), dout = b.up(x);
  b.cpu->scatter_add_rows_(ho, src, hi, &wh);
  b.gpu->scatter_add_rows_(dout, b.up(src), di, &wd);
  check(b.down(dout), ho, kF32Tol, "scatter_add_rows_ (device index, weighted)");
  EXPECT_THROW(b.gpu->gather_rows(b.up(x), b.up(x)), Error);  // not an index tensor
}

// MoGA's permutation paths at the DiT's row sizes: gathers of bf16 rows (16-byte copies for
// 1536-wide rows, element copies for 12-wide), the group order undone (unpermute_rows,
// every row written once) from float32 and bf16 rows, and the mean of the branches
// written as bf16 GEMM input. All exact against the CPU on the same (bf16-rounded) values.
TEST(CudaOps, MogaPermutationPaths) {
  REQUIRE_CUDA();
  Backends b;
  for (int64_t row : {1536, 12, 64}) {
    const int64_t n = 1001;
    std::vector<int64_t> perm(n);
    for (int64_t i = 0; i < n; ++i) perm[size_t(i)] = (i * 389) % n;  // a permutation
    std::vector<float> w(size_t(n), 0.f);
    for (int64_t i = 0; i < n; ++i) w[size_t(i)] = 0.5f + 0.001f * float(i % 211);
    const Tensor x = randn({n, row}, uint32_t(170 + row)), xr = bf16_round(x);
    const Tensor xb = b.gpu->weight(x, false);  // bf16 rows on the device
    ASSERT_EQ(xb.dtype(), DType::BF16);
    const Tensor di = b.gpu->index(perm), hi = b.cpu->index(perm);
    const Tensor g = b.gpu->gather_rows(xb, di);
    EXPECT_EQ(g.dtype(), DType::BF16);
    check(b.down(g), b.cpu->gather_rows(xr, hi), 0.0, "gather_rows bf16");
    const Tensor wh = Tensor::from_vector(w, {n}), wd = b.up(wh);
    for (const bool weighted : {false, true}) {
      const Tensor* hw = weighted ? &wh : nullptr;
      const Tensor* dw = weighted ? &wd : nullptr;
      check(b.down(b.gpu->unpermute_rows(b.up(x), di, dw)), b.cpu->unpermute_rows(x, hi, hw), 0.0,
            weighted ? "unpermute_rows f32 weighted" : "unpermute_rows f32");
      check(b.down(b.gpu->unpermute_rows(xb, di, dw)), b.cpu->unpermute_rows(xr, hi, hw), 0.0,
            weighted ? "unpermute_rows bf16 weighted" : "unpermute_rows bf16");
    }
    // the mean of three branches: (a + b) / 3 rounded once to bf16, b float32 or bf16
    const Tensor a = randn({n, row}, uint32_t(180 + row));
    const Tensor want_f = bf16_round(b.cpu->scale(b.cpu->add(a, x), 1.0f / 3.0f));
    const Tensor want_b = bf16_round(b.cpu->scale(b.cpu->add(a, xr), 1.0f / 3.0f));
    const Tensor mf = b.gpu->add_scale_gemm_input(b.up(a), b.up(x), 1.0f / 3.0f);
    const Tensor mb = b.gpu->add_scale_gemm_input(b.up(a), xb, 1.0f / 3.0f);
    EXPECT_EQ(mf.dtype(), DType::BF16);
    check(b.down(mf), want_f, 0.0, "add_scale_gemm_input f32");
    check(b.down(mb), want_b, 0.0, "add_scale_gemm_input bf16");
  }
  // an odd element count takes the element path
  const Tensor a = randn({7, 3}, 190), c = randn({7, 3}, 191);
  check(b.down(b.gpu->add_scale_gemm_input(b.up(a), b.up(c), 0.5f)),
        bf16_round(b.cpu->scale(b.cpu->add(a, c), 0.5f)), 0.0, "add_scale_gemm_input, 21 elements");
  EXPECT_THROW(b.gpu->unpermute_rows(b.up(a), b.gpu->index({0, 1}), nullptr), Error);
}

// Routing on the device equals the CPU's: the same group of every token (ties included),
// the same stable order, p_win, and group sizes, at MoGA's group counts and a long length.
TEST(CudaOps, RouteGroupsMatchesCpu) {
  REQUIRE_CUDA();
  Backends b;
  for (auto [n, m, ties] : {std::array<int64_t, 3>{70001, 5, 0}, {70001, 20, 0}, {5000, 5, 1},
                            {1, 3, 0}, {200000, 4, 1}}) {
    Tensor l = randn({n, m}, uint32_t(120 + m + ties), 2.0f);
    if (ties)  // coarse values: many rows with a tie at the top
      for (int64_t i = 0; i < l.numel(); ++i) l.f32()[i] = std::round(l.f32()[i]);
    const auto c = b.cpu->route_groups(l, true);
    const auto g = b.gpu->route_groups(b.up(l), true);
    EXPECT_EQ(g.sizes, c.sizes) << n << " x " << m;
    EXPECT_EQ(g.gid, c.gid) << n << " x " << m;
    // the device order, read through a gather of the token numbers (exact in float32)
    Tensor tokens = Tensor::empty({n, 1});
    for (int64_t i = 0; i < n; ++i) tokens.f32()[i] = float(i);
    const Tensor go = b.down(b.gpu->gather_rows(b.up(tokens), g.order));
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; ++i) wrong += int64_t(go.f32()[i]) != c.order.data<int64_t>()[i];
    EXPECT_EQ(wrong, 0) << n << " x " << m;
    check(b.down(g.weight), c.weight, 1e-6, "route_groups weight");
    EXPECT_LE(rel_error(Tensor::from_vector(g.p_win, {n}), Tensor::from_vector(c.p_win, {n})), 1e-6);
    EXPECT_TRUE(b.gpu->route_groups(b.up(l)).gid.empty());
  }
}

// compact(): bf16 where cuDNN takes the head size (what attention reads anyway, so the
// result is bit-identical), float32 otherwise; bf16 rows survive a gather; the allocator
// counts what tensors hold.
TEST(CudaOps, CompactOperandsAndMemoryStats) {
  REQUIRE_CUDA();
  Backends b;
  const int64_t n = 700, h = 4, d = 64;
  Tensor q = randn({n, h, d}, 130), k = randn({n, h, d}, 131), v = randn({n, h, d}, 132);
  const Tensor qd = b.up(q), kd = b.up(k), vd = b.up(v);
  const Tensor qc = b.gpu->compact(qd), kc = b.gpu->compact(kd), vc = b.gpu->compact(vd);
  EXPECT_EQ(qc.dtype(), DType::BF16);
  EXPECT_EQ(b.gpu->compact(b.up(randn({10, 2, 12}, 133))).dtype(), DType::F32);  // no cuDNN
  const CuSeqlens cu{0, 300, 700};
  const float sc = 0.125f;
  check(b.down(b.gpu->attention_varlen(qc, kc, vc, cu, cu, sc)),
        b.down(b.gpu->attention_varlen(qd, kd, vd, cu, cu, sc)), 0.0, "varlen, compact operands");
  check(b.down(b.gpu->attention(qc, kc, vc, sc)), b.down(b.gpu->attention(qd, kd, vd, sc)), 0.0,
        "dense, compact operands");
  std::vector<int64_t> perm(n);
  for (int64_t i = 0; i < n; ++i) perm[i] = (i * 13) % n;
  const Tensor gc = b.gpu->gather_rows(qc, b.gpu->index(perm));
  EXPECT_EQ(gc.dtype(), DType::BF16);
  check(b.down(gc), b.cpu->gather_rows(bf16_round(q), perm), 0.0, "gather_rows of bf16 rows");

  const Ops::MemoryStats before = b.gpu->memory_stats();
  b.gpu->reset_peak_memory();
  {
    Tensor big = b.gpu->zeros({64, 1024, 1024});  // 256 MiB
    const Ops::MemoryStats during = b.gpu->memory_stats();
    EXPECT_GE(during.live, before.live + (size_t(256) << 20));
    EXPECT_GE(during.peak_live, during.live);
    EXPECT_GE(during.reserved, during.live);
  }
  const Ops::MemoryStats after = b.gpu->memory_stats();
  EXPECT_EQ(after.live, before.live);
  EXPECT_GE(after.peak_live, before.live + (size_t(256) << 20));
  const Ops::MemoryStats cpu = b.cpu->memory_stats();
  EXPECT_EQ(cpu.peak_live, 0u);
}

TEST(CudaOps, Conv3d) {
  REQUIRE_CUDA();
  Backends b;
  struct Case {
    int64_t ci, t, h, w, co, kt, kh, kw;
    int pt, ph, pw;
  };
  for (const Case& c : {Case{5, 4, 9, 7, 6, 3, 3, 3, 2, 1, 1}, Case{16, 3, 12, 10, 8, 1, 1, 1, 0, 0, 0},
                        Case{4, 5, 6, 6, 8, 3, 1, 1, 0, 0, 0}, Case{3, 1, 16, 16, 4, 1, 3, 3, 0, 1, 1},
                        Case{32, 2, 20, 24, 16, 3, 3, 3, 2, 1, 1}}) {
    Tensor x = randn({c.ci, c.t, c.h, c.w}, 110), w = randn({c.co, c.ci, c.kt, c.kh, c.kw}, 111, 0.1f);
    Tensor bias = randn({c.co}, 112);
    const Tensor ref = b.cpu->conv3d(x, w, &bias, c.pt, c.ph, c.pw);
    Tensor wb = b.gpu->weight(w), bb = b.gpu->weight(bias, true);
    check(b.down(b.gpu->conv3d(b.up(x), wb, &bb, c.pt, c.ph, c.pw)), ref, kBf16Tol, "conv3d bf16");
    Tensor wf = b.gpu->weight(w, true);
    check(b.down(b.gpu->conv3d(b.up(x), wf, &bb, c.pt, c.ph, c.pw)), ref, kTf32Tol, "conv3d f32 (tf32)");
    check(b.down(b.gpu->conv3d(b.up(x), wf, nullptr, c.pt, c.ph, c.pw)),
          b.cpu->conv3d(x, w, nullptr, c.pt, c.ph, c.pw), kTf32Tol, "conv3d f32 (tf32) no bias");
  }
}

// The DiT's q/k path in one pass: RMSNorm over the row, RoPE per head, bf16 out; the same
// values as the float32 composition up to the one bf16 rounding. A head size cuDNN cannot
// take (6) keeps the float32 composition.
TEST(CudaOps, RmsNormRopeFused) {
  REQUIRE_CUDA();
  Backends b;
  for (auto [n, h, hd] : {std::array<int64_t, 3>{37, 12, 128}, {300, 4, 64}, {5, 3, 6}}) {
    const Tensor x = randn({n, h * hd}, 160), w = randn({h * hd}, 161);
    const Tensor c = randn({n, hd / 2}, 162), s = randn({n, hd / 2}, 163);
    Tensor ref = b.cpu->rms_norm(x, w, 1e-6f).reshape({n, h, hd});
    b.cpu->rope_(ref, c, s);
    const Tensor wd = b.gpu->weight(w, true), cd = b.up(c), sd = b.up(s);
    const Tensor y = b.gpu->rms_norm_rope(b.up(x), wd, 1e-6f, h, cd, sd);
    EXPECT_EQ(y.shape(), (Shape{n, h, hd}));
    const bool fused = hd % 8 == 0;
    EXPECT_EQ(y.dtype(), fused ? DType::BF16 : DType::F32);
    check(b.down(y), fused ? bf16_round(ref) : ref, fused ? 4e-3 : kF32Tol, "rms_norm_rope");
    Tensor comp = b.gpu->rms_norm(b.up(x), wd, 1e-6f).reshape({n, h, hd});
    b.gpu->rope_(comp, cd, sd);
    check(b.down(y), b.down(b.gpu->compact(comp)), 4e-3, "rms_norm_rope vs GPU composition");
    // a bf16 row (linear_compact's product) is read as it is: the same as its float32 value
    Tensor ref16 = b.cpu->rms_norm(bf16_round(x), w, 1e-6f).reshape({n, h, hd});
    b.cpu->rope_(ref16, c, s);
    const Tensor y16 = b.gpu->rms_norm_rope(b.gpu->weight(x, false), wd, 1e-6f, h, cd, sd);
    EXPECT_EQ(y16.dtype(), fused ? DType::BF16 : DType::F32);
    check(b.down(y16), fused ? bf16_round(ref16) : ref16, fused ? 4e-3 : kF32Tol,
          "rms_norm_rope from bf16 rows");
    check(b.down(y16), b.down(b.gpu->rms_norm_rope(b.up(bf16_round(x)), wd, 1e-6f, h, cd, sd)), 0.0,
          "rms_norm_rope bf16 rows vs their float32 values");
  }
}

// T5's relative position bias in one pass: an exact copy of table cells, so bit-identical
// to the CPU, at a small length and at umT5-XXL's (64 heads, 512 tokens, 32 buckets).
TEST(CudaOps, RelativePositionBias) {
  REQUIRE_CUDA();
  Backends b;
  for (auto [nb, H, L] : {std::array<int64_t, 3>{6, 3, 9}, {32, 64, 512}, {32, 4, 1}}) {
    const Tensor table = randn({nb, H}, 164);
    std::vector<int64_t> rel(size_t(2 * L - 1));
    for (int64_t r = -(L - 1); r <= L - 1; ++r)
      rel[size_t(r + L - 1)] = t5_relative_bucket(r, int(nb), 128);
    const Tensor ref = b.cpu->relative_position_bias(table, b.cpu->index(rel), L);
    const Tensor y = b.gpu->relative_position_bias(b.gpu->weight(table, true), b.gpu->index(rel), L);
    EXPECT_EQ(y.shape(), (Shape{H, L, L}));
    EXPECT_EQ(rel_error(b.down(y), ref), 0.0) << "L " << L;
  }
}

// The cross-attention's input path: the affine LayerNorm written as bf16 GEMM input (the
// same bits as the float32 norm rounded), and q's RMSNorm over the row written in the
// compact form from float32 or bf16 rows. A head size cuDNN cannot take keeps float32.
TEST(CudaOps, CrossAttentionNorms) {
  REQUIRE_CUDA();
  Backends b;
  for (auto [n, h, hd] : {std::array<int64_t, 3>{37, 12, 128}, {300, 4, 64}, {5, 3, 6}}) {
    const int64_t d = h * hd;
    const Tensor x = randn({n, d}, 165, 2.0f), w = randn({d}, 166), bias = randn({d}, 167);
    const Tensor wd = b.gpu->weight(w, true), bd = b.gpu->weight(bias, true);
    const Tensor ln = b.gpu->layer_norm_gemm(b.up(x), &wd, &bd, 1e-6f);
    EXPECT_EQ(ln.dtype(), DType::BF16);
    check(b.down(ln), bf16_round(b.cpu->layer_norm(x, &w, &bias, 1e-6f)), 4e-3, "layer_norm_gemm");
    check(b.down(ln), bf16_round(b.down(b.gpu->layer_norm(b.up(x), &wd, &bd, 1e-6f))), 0.0,
          "layer_norm_gemm vs GPU layer_norm rounded");
    const bool fused = hd % 8 == 0;
    const Tensor ref = b.cpu->rms_norm(x, w, 1e-6f).reshape({n, h, hd});
    const Tensor q = b.gpu->rms_norm_compact(b.up(x), wd, 1e-6f, h);
    EXPECT_EQ(q.dtype(), fused ? DType::BF16 : DType::F32);
    EXPECT_EQ(q.shape(), (Shape{n, h, hd}));
    check(b.down(q), fused ? bf16_round(ref) : ref, fused ? 4e-3 : kF32Tol, "rms_norm_compact");
    const Tensor ref16 = b.cpu->rms_norm(bf16_round(x), w, 1e-6f).reshape({n, h, hd});
    const Tensor q16 = b.gpu->rms_norm_compact(b.gpu->weight(x, false), wd, 1e-6f, h);
    check(b.down(q16), fused ? bf16_round(ref16) : ref16, fused ? 4e-3 : kF32Tol,
          "rms_norm_compact from bf16 rows");
  }
}

// The VAE's cached frames are held in bf16 and read back as float32 by cat_time and
// slice_time: exactly the bf16-rounded values, in the right frames.
TEST(CudaOps, HoldFramesKeepsBf16) {
  REQUIRE_CUDA();
  Backends b;
  const Tensor a = randn({5, 2, 6, 7}, 150), x = randn({5, 3, 6, 7}, 151);
  const Tensor held = b.gpu->hold_frames(b.up(a));
  EXPECT_EQ(held.dtype(), DType::BF16);
  EXPECT_EQ(held.shape(), a.shape());
  check(b.down(b.gpu->cat_time(held, b.up(x))), b.cpu->cat_time(bf16_round(a), x), 0.0,
        "cat_time of held frames");
  check(b.down(b.gpu->slice_time(held, 1, 2)), b.cpu->slice_time(bf16_round(a), 1, 2), 0.0,
        "slice_time of held frames");
  // both operands held, and a held second operand
  check(b.down(b.gpu->cat_time(held, held)), b.cpu->cat_time(bf16_round(a), bf16_round(a)), 0.0,
        "cat_time of two held tensors");
  check(b.down(b.gpu->cat_time(b.up(x), held)), b.cpu->cat_time(x, bf16_round(a)), 0.0,
        "cat_time, held second");
}

// The cache after a chunk, written held in one pass: the last min(2, T_old + T) frames of
// [old, x], for no cache yet, one and two cached frames, one and three new frames. Exactly
// the CPU's composition, rounded to bf16 once.
TEST(CudaOps, CacheTailIsTheHeldComposition) {
  REQUIRE_CUDA();
  Backends b;
  for (int64_t old_t : {0, 1, 2})
    for (int64_t t : {1, 3}) {
      const Tensor x = randn({4, t, 5, 6}, uint32_t(158 + t));
      const Tensor old = old_t ? bf16_round(randn({4, old_t, 5, 6}, uint32_t(160 + old_t))) : Tensor();
      const Tensor want = bf16_round(b.cpu->cache_tail(old, x, 2));
      const Tensor got = b.gpu->cache_tail(old_t ? b.gpu->hold_frames(b.up(old)) : Tensor(), b.up(x), 2);
      EXPECT_EQ(got.dtype(), DType::BF16);
      EXPECT_EQ(got.shape(), want.shape()) << "old " << old_t << " frames, x " << t;
      check(b.down(got), want, 0.0, "cache_tail");
    }
}

// conv3d with float32 weights (the VAE) runs through cuDNN on bf16 data by default, on
// float32 data (TF32) with MOGAGEN_CONV=cudnn, and through im2col + GEMM with
// MOGAGEN_CONV=im2col. The float32 paths are TF32 against the float32 CPU reference and must
// not be bit-identical (that would mean cuDNN silently fell back); the bf16 path is the
// float32 convolution of bf16-rounded operands; a bad value is refused.
TEST(CudaOps, Conv3dCudnnAndIm2colAgree) {
  REQUIRE_CUDA();
  Backends b;  // b.gpu: float32 data through cuDNN
  std::unique_ptr<Ops> im2col = cuda_ops_with_conv("im2col"), bf16 = cuda_ops_with_conv("bf16");
  std::unique_ptr<Ops> by_default = cuda_ops_with_conv(nullptr);  // MOGAGEN_CONV unset: bf16-ndhwc
  EXPECT_THROW(cuda_ops_with_conv("winograd"), Error);
  struct Case {
    int64_t ci, t, h, w, co, kt, kh, kw;
    int pt, ph, pw;
  };
  // a decoder resblock conv (causal front padding), one with cached frames (no padding), a
  // time conv and a 1x1x1 shortcut
  for (const Case& c : {Case{64, 1, 30, 52, 64, 3, 3, 3, 2, 1, 1}, Case{32, 6, 24, 40, 48, 3, 3, 3, 0, 1, 1},
                        Case{48, 3, 16, 16, 96, 3, 1, 1, 0, 0, 0}, Case{40, 4, 20, 20, 24, 1, 1, 1, 0, 0, 0}}) {
    Tensor x = randn({c.ci, c.t, c.h, c.w}, 120), w = randn({c.co, c.ci, c.kt, c.kh, c.kw}, 121, 0.05f);
    Tensor bias = randn({c.co}, 122);
    const Tensor ref = b.cpu->conv3d(x, w, &bias, c.pt, c.ph, c.pw);
    const Tensor aw = b.gpu->weight(w, true), ab = b.gpu->weight(bias, true);
    const Tensor a = b.down(b.gpu->conv3d(b.up(x), aw, &ab, c.pt, c.ph, c.pw));
    const Tensor bw = im2col->weight(w, true), bb = im2col->weight(bias, true);
    const Tensor g = im2col->download(im2col->conv3d(im2col->upload(x), bw, &bb, c.pt, c.ph, c.pw));
    check(a, ref, kTf32Tol, "conv3d f32 through cuDNN");
    check(g, ref, kTf32Tol, "conv3d f32 through im2col");
    const double d = check(a, g, kTf32Tol, "cuDNN against im2col");
    if (c.kt * c.kh * c.kw > 1) {  // (a 1x1x1 conv is a plain GEMM either way)
      EXPECT_GT(d, 0.0) << "bit-identical: cuDNN did not run";
    }
    // MOGAGEN_CONV=bf16: the float32 convolution of the bf16-rounded operands, its output
    // rounded to bf16 before the bias (about 2^-9 of each value)
    const Tensor ref16 = b.cpu->conv3d(bf16_round(x), bf16_round(w), &bias, c.pt, c.ph, c.pw);
    const Tensor hw = bf16->weight(w, true), hb = bf16->weight(bias, true);
    const Tensor h = bf16->download(bf16->conv3d(bf16->upload(x), hw, &hb, c.pt, c.ph, c.pw));
    check(h, ref16, 4e-3, "conv3d bf16 through cuDNN");
    EXPECT_GT(rel_error(h, a), 0.0) << "bit-identical to the float32 path: the bf16 convolution did not run";
    // the weight's bf16 copy is kept: a second call gives the same values
    const Tensor h2 = bf16->download(bf16->conv3d(bf16->upload(x), hw, &hb, c.pt, c.ph, c.pw));
    EXPECT_EQ(rel_error(h2, h), 0.0);
    // unset MOGAGEN_CONV is the bf16 arithmetic, on channels-last copies (another backend
    // instance may time its way to another algorithm, so the values are compared within
    // bf16's rounding)
    const Tensor dw = by_default->weight(w, true), db = by_default->weight(bias, true);
    check(by_default->download(by_default->conv3d(by_default->upload(x), dw, &db, c.pt, c.ph, c.pw)), ref16, 4e-3,
          "conv3d, MOGAGEN_CONV unset");
    // after a cached frame (conv3d_after): one held frame in front of x, one less of padding
    if (c.kt > 1) {
      const Tensor front = randn({c.ci, 1, c.h, c.w}, 123);
      const int pt = std::max(0, c.pt - 1);
      const Tensor cat_ref = b.cpu->cat_time(front, x);
      check(b.down(b.gpu->conv3d_after(b.gpu->hold_frames(b.up(front)), b.up(x), aw, &ab, pt, c.ph, c.pw)),
            b.cpu->conv3d(b.cpu->cat_time(bf16_round(front), x), w, &bias, pt, c.ph, c.pw), kTf32Tol,
            "conv3d_after, float32 path (held front)");
      const Tensor hf = bf16->download(
          bf16->conv3d_after(bf16->hold_frames(bf16->upload(front)), bf16->upload(x), hw, &hb, pt, c.ph, c.pw));
      check(hf, b.cpu->conv3d(bf16_round(cat_ref), bf16_round(w), &bias, pt, c.ph, c.pw), 4e-3,
            "conv3d_after, bf16 path");
      // with a residual (the VAE residual block's skip): added in the widening pass, equal
      // to conv3d_after + residual bit for bit, on both paths
      const Tensor res = randn(hf.shape(), 126);
      const Tensor hr = bf16->download(bf16->conv3d_after_add(bf16->hold_frames(bf16->upload(front)),
                                                              bf16->upload(x), hw, &hb, pt, c.ph, c.pw,
                                                              bf16->upload(res)));
      EXPECT_EQ(rel_error(hr, b.cpu->add(hf, res)), 0.0) << "conv3d_after_add, bf16 path";
      const Tensor held = b.gpu->hold_frames(b.up(front));
      const Tensor fr = b.down(b.gpu->conv3d_after_add(held, b.up(x), aw, &ab, pt, c.ph, c.pw, b.up(res)));
      EXPECT_EQ(rel_error(fr, b.cpu->add(b.down(b.gpu->conv3d_after(held, b.up(x), aw, &ab, pt, c.ph, c.pw)), res)),
                0.0)
          << "conv3d_after_add, float32 path";
    }
  }
  // with bf16 convolutions, the norm and SiLU in front of them are written in bf16: the
  // float32 pass's values, rounded
  const Tensor xn = randn({24, 2, 10, 12}, 124), gn = randn({24}, 125);
  const Tensor n32 = b.down(b.gpu->channel_l2_norm_silu(b.up(xn), b.up(gn)));
  const Tensor n16 = bf16->channel_l2_norm_silu(bf16->upload(xn), bf16->upload(gn));
  EXPECT_EQ(n16.dtype(), DType::BF16);
  // and the default is that mode: its norm writes bf16 too (float32 with MOGAGEN_CONV=cudnn)
  EXPECT_EQ(by_default->channel_l2_norm_silu(by_default->upload(xn), by_default->upload(gn)).dtype(), DType::BF16);
  EXPECT_EQ(b.gpu->channel_l2_norm_silu(b.up(xn), b.up(gn)).dtype(), DType::F32);
  EXPECT_EQ(rel_error(bf16->download(n16).to(DType::F32), bf16_round(n32)), 0.0);
}

// Shapes large enough that the conv column buffer and the fp32 attention score block are
// processed in several tiles.
TEST(CudaOps, TiledConvAndAttention) {
  REQUIRE_CUDA();
  Backends b;
  Tensor x = randn({96, 3, 120, 208}, 140), w = randn({8, 96, 3, 3, 3}, 141, 0.05f);
  Tensor bias = randn({8}, 142);
  const Tensor ref = b.cpu->conv3d(x, w, &bias, 2, 1, 1);
  Tensor bb = b.gpu->weight(bias, true), dx = b.up(x);
  check(b.down(b.gpu->conv3d(dx, b.gpu->weight(w), &bb, 2, 1, 1)), ref, kBf16Tol,
        "conv3d bf16, 2 column tiles");
  check(b.down(b.gpu->conv3d(dx, b.gpu->weight(w, true), &bb, 2, 1, 1)), ref, kTf32Tol,
        "conv3d f32 (tf32), 4 column tiles");
  const int64_t n = 12000, d = 384;
  Tensor q = randn({n, 1, d}, 143), k = randn({n, 1, d}, 144), v = randn({n, 1, d}, 145);
  const float sc = 1.0f / std::sqrt(float(d));
  check(b.down(b.gpu->attention(b.up(q), b.up(k), b.up(v), sc)), b.cpu->attention(q, k, v, sc),
        kF32Tol, "attention d384 n12000, 2 row tiles");
}

// The DiT's patchify and unpatchify on the device: the CPU's copies, bit for bit (Wan's
// 1x2x2 patches, and an uneven 2x3x2 one).
TEST(CudaOps, PatchifyAndUnpatchify) {
  REQUIRE_CUDA();
  Backends b;
  struct Case {
    int64_t c, t, h, w;
    int pt, ph, pw;
  };
  for (const Case& k : {Case{16, 3, 8, 10, 1, 2, 2}, Case{4, 4, 6, 4, 2, 3, 2}}) {
    const Tensor x = randn({k.c, k.t, k.h, k.w}, 140);
    const Tensor p = b.gpu->patchify(b.up(x), k.pt, k.ph, k.pw);
    check(b.down(p), b.cpu->patchify(x, k.pt, k.ph, k.pw), 0.0, "patchify");
    const int64_t F = k.t / k.pt, H = k.h / k.ph, W = k.w / k.pw, D = k.c * k.pt * k.ph * k.pw;
    const Tensor y = randn({F * H * W, D}, 141);
    const Tensor v = b.gpu->unpatchify(b.up(y), k.c, F, H, W, k.pt, k.ph, k.pw);
    EXPECT_EQ(v.shape(), (Shape{k.c, k.t, k.h, k.w}));
    check(b.down(v), b.cpu->unpatchify(y, k.c, F, H, W, k.pt, k.ph, k.pw), 0.0, "unpatchify");
  }
  EXPECT_THROW(b.gpu->patchify(b.up(randn({2, 3, 5, 4}, 142)), 1, 2, 2), Error);  // 5 rows: not whole patches
  EXPECT_THROW(b.gpu->unpatchify(b.up(randn({7, 16}, 143)), 4, 1, 2, 3, 1, 2, 2), Error);  // 7 tokens, not 6
}

TEST(CudaOps, VideoAndCopies) {
  REQUIRE_CUDA();
  Backends b;
  Tensor x = randn({6, 4, 5, 3}, 120), y = randn({6, 2, 5, 3}, 121);
  Tensor dx = b.up(x), dy = b.up(y);
  check(b.down(b.gpu->upsample2x(dx)), b.cpu->upsample2x(x), 0.0, "upsample2x");
  // for a convolution: float32 with float32 convolutions (b.gpu), bf16 with the default ones
  const Tensor uf = b.gpu->upsample2x_for_conv(dx);
  EXPECT_EQ(uf.dtype(), DType::F32);
  check(b.down(uf), b.cpu->upsample2x(x), 0.0, "upsample2x_for_conv, float32 convolutions");
  {
    std::unique_ptr<Ops> d = cuda_ops_with_conv(nullptr);
    const Tensor ub = d->upsample2x_for_conv(d->upload(x));
    EXPECT_EQ(ub.dtype(), DType::BF16);
    check(d->download(ub).to(DType::F32), bf16_round(b.cpu->upsample2x(x)), 0.0, "upsample2x_for_conv, bf16");
    // a wide row (more than one block of threads across it)
    const Tensor xw = randn({2, 1, 3, 300}, 127);
    check(d->download(d->upsample2x_for_conv(d->upload(xw))).to(DType::F32), bf16_round(b.cpu->upsample2x(xw)),
          0.0, "upsample2x_for_conv, 300 wide");
    check(b.down(b.gpu->upsample2x(b.up(xw))), b.cpu->upsample2x(xw), 0.0, "upsample2x, 300 wide");
  }
  check(b.down(b.gpu->cat_time(dx, dy)), b.cpu->cat_time(x, y), 0.0, "cat_time");
  check(b.down(b.gpu->slice_time(dx, 1, 3)), b.cpu->slice_time(x, 1, 3), 0.0, "slice_time");
  check(b.down(b.gpu->slice_time(dx, 2, 2)), b.cpu->slice_time(x, 2, 2), 0.0, "slice_time empty");
  check(b.down(b.gpu->interleave_time(dx)), b.cpu->interleave_time(x), 0.0, "interleave_time");
  for (auto [r, c] : {std::array<int64_t, 2>{37, 70}, {1, 5}, {64, 32}, {1000, 3}}) {
    Tensor m = randn({r, c}, 122);
    check(b.down(b.gpu->transpose(b.up(m))), b.cpu->transpose(m), 0.0, "transpose");
  }
  check(b.down(b.gpu->copy(dx)), x, 0.0, "copy");
  Tensor dst = b.gpu->zeros({6 * 4, 15});
  b.gpu->copy_(dst, dx);
  check(b.down(dst), x.reshape({24, 15}), 0.0, "copy_");
  b.gpu->synchronize();
}

// Throughput of the two hot ops at Wan2.1-1.3B 480p shapes (informational).
TEST(CudaOps, PerfReport) {
  REQUIRE_CUDA();
  Backends b;
  const int64_t n = 32760, dm = 1536, h = 12, hd = 128;
  Tensor x = b.gpu->empty({n, dm});
  Tensor w = b.gpu->weight(randn({dm, dm}, 130, 0.02f)), bias = b.gpu->weight(randn({dm}, 131));
  Tensor w1 = b.gpu->weight(randn({8960, dm}, 132, 0.02f));
  auto time_it = [&](auto&& f, int reps) {
    f();
    b.gpu->synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) f();
    b.gpu->synchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
  };
  x = b.gpu->zeros({n, dm});
  const double tl = time_it([&] { b.gpu->linear(x, w, &bias); }, 10);
  const double tf = time_it([&] { b.gpu->linear(x, w1, nullptr); }, 10);
  std::printf("  linear %ldx%ldx%ld bf16: %.3f ms, %.0f TFLOP/s\n", long(n), long(dm), long(dm),
              tl * 1e3, 2.0 * n * dm * dm / tl / 1e12);
  std::printf("  linear %ldx%ldx%ld bf16: %.3f ms, %.0f TFLOP/s\n", long(n), long(dm), 8960L,
              tf * 1e3, 2.0 * n * dm * 8960 / tf / 1e12);
  Tensor q = b.up(randn({n, h, hd}, 133));
  const double ta = time_it([&] { b.gpu->attention(q, q, q, 0.088f); }, 5);
  std::printf("  attention N=%ld H=%ld D=%ld (cuDNN, incl. bf16 conversions): %.3f ms, %.0f TFLOP/s\n",
              long(n), long(h), long(hd), ta * 1e3, 4.0 * n * n * hd * h / ta / 1e12);
  CuSeqlens cu{0};
  for (int64_t len : {4100, 3900, 5000, 2000, 6000, 4096, 3664, 4000}) cu.push_back(cu.back() + len);
  const double tv = time_it([&] { b.gpu->attention_varlen(q, q, q, cu, cu, 0.088f); }, 5);
  double fl = 0;
  for (size_t i = 0; i + 1 < cu.size(); ++i) fl += 4.0 * double(cu[i + 1] - cu[i]) * double(cu[i + 1] - cu[i]) * hd * h;
  std::printf("  attention_varlen 8 segments, N=%ld H=%ld D=%ld (cuDNN ragged): %.3f ms, %.0f TFLOP/s\n",
              long(n), long(h), long(hd), tv * 1e3, fl / tv / 1e12);
  const double tn = time_it([&] { b.gpu->layer_norm(x, nullptr, nullptr, 1e-6f); }, 10);
  std::printf("  layer_norm [%ld, %ld]: %.3f ms, %.0f GB/s\n", long(n), long(dm), tn * 1e3,
              2.0 * n * dm * 4 / tn / 1e9);
  Tensor vx = b.up(randn({96, 3, 120, 208}, 134));
  Tensor cw = b.gpu->weight(randn({96, 96, 3, 3, 3}, 135, 0.05f));
  const double tc = time_it([&] { b.gpu->conv3d(vx, cw, nullptr, 2, 1, 1); }, 3);
  std::printf("  conv3d 96->96 3x3x3 on [96,3,120,208] bf16 (im2col+GEMM): %.3f ms, %.1f TFLOP/s\n",
              tc * 1e3, 2.0 * 96 * 96 * 27 * 3 * 120 * 208 / tc / 1e12);
}
