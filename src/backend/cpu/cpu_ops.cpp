// The float32 CPU reference backend: exact float32 math, OpenBLAS for GEMMs, OpenMP for
// elementwise loops. Every fused op of the CUDA backend is defined by what it does here.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "mogagen/ops.h"

namespace mg {
namespace {

// An index tensor of the CPU backend: I64 [m] on the host.
const int64_t* index_data(const Tensor& idx, const char* op) {
  if (!idx.defined() || idx.dtype() != DType::I64 || !idx.device().is_cpu() || idx.ndim() != 1)
    throw internal_error(std::string(op) + ": expected a CPU I64 [m] index tensor, got " +
                         (idx.defined() ? idx.str() + " on " + idx.device().str() : "undefined"));
  return idx.data<int64_t>();
}

void expect_f32(const Tensor& t, const char* op, const char* arg) {
  if (!t.defined() || t.dtype() != DType::F32 || !t.device().is_cpu())
    throw internal_error(std::string(op) + ": argument " + arg +
                         " must be a CPU F32 tensor, got " +
                         (t.defined() ? t.str() + " on " + t.device().str() : "undefined"));
}

void expect_numel(const Tensor& a, const Tensor& b, const char* op) {
  if (a.numel() != b.numel())
    throw internal_error(std::string(op) + ": size mismatch " + a.str() + " vs " + b.str());
}

// Parallel regions pay only for enough work: small loops run on one thread (idle OpenMP
// workers spinning on an oversubscribed machine made small models many times slower).
inline bool parallel_worth(int64_t work) { return work >= (int64_t(1) << 15); }

}  // namespace
}  // namespace mg

// OpenBLAS's own thread pool (the pthread build Debian installs by default) and OpenMP's
// spinning workers fight over the cores: on two cores the DiT ran 2.4x slower than with
// one pool. The backend keeps OpenBLAS single-threaded and splits large GEMMs over the
// OpenMP threads itself (sgemm_split). Weak, so that any other CBLAS links too.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace mg {
namespace {

// Row-major C[m, n] = alpha * A[m, k] * op(B) + beta * C, with op(B) = B^T when trans_b
// (B stored [n, k]) or B (stored [k, n]). Large products are cut along the longer of m
// and n into one slab per OpenMP thread; each slab is one single-threaded sgemm, so every
// element is computed exactly as an unsplit call computes it.
void sgemm_split(bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (nt <= 1 || double(m) * double(n) * double(k) < 2e6 || std::max(m, n) < 2 * 32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const bool by_rows = m >= n;
  const int64_t len = by_rows ? m : n;
  // slabs in multiples of 16 rows/columns keep the kernels' full tiles
  const int64_t step = ((len + nt - 1) / nt + 15) / 16 * 16;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int t = 0; t < nt; ++t) {
    const int64_t lo = std::min<int64_t>(len, int64_t(t) * step);
    const int64_t hi = std::min<int64_t>(len, lo + step);
    if (hi <= lo) continue;
    if (by_rows)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, hi - lo, n, k, alpha, a + lo * lda, lda, b,
                  ldb, beta, c + lo * ldc, ldc);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, m, hi - lo, k, alpha, a, lda,
                  trans_b ? b + lo * ldb : b + lo, ldb, beta, c + lo, ldc);
  }
}

inline float gelu_tanh_f(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}
inline float silu_f(float x) { return x / (1.0f + std::exp(-x)); }

// Softmax attention for one head over row-strided q/k/v (ld = row stride in floats).
// Query rows are processed in blocks so the score buffer stays small.
void attn_head(const float* q, const float* k, const float* v, float* o, int64_t nq,
               int64_t nk, int64_t d, int64_t ldq, int64_t ldk, int64_t ldo, float scale,
               const float* bias /* [nq, nk] or null */, std::vector<float>& buf) {
  if (nq == 0) return;
  if (nk == 0) {
    for (int64_t i = 0; i < nq; ++i) std::memset(o + i * ldo, 0, d * sizeof(float));
    return;
  }
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(nq, (1 << 22) / nk));
  buf.resize(static_cast<size_t>(block * nk));
  for (int64_t r0 = 0; r0 < nq; r0 += block) {
    const int64_t rb = std::min(block, nq - r0);
    float* s = buf.data();
    sgemm_split(true, rb, nk, d, scale, q + r0 * ldq, ldq, k, ldk, 0.0f, s, nk);
#pragma omp parallel for schedule(static) if (parallel_worth(rb * nk))
    for (int64_t i = 0; i < rb; ++i) {
      float* row = s + i * nk;
      if (bias) {
        const float* br = bias + (r0 + i) * nk;
        for (int64_t j = 0; j < nk; ++j) row[j] += br[j];
      }
      float mx = -INFINITY;
      for (int64_t j = 0; j < nk; ++j) mx = std::max(mx, row[j]);
      double sum = 0;
      for (int64_t j = 0; j < nk; ++j) {
        row[j] = std::exp(row[j] - mx);
        sum += row[j];
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (int64_t j = 0; j < nk; ++j) row[j] *= inv;
    }
    sgemm_split(false, rb, d, nk, 1.0f, s, nk, v, ldk, 0.0f, o + r0 * ldo, ldo);
  }
}

class CpuOps final : public Ops {
 public:
  CpuOps() {
    if (openblas_set_num_threads) openblas_set_num_threads(1);
  }
  Device device() const override { return Device::cpu(); }
  std::string name() const override { return "cpu (float32 reference)"; }

  Tensor weight(const Tensor& host, bool /*keep_f32*/) override {
    if (host.dtype() == DType::F32 && host.device().is_cpu() &&
        reinterpret_cast<uintptr_t>(host.raw()) % alignof(float) == 0)
      return host;  // zero-copy (e.g. straight from the mmap)
    return host.to(DType::F32);
  }
  Tensor upload(const Tensor& host) override {
    expect_f32(host, "upload", "host");
    return host.clone();
  }
  Tensor download(const Tensor& t) override {
    expect_f32(t, "download", "t");
    return t;
  }

  Tensor patchify(const Tensor& x, int pt, int ph, int pw) override {
    expect_f32(x, "patchify", "x");
    if (x.ndim() != 4 || pt <= 0 || ph <= 0 || pw <= 0 || x.dim(1) % pt || x.dim(2) % ph || x.dim(3) % pw)
      throw internal_error("patchify: x " + x.str() + " is not whole patches");
    const int64_t C = x.dim(0), T = x.dim(1), h = x.dim(2), w = x.dim(3);
    const int64_t F = T / pt, H = h / ph, W = w / pw, P = int64_t(pt) * ph * pw, D = C * P;
    Tensor out = Tensor::empty({F * H * W, D});
    const float* src = x.f32();
    float* dst = out.f32();
    for (int64_t f = 0; f < F; ++f)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t xx = 0; xx < W; ++xx) {
          float* row = dst + ((f * H + y) * W + xx) * D;
          for (int64_t c = 0; c < C; ++c)
            for (int i = 0; i < pt; ++i)
              for (int a = 0; a < ph; ++a)
                for (int b = 0; b < pw; ++b)
                  row[c * P + (i * ph + a) * pw + b] = src[((c * T + f * pt + i) * h + y * ph + a) * w + xx * pw + b];
        }
    return out;
  }

  Tensor unpatchify(const Tensor& yv, int64_t C, int64_t F, int64_t H, int64_t W, int pt, int ph,
                    int pw) override {
    expect_f32(yv, "unpatchify", "y");
    const int64_t P = int64_t(pt) * ph * pw, D = C * P, T = F * pt, h = H * ph, w = W * pw;
    if (yv.ndim() != 2 || yv.dim(0) != F * H * W || yv.dim(1) != D)
      throw internal_error("unpatchify: y " + yv.str() + " is not [" + std::to_string(F * H * W) + ", " +
                           std::to_string(D) + "]");
    Tensor out = Tensor::empty({C, T, h, w});
    const float* src = yv.f32();
    float* dst = out.f32();
    for (int64_t f = 0; f < F; ++f)
      for (int64_t yy = 0; yy < H; ++yy)
        for (int64_t xx = 0; xx < W; ++xx) {
          const float* row = src + ((f * H + yy) * W + xx) * D;
          for (int i = 0; i < pt; ++i)
            for (int a = 0; a < ph; ++a)
              for (int b = 0; b < pw; ++b)
                for (int64_t c = 0; c < C; ++c)
                  dst[((c * T + f * pt + i) * h + yy * ph + a) * w + xx * pw + b] = row[((i * ph + a) * pw + b) * C + c];
        }
    return out;
  }
  Tensor empty(const Shape& s) override { return Tensor::empty(s); }
  Tensor zeros(const Shape& s) override { return Tensor::zeros(s); }

  Tensor linear(const Tensor& x, const Tensor& w, const Tensor* b) override {
    expect_f32(x, "linear", "x");
    expect_f32(w, "linear", "w");
    const int64_t n = w.dim(0), k = w.dim(1);
    if (x.dim(-1) != k)
      throw internal_error("linear: x " + x.str() + " does not match weight " + w.str());
    const int64_t m = x.numel() / k;
    Shape os = x.shape();
    os.back() = n;
    Tensor y = Tensor::empty(os);
    float* yp = y.f32();
    if (m > 0)
      sgemm_split(true, m, n, k, 1.0f, x.f32(), k, w.f32(), k, 0.0f, yp, n);
    if (b) {
      expect_f32(*b, "linear", "b");
      if (b->numel() != n) throw internal_error("linear: bias " + b->str() + " for " + w.str());
      const float* bp = b->f32();
#pragma omp parallel for schedule(static) if (parallel_worth(m * n))
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) yp[i * n + j] += bp[j];
    }
    return y;
  }

  template <class F>
  Tensor map1(const Tensor& x, const char* op, F f) {
    expect_f32(x, op, "x");
    Tensor y = Tensor::empty(x.shape());
    const float* a = x.f32();
    float* o = y.f32();
    const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (parallel_worth(n))
    for (int64_t i = 0; i < n; ++i) o[i] = f(a[i]);
    return y;
  }
  template <class F>
  Tensor map2(const Tensor& x, const Tensor& z, const char* op, F f) {
    expect_f32(x, op, "a");
    expect_f32(z, op, "b");
    expect_numel(x, z, op);
    Tensor y = Tensor::empty(x.shape());
    const float* a = x.f32();
    const float* b = z.f32();
    float* o = y.f32();
    const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (parallel_worth(n))
    for (int64_t i = 0; i < n; ++i) o[i] = f(a[i], b[i]);
    return y;
  }

  Tensor add(const Tensor& a, const Tensor& b) override {
    return map2(a, b, "add", [](float x, float y) { return x + y; });
  }
  void add_(Tensor& a, const Tensor& b) override {
    expect_f32(a, "add_", "a");
    expect_f32(b, "add_", "b");
    expect_numel(a, b, "add_");
    float* p = a.f32();
    const float* q = b.f32();
    const int64_t n = a.numel();
#pragma omp parallel for schedule(static) if (parallel_worth(n))
    for (int64_t i = 0; i < n; ++i) p[i] += q[i];
  }
  Tensor mul(const Tensor& a, const Tensor& b) override {
    return map2(a, b, "mul", [](float x, float y) { return x * y; });
  }
  Tensor gelu_tanh(const Tensor& x) override { return map1(x, "gelu_tanh", gelu_tanh_f); }
  Tensor silu(const Tensor& x) override { return map1(x, "silu", silu_f); }
  Tensor gelu_tanh_mul(const Tensor& a, const Tensor& b) override {
    return map2(a, b, "gelu_tanh_mul", [](float x, float y) { return gelu_tanh_f(x) * y; });
  }
  Tensor scale(const Tensor& x, float s) override {
    return map1(x, "scale", [s](float v) { return v * s; });
  }
  Tensor clamp(const Tensor& x, float lo, float hi) override {
    return map1(x, "clamp", [lo, hi](float v) { return std::min(std::max(v, lo), hi); });
  }

  void gated_add_(Tensor& a, const Tensor& y, const Tensor& gate) override {
    expect_f32(a, "gated_add_", "a");
    expect_f32(y, "gated_add_", "y");
    expect_f32(gate, "gated_add_", "gate");
    expect_numel(a, y, "gated_add_");
    const int64_t d = gate.numel(), n = a.numel() / d;
    if (n * d != a.numel()) throw internal_error("gated_add_: gate " + gate.str() + " vs " + a.str());
    float* p = a.f32();
    const float* q = y.f32();
    const float* g = gate.f32();
#pragma omp parallel for schedule(static) if (parallel_worth(n * d))
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < d; ++j) p[i * d + j] += q[i * d + j] * g[j];
  }

  Tensor add_row(const Tensor& x, const Tensor& row) override {
    expect_f32(x, "add_row", "x");
    expect_f32(row, "add_row", "row");
    const int64_t d = row.numel(), n = x.numel() / d;
    if (n * d != x.numel()) throw internal_error("add_row: row " + row.str() + " vs " + x.str());
    Tensor y = Tensor::empty(x.shape());
    const float* a = x.f32();
    const float* r = row.f32();
    float* o = y.f32();
#pragma omp parallel for schedule(static) if (parallel_worth(n * d))
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < d; ++j) o[i * d + j] = a[i * d + j] + r[j];
    return y;
  }

  // Row statistics in double: the reference computes them in float32; double is at least
  // as accurate and keeps the CPU backend well inside the 1e-4 golden tolerance.
  Tensor layer_norm_impl(const Tensor& x, const float* w, const float* b, const float* shift,
                         const float* scale, float eps, const char* op) {
    expect_f32(x, op, "x");
    const int64_t d = x.dim(-1), n = x.numel() / std::max<int64_t>(d, 1);
    Tensor y = Tensor::empty(x.shape());
    const float* a = x.f32();
    float* o = y.f32();
#pragma omp parallel for schedule(static) if (parallel_worth(n * d))
    for (int64_t i = 0; i < n; ++i) {
      const float* r = a + i * d;
      double mean = 0;
      for (int64_t j = 0; j < d; ++j) mean += r[j];
      mean /= d;
      double var = 0;
      for (int64_t j = 0; j < d; ++j) var += (r[j] - mean) * (r[j] - mean);
      var /= d;
      const double inv = 1.0 / std::sqrt(var + eps);
      float* out = o + i * d;
      for (int64_t j = 0; j < d; ++j) {
        float v = static_cast<float>((r[j] - mean) * inv);
        if (w) v *= w[j];
        if (b) v += b[j];
        if (scale) v = v * (1.0f + scale[j]) + shift[j];
        out[j] = v;
      }
    }
    return y;
  }

  Tensor layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps) override {
    if (w) expect_f32(*w, "layer_norm", "w");
    if (b) expect_f32(*b, "layer_norm", "b");
    return layer_norm_impl(x, w ? w->f32() : nullptr, b ? b->f32() : nullptr, nullptr, nullptr,
                           eps, "layer_norm");
  }
  Tensor layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale,
                             float eps) override {
    expect_f32(shift, "layer_norm_modulate", "shift");
    expect_f32(scale, "layer_norm_modulate", "scale");
    if (shift.numel() != x.dim(-1) || scale.numel() != x.dim(-1))
      throw internal_error("layer_norm_modulate: shift/scale " + shift.str() + " for " + x.str());
    return layer_norm_impl(x, nullptr, nullptr, shift.f32(), scale.f32(), eps,
                           "layer_norm_modulate");
  }

  Tensor rms_norm(const Tensor& x, const Tensor& w, float eps) override {
    expect_f32(x, "rms_norm", "x");
    expect_f32(w, "rms_norm", "w");
    const int64_t d = x.dim(-1), n = x.numel() / std::max<int64_t>(d, 1);
    if (w.numel() != d) throw internal_error("rms_norm: weight " + w.str() + " for " + x.str());
    Tensor y = Tensor::empty(x.shape());
    const float* a = x.f32();
    const float* g = w.f32();
    float* o = y.f32();
#pragma omp parallel for schedule(static) if (parallel_worth(n * d))
    for (int64_t i = 0; i < n; ++i) {
      const float* r = a + i * d;
      double ss = 0;
      for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(r[j]) * r[j];
      const double inv = 1.0 / std::sqrt(ss / d + eps);
      for (int64_t j = 0; j < d; ++j) o[i * d + j] = static_cast<float>(r[j] * inv) * g[j];
    }
    return y;
  }

  Tensor channel_l2_norm(const Tensor& x, const Tensor& gamma, float eps) override {
    expect_f32(x, "channel_l2_norm", "x");
    expect_f32(gamma, "channel_l2_norm", "gamma");
    const int64_t c = x.dim(0), p = x.numel() / std::max<int64_t>(c, 1);
    if (gamma.numel() != c)
      throw internal_error("channel_l2_norm: gamma " + gamma.str() + " for " + x.str());
    Tensor y = Tensor::empty(x.shape());
    const float* a = x.f32();
    const float* g = gamma.f32();
    float* o = y.f32();
    const double sc = std::sqrt(static_cast<double>(c));
    const int64_t tile = 1024;
#pragma omp parallel for schedule(static) if (parallel_worth(p * c))
    for (int64_t p0 = 0; p0 < p; p0 += tile) {
      const int64_t pn = std::min(tile, p - p0);
      double ss[1024];
      for (int64_t j = 0; j < pn; ++j) ss[j] = 0;
      for (int64_t ci = 0; ci < c; ++ci) {
        const float* r = a + ci * p + p0;
        for (int64_t j = 0; j < pn; ++j) ss[j] += static_cast<double>(r[j]) * r[j];
      }
      for (int64_t j = 0; j < pn; ++j) ss[j] = sc / std::max(std::sqrt(ss[j]), double(eps));
      for (int64_t ci = 0; ci < c; ++ci) {
        const float* r = a + ci * p + p0;
        float* out = o + ci * p + p0;
        for (int64_t j = 0; j < pn; ++j) out[j] = static_cast<float>(r[j] * ss[j]) * g[ci];
      }
    }
    return y;
  }

  Tensor relative_position_bias(const Tensor& table, const Tensor& bucket, int64_t L) override {
    expect_f32(table, "relative_position_bias", "table");
    const int64_t* bk = index_data(bucket, "relative_position_bias");
    if (table.ndim() != 2 || L < 0 || bucket.numel() != std::max<int64_t>(0, 2 * L - 1))
      throw internal_error("relative_position_bias: table " + table.str() + ", buckets " +
                           bucket.str() + " for length " + std::to_string(L));
    const int64_t nb = table.dim(0), H = table.dim(1);
    for (int64_t r = 0; r < bucket.numel(); ++r)
      if (bk[r] < 0 || bk[r] >= nb) throw internal_error("relative_position_bias: bucket out of range");
    Tensor y = Tensor::empty({H, L, L});
    const float* t = table.f32();
    float* o = y.f32();
#pragma omp parallel for schedule(static) if (parallel_worth(H * L * L))
    for (int64_t hi = 0; hi < H * L; ++hi) {
      const int64_t h = hi / L, i = hi % L;
      for (int64_t j = 0; j < L; ++j) o[hi * L + j] = t[bk[j - i + L - 1] * H + h];
    }
    return y;
  }

  void rope_(Tensor& x, const Tensor& cos, const Tensor& sin) override {
    expect_f32(x, "rope_", "x");
    expect_f32(cos, "rope_", "cos");
    expect_f32(sin, "rope_", "sin");
    if (x.ndim() != 3) throw internal_error("rope_: expected x [N, H, hd], got " + x.str());
    const int64_t n = x.dim(0), h = x.dim(1), hd = x.dim(2), half = hd / 2;
    if (cos.numel() != n * half || sin.numel() != n * half)
      throw internal_error("rope_: tables " + cos.str() + " for " + x.str());
    float* p = x.f32();
    const float* c = cos.f32();
    const float* s = sin.f32();
#pragma omp parallel for schedule(static) if (parallel_worth(n * h * hd))
    for (int64_t i = 0; i < n; ++i)
      for (int64_t hh = 0; hh < h; ++hh) {
        float* r = p + (i * h + hh) * hd;
        for (int64_t j = 0; j < half; ++j) {
          const float cj = c[i * half + j], sj = s[i * half + j];
          const float a = r[2 * j], b = r[2 * j + 1];
          r[2 * j] = a * cj - b * sj;
          r[2 * j + 1] = a * sj + b * cj;
        }
      }
  }

  Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                   const Tensor* bias) override {
    check_qkv(q, k, v, "attention");
    const int64_t nq = q.dim(0), nk = k.dim(0), h = q.dim(1), d = q.dim(2);
    if (bias) {
      expect_f32(*bias, "attention", "bias");
      if (bias->numel() != h * nq * nk)
        throw internal_error("attention: bias " + bias->str() + " for q " + q.str() + " k " +
                             k.str());
    }
    Tensor o = Tensor::empty(q.shape());
    std::vector<float> buf;
    for (int64_t hh = 0; hh < h; ++hh)
      attn_head(q.f32() + hh * d, k.f32() + hh * d, v.f32() + hh * d, o.f32() + hh * d, nq, nk,
                d, h * d, h * d, h * d, scale, bias ? bias->f32() + hh * nq * nk : nullptr, buf);
    return o;
  }

  Tensor attention_varlen(const Tensor& q, const Tensor& k, const Tensor& v,
                          const CuSeqlens& cu_q, const CuSeqlens& cu_kv, float scale) override {
    check_qkv(q, k, v, "attention_varlen");
    if (cu_q.size() != cu_kv.size() || cu_q.empty() || cu_q.front() != 0 || cu_kv.front() != 0 ||
        cu_q.back() != q.dim(0) || cu_kv.back() != k.dim(0))
      throw internal_error("attention_varlen: bad segment offsets for q " + q.str() + " k " +
                           k.str());
    const int64_t h = q.dim(1), d = q.dim(2);
    Tensor o = Tensor::zeros(q.shape());
    std::vector<float> buf;
    for (size_t s = 0; s + 1 < cu_q.size(); ++s) {
      const int64_t q0 = cu_q[s], nq = cu_q[s + 1] - q0, k0 = cu_kv[s], nk = cu_kv[s + 1] - k0;
      if (nq < 0 || nk < 0) throw internal_error("attention_varlen: decreasing offsets");
      for (int64_t hh = 0; hh < h; ++hh)
        attn_head(q.f32() + (q0 * h + hh) * d, k.f32() + (k0 * h + hh) * d,
                  v.f32() + (k0 * h + hh) * d, o.f32() + (q0 * h + hh) * d, nq, nk, d, h * d,
                  h * d, h * d, scale, nullptr, buf);
    }
    return o;
  }

  Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& idx) override {
    expect_f32(x, "gather_rows", "x");
    const int64_t n = x.dim(0), row = n ? x.numel() / n : 0;
    Shape s = x.shape();
    s[0] = static_cast<int64_t>(idx.size());
    Tensor y = Tensor::empty(s);
    const float* a = x.f32();
    float* o = y.f32();
    const int64_t m = static_cast<int64_t>(idx.size());
#pragma omp parallel for schedule(static) if (parallel_worth(m * row))
    for (int64_t i = 0; i < m; ++i) {
      const int64_t r = idx[i];
      if (r < 0 || r >= n) continue;  // validated below
      std::memcpy(o + i * row, a + r * row, row * sizeof(float));
    }
    for (int64_t r : idx)
      if (r < 0 || r >= n) throw internal_error("gather_rows: index out of range");
    return y;
  }

  void scatter_add_rows_(Tensor& out, const Tensor& x, const std::vector<int64_t>& idx,
                         const std::vector<float>* w) override {
    expect_f32(out, "scatter_add_rows_", "out");
    expect_f32(x, "scatter_add_rows_", "x");
    const int64_t n = out.dim(0), row = n ? out.numel() / n : 0;
    const int64_t m = static_cast<int64_t>(idx.size());
    if (x.dim(0) != m || x.numel() != m * row || (w && static_cast<int64_t>(w->size()) != m))
      throw internal_error("scatter_add_rows_: x " + x.str() + " into " + out.str());
    for (int64_t r : idx)
      if (r < 0 || r >= n) throw internal_error("scatter_add_rows_: index out of range");
    float* o = out.f32();
    const float* a = x.f32();
    // Rows may repeat in idx; serial over rows keeps the sum order deterministic.
    for (int64_t i = 0; i < m; ++i) {
      const float wi = w ? (*w)[i] : 1.0f;
      float* dst = o + idx[i] * row;
      const float* src = a + i * row;
      for (int64_t j = 0; j < row; ++j) dst[j] += src[j] * wi;
    }
  }

  Tensor index(const std::vector<int64_t>& idx) override {
    Tensor t = Tensor::empty({static_cast<int64_t>(idx.size())}, DType::I64);
    if (!idx.empty()) std::memcpy(t.raw(), idx.data(), idx.size() * sizeof(int64_t));
    return t;
  }

  Tensor gather_rows(const Tensor& x, const Tensor& idx) override {
    const int64_t* p = index_data(idx, "gather_rows");
    return gather_rows(x, std::vector<int64_t>(p, p + idx.numel()));
  }

  void scatter_add_rows_(Tensor& out, const Tensor& x, const Tensor& idx, const Tensor* w) override {
    const int64_t* p = index_data(idx, "scatter_add_rows_");
    const int64_t m = idx.numel(), n = out.ndim() ? out.dim(0) : 0;
    std::vector<uint8_t> seen(static_cast<size_t>(std::max<int64_t>(n, 0)), 0);
    for (int64_t i = 0; i < m; ++i) {
      if (p[i] < 0 || p[i] >= n) throw internal_error("scatter_add_rows_: index out of range");
      if (seen[p[i]]++) throw internal_error("scatter_add_rows_: row " + std::to_string(p[i]) +
                                             " repeats in an index tensor (one writer per row)");
    }
    std::vector<float> wv;
    if (w) {
      expect_f32(*w, "scatter_add_rows_", "w");
      if (w->numel() != m) throw internal_error("scatter_add_rows_: w " + w->str() + " for " + idx.str());
      wv.assign(w->f32(), w->f32() + m);
    }
    scatter_add_rows_(out, x, std::vector<int64_t>(p, p + m), w ? &wv : nullptr);
  }

  GroupRouting route_groups(const Tensor& logits, bool host_copy) override {
    expect_f32(logits, "route_groups", "logits");
    if (logits.ndim() != 2 || logits.dim(1) < 1)
      throw internal_error("route_groups: logits must be [N, M], got " + logits.str());
    const int64_t N = logits.dim(0), M = logits.dim(1);
    std::vector<int> gid(static_cast<size_t>(N));
    std::vector<float> pw(static_cast<size_t>(N));
    GroupRouting r;
    r.sizes.assign(static_cast<size_t>(M), 0);
    const float* l = logits.f32();
    for (int64_t n = 0; n < N; ++n) {
      const float* row = l + n * M;
      int g = 0;
      for (int64_t m = 1; m < M; ++m)
        if (row[m] > row[g]) g = static_cast<int>(m);
      double sum = 0;
      for (int64_t m = 0; m < M; ++m) sum += std::exp(double(row[m]) - double(row[g]));
      gid[n] = g;
      pw[n] = static_cast<float>(1.0 / sum);
      ++r.sizes[g];
    }
    std::vector<int64_t> start(static_cast<size_t>(M), 0);  // stable counting sort
    for (int64_t g = 1; g < M; ++g) start[g] = start[g - 1] + r.sizes[g - 1];
    r.order = Tensor::empty({N}, DType::I64);
    r.weight = Tensor::empty({N});
    int64_t* order = r.order.data<int64_t>();
    float* weight = r.weight.f32();
    for (int64_t n = 0; n < N; ++n) {
      const int64_t at = start[gid[n]]++;
      order[at] = n;
      weight[at] = pw[n];
    }
    if (host_copy) {
      r.gid = std::move(gid);
      r.p_win = std::move(pw);
    }
    return r;
  }

  Tensor conv3d(const Tensor& x, const Tensor& w, const Tensor* b, int pad_t_front, int pad_h,
                int pad_w) override {
    expect_f32(x, "conv3d", "x");
    expect_f32(w, "conv3d", "w");
    if (x.ndim() != 4 || w.ndim() != 5 || w.dim(1) != x.dim(0))
      throw internal_error("conv3d: x " + x.str() + " w " + w.str());
    const int64_t ci = x.dim(0), t = x.dim(1), hh = x.dim(2), ww = x.dim(3);
    const int64_t co = w.dim(0), kt = w.dim(2), kh = w.dim(3), kw = w.dim(4);
    const int64_t to = t + pad_t_front - kt + 1, ho = hh + 2 * pad_h - kh + 1,
                  wo = ww + 2 * pad_w - kw + 1;
    if (to <= 0 || ho <= 0 || wo <= 0)
      throw internal_error("conv3d: empty output for x " + x.str() + " w " + w.str());
    Tensor y = Tensor::empty({co, to, ho, wo});
    const float* xp = x.f32();
    const float* wp = w.f32();
    float* yp = y.f32();
    const int64_t kk = ci * kt * kh * kw;
    const int64_t hw = ho * wo;
    // Output rows per im2col tile: bound the column buffer to ~64 MB.
    const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(ho, (16 << 20) / (kk * wo)));
    std::vector<float> col(static_cast<size_t>(kk * rows * wo));
    for (int64_t ot = 0; ot < to; ++ot) {
      for (int64_t r0 = 0; r0 < ho; r0 += rows) {
        const int64_t nr = std::min(rows, ho - r0), ncol = nr * wo;
        float* cp = col.data();
#pragma omp parallel for schedule(static) if (parallel_worth(kk * ncol))
        for (int64_t kidx = 0; kidx < kk; ++kidx) {
          const int64_t c = kidx / (kt * kh * kw);
          const int64_t rem = kidx % (kt * kh * kw);
          const int64_t dt = rem / (kh * kw), dy = (rem / kw) % kh, dx = rem % kw;
          const int64_t it = ot + dt - pad_t_front;
          float* dst = cp + kidx * ncol;
          if (it < 0 || it >= t) {
            std::memset(dst, 0, ncol * sizeof(float));
            continue;
          }
          const float* src = xp + (c * t + it) * hh * ww;
          for (int64_t r = 0; r < nr; ++r) {
            const int64_t iy = r0 + r + dy - pad_h;
            float* d = dst + r * wo;
            if (iy < 0 || iy >= hh) {
              std::memset(d, 0, wo * sizeof(float));
              continue;
            }
            const float* s = src + iy * ww;
            for (int64_t ox = 0; ox < wo; ++ox) {
              const int64_t ix = ox + dx - pad_w;
              d[ox] = (ix >= 0 && ix < ww) ? s[ix] : 0.0f;
            }
          }
        }
        sgemm_split(false, co, ncol, kk, 1.0f, wp, kk, cp, ncol, 0.0f, yp + ot * hw + r0 * wo,
                    to * hw);
      }
    }
    if (b) {
      expect_f32(*b, "conv3d", "b");
      const float* bp = b->f32();
#pragma omp parallel for schedule(static) if (parallel_worth(co * to * hw))
      for (int64_t c = 0; c < co; ++c) {
        float* p = yp + c * to * hw;
        for (int64_t i = 0; i < to * hw; ++i) p[i] += bp[c];
      }
    }
    return y;
  }

  Tensor upsample2x(const Tensor& x) override {
    expect_f32(x, "upsample2x", "x");
    const int64_t c = x.dim(0), t = x.dim(1), h = x.dim(2), w = x.dim(3);
    Tensor y = Tensor::empty({c, t, 2 * h, 2 * w});
    const float* a = x.f32();
    float* o = y.f32();
#pragma omp parallel for schedule(static) if (parallel_worth(c * t * 4 * h * w))
    for (int64_t p = 0; p < c * t; ++p)
      for (int64_t i = 0; i < 2 * h; ++i) {
        const float* s = a + (p * h + i / 2) * w;
        float* d = o + (p * 2 * h + i) * 2 * w;
        for (int64_t j = 0; j < 2 * w; ++j) d[j] = s[j / 2];
      }
    return y;
  }

  Tensor cat_time(const Tensor& a, const Tensor& b) override {
    expect_f32(a, "cat_time", "a");
    expect_f32(b, "cat_time", "b");
    if (a.ndim() != 4 || b.ndim() != 4 || a.dim(0) != b.dim(0) || a.dim(2) != b.dim(2) ||
        a.dim(3) != b.dim(3))
      throw internal_error("cat_time: " + a.str() + " and " + b.str());
    const int64_t c = a.dim(0), ta = a.dim(1), tb = b.dim(1), f = a.dim(2) * a.dim(3);
    Tensor y = Tensor::empty({c, ta + tb, a.dim(2), a.dim(3)});
    for (int64_t i = 0; i < c; ++i) {
      std::memcpy(y.f32() + i * (ta + tb) * f, a.f32() + i * ta * f, ta * f * sizeof(float));
      std::memcpy(y.f32() + (i * (ta + tb) + ta) * f, b.f32() + i * tb * f,
                  tb * f * sizeof(float));
    }
    return y;
  }

  Tensor slice_time(const Tensor& x, int64_t t0, int64_t t1) override {
    expect_f32(x, "slice_time", "x");
    const int64_t c = x.dim(0), t = x.dim(1), f = x.dim(2) * x.dim(3);
    if (t0 < 0 || t1 < t0 || t1 > t)
      throw internal_error("slice_time: [" + std::to_string(t0) + ", " + std::to_string(t1) +
                           ") of " + x.str());
    Tensor y = Tensor::empty({c, t1 - t0, x.dim(2), x.dim(3)});
    for (int64_t i = 0; i < c; ++i)
      std::memcpy(y.f32() + i * (t1 - t0) * f, x.f32() + (i * t + t0) * f,
                  (t1 - t0) * f * sizeof(float));
    return y;
  }

  Tensor interleave_time(const Tensor& x) override {
    expect_f32(x, "interleave_time", "x");
    const int64_t c2 = x.dim(0), t = x.dim(1), f = x.dim(2) * x.dim(3);
    if (c2 % 2) throw internal_error("interleave_time: odd channel count in " + x.str());
    const int64_t c = c2 / 2;
    Tensor y = Tensor::empty({c, 2 * t, x.dim(2), x.dim(3)});
    for (int64_t s = 0; s < 2; ++s)
      for (int64_t i = 0; i < c; ++i)
        for (int64_t j = 0; j < t; ++j)
          std::memcpy(y.f32() + (i * 2 * t + 2 * j + s) * f, x.f32() + ((s * c + i) * t + j) * f,
                      f * sizeof(float));
    return y;
  }

  Tensor transpose(const Tensor& x) override {
    expect_f32(x, "transpose", "x");
    if (x.ndim() != 2) throw internal_error("transpose: expected 2-D, got " + x.str());
    const int64_t r = x.dim(0), c = x.dim(1);
    Tensor y = Tensor::empty({c, r});
    const float* a = x.f32();
    float* o = y.f32();
    const int64_t bs = 32;
#pragma omp parallel for schedule(static) if (parallel_worth(r * c))
    for (int64_t i0 = 0; i0 < r; i0 += bs)
      for (int64_t j0 = 0; j0 < c; j0 += bs)
        for (int64_t i = i0; i < std::min(r, i0 + bs); ++i)
          for (int64_t j = j0; j < std::min(c, j0 + bs); ++j) o[j * r + i] = a[i * c + j];
    return y;
  }

  Tensor copy(const Tensor& x) override {
    expect_f32(x, "copy", "x");
    return x.clone();
  }
  void copy_(Tensor& dst, const Tensor& src) override {
    expect_f32(dst, "copy_", "dst");
    expect_f32(src, "copy_", "src");
    expect_numel(dst, src, "copy_");
    std::memcpy(dst.raw(), src.raw(), src.nbytes());
  }

 private:
  static void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v, const char* op) {
    expect_f32(q, op, "q");
    expect_f32(k, op, "k");
    expect_f32(v, op, "v");
    check_qkv_shapes(q, k, v, op);
  }
};

}  // namespace

std::unique_ptr<Ops> make_cpu_ops() { return std::make_unique<CpuOps>(); }

std::unique_ptr<Ops> make_ops(const std::string& device) {
  if (device == "cpu") return make_cpu_ops();
  if (device == "auto" || device.empty()) return cuda_available() ? make_cuda_ops(0) : make_cpu_ops();
  if (device == "cuda") return make_cuda_ops(0);
  if (device.rfind("cuda:", 0) == 0) {
    const std::string idx = device.substr(5);
    if (!idx.empty() && idx.find_first_not_of("0123456789") == std::string::npos)
      return make_cuda_ops(std::stoi(idx));
  }
  throw usage_error("--device: expected auto, cpu, cuda or cuda:N, got '" + device + "'");
}

// ===== additions by model helpers go below this line =====

}  // namespace mg
