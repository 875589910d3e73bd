#include "pipeline/scheduler.h"

#include <cmath>
#include <cstring>

namespace mg {

SamplerKind parse_sampler(const std::string& s) {
  if (s == "unipc") return SamplerKind::UniPC;
  if (s == "euler") return SamplerKind::Euler;
  throw usage_error("--sampler: expected unipc or euler, got '" + s + "'");
}

const char* sampler_name(SamplerKind k) { return k == SamplerKind::UniPC ? "unipc" : "euler"; }

static double shifted(double s, double shift) { return shift * s / (1.0 + (shift - 1.0) * s); }

Schedule make_schedule(SamplerKind kind, int steps, double shift, SigmaGrid grid) {
  if (steps < 1) throw usage_error("--steps: expected at least 1, got " + std::to_string(steps));
  if (!(shift > 0)) throw usage_error("--shift: expected a positive number");
  Schedule s;
  const int n = steps;
  std::vector<double> sig(n);
  if (grid == SigmaGrid::Wan) {
    // Wan FlowUniPC: linspace(0.999, 0, n + 1)[:-1], shifted once; integer timesteps.
    for (int k = 0; k < n; ++k) sig[k] = shifted(0.999 * (1.0 - double(k) / n), shift);
    for (int k = 0; k < n; ++k) s.timesteps.push_back(std::trunc(sig[k] * 1000.0));
  } else if (kind == SamplerKind::UniPC) {
    // diffusers UniPCMultistepScheduler(use_flow_sigmas, flow_shift=shift):
    // linspace(1, 1/1000, n + 1)[:-1], shifted; a first sigma of exactly 1 becomes 1 - 1e-6;
    // timesteps are sigma * 1000 truncated to integers.
    for (int k = 0; k < n; ++k) {
      const double a = 1.0 - (1.0 - 1.0 / 1000.0) * double(k) / n;
      sig[k] = shifted(a, shift);
    }
    if (sig[0] >= 1.0) sig[0] = 1.0 - 1e-6;
    for (int k = 0; k < n; ++k) s.timesteps.push_back(std::trunc(sig[k] * 1000.0));
  } else {
    // diffusers FlowMatchEulerDiscreteScheduler(shift=shift): the training grid's shifted
    // sigma range [shift(1/1000), 1], a linspace of n timesteps over it, shifted again;
    // float timesteps sigma * 1000.
    const double smax = shifted(1.0, shift), smin = shifted(1.0 / 1000.0, shift);
    for (int k = 0; k < n; ++k) {
      const double t = n == 1 ? smax * 1000.0
                              : smax * 1000.0 + (smin * 1000.0 - smax * 1000.0) * k / (n - 1);
      sig[k] = shifted(t / 1000.0, shift);
    }
    for (int k = 0; k < n; ++k)
      s.timesteps.push_back(static_cast<double>(static_cast<float>(sig[k] * 1000.0)));
  }
  for (int k = 0; k < n; ++k) s.sigmas.push_back(static_cast<float>(sig[k]));
  s.sigmas.push_back(0.0f);
  return s;
}

FlowSampler::FlowSampler(SamplerKind kind, Schedule schedule)
    : kind_(kind), sched_(std::move(schedule)) {}

namespace {

// out = a*x + b*y (+ c*z), elementwise, float32 storage, double scalars.
Tensor axpby(double a, const Tensor& x, double b, const Tensor& y, double c = 0,
             const Tensor* z = nullptr) {
  Tensor o = Tensor::empty(x.shape());
  const float* xp = x.f32();
  const float* yp = y.f32();
  const float* zp = z ? z->f32() : nullptr;
  float* op = o.f32();
  for (int64_t i = 0; i < x.numel(); ++i) {
    double v = a * xp[i] + b * yp[i];
    if (zp) v += c * zp[i];
    op[i] = static_cast<float>(v);
  }
  return o;
}

struct Lam {
  double alpha, sigma, lambda;
};
Lam lam(float sigma) {
  Lam l;
  l.sigma = sigma;
  l.alpha = 1.0 - static_cast<double>(sigma);
  l.lambda = std::log(l.alpha) - std::log(l.sigma);
  return l;
}

}  // namespace

Tensor FlowSampler::step(const Tensor& x, const Tensor& v) {
  if (k_ >= sched_.steps())
    throw internal_error("sampler: step " + std::to_string(k_) + " past the schedule's " +
                         std::to_string(sched_.steps()) + " steps");
  if (x.numel() != v.numel())
    throw internal_error("sampler: state " + x.str() + " and velocity " + v.str());
  Tensor out;
  if (kind_ == SamplerKind::Euler) {
    const double ds = double(sched_.sigmas[k_ + 1]) - double(sched_.sigmas[k_]);
    out = axpby(1.0, x, ds, v);
  } else {
    out = unipc_step(x, v);
  }
  ++k_;
  return out;
}

// UniPC (bh2, predict-x0, order 2): corrector on the incoming state with the new x0
// prediction, then the predictor. Formulas: wan-notes §4.4.
Tensor FlowSampler::unipc_step(const Tensor& x_in, const Tensor& v) {
  const int n = sched_.steps(), k = k_;
  const auto& sg = sched_.sigmas;
  const Lam cur = lam(sg[k]);
  // x0 prediction at the current state.
  Tensor m = axpby(1.0, x_in, -cur.sigma, v);
  Tensor x = x_in;
  // (a) corrector, order = previous predictor order.
  if (k > 0 && last_sample_.defined()) {
    const Lam prev = lam(sg[k - 1]);
    const double h = cur.lambda - prev.lambda;
    const double hh = -h;
    const double phi = std::expm1(hh);
    const double bh = phi;  // bh2
    const double hphi_k1 = phi / hh - 1.0;
    Tensor base = axpby(cur.sigma / prev.sigma, last_sample_, -cur.alpha * phi, m1_);
    Tensor d1t = axpby(1.0, m, -1.0, m1_);
    if (prev_order_ == 1) {
      x = axpby(1.0, base, -cur.alpha * bh * 0.5, d1t);
    } else {
      const Lam pp = lam(sg[k - 2]);
      const double r = (pp.lambda - prev.lambda) / h;
      Tensor d1 = axpby(1.0 / r, m2_, -1.0 / r, m1_);
      const double b1 = hphi_k1 / bh;
      const double hphi_k2 = hphi_k1 / hh - 0.5;
      const double b2 = hphi_k2 * 2.0 / bh;
      // solve [[1, 1], [r, 1]] rho = [b1, b2]
      const double rho0 = (b1 - b2) / (1.0 - r);
      const double rho1 = b1 - rho0;
      x = axpby(1.0, base, -cur.alpha * bh * rho0, d1, -cur.alpha * bh * rho1, &d1t);
    }
  }
  // history update
  m2_ = m1_;
  m1_ = m;
  // (b) predictor order: warm-up and lower_order_final.
  int order = std::min(2, n - k);
  order = std::min(order, lower_order_nums_ + 1);
  Tensor out;
  if (sg[k + 1] == 0.0f) {
    out = m.clone();  // h = inf: the update reduces exactly to the x0 prediction
  } else {
    const Lam nxt = lam(sg[k + 1]);
    const double h = nxt.lambda - cur.lambda;
    const double hh = -h;
    const double phi = std::expm1(hh);
    const double bh = phi;
    out = axpby(nxt.sigma / cur.sigma, x, -nxt.alpha * phi, m);
    if (order == 2) {
      const Lam pv = lam(sg[k - 1]);
      const double r = (pv.lambda - cur.lambda) / h;
      // D1 = (m_{k-1} - m_k) / r, rho = 0.5
      Tensor d1 = axpby(1.0 / r, m2_, -1.0 / r, m);
      out = axpby(1.0, out, -nxt.alpha * bh * 0.5, d1);
    }
  }
  last_sample_ = x;
  prev_order_ = order;
  if (lower_order_nums_ < 2) ++lower_order_nums_;
  return out;
}

Tensor cfg_combine(const Tensor& v_cond, const Tensor& v_uncond, float guidance) {
  if (v_cond.numel() != v_uncond.numel())
    throw internal_error("cfg: " + v_cond.str() + " vs " + v_uncond.str());
  Tensor o = Tensor::empty(v_cond.shape());
  const float* c = v_cond.f32();
  const float* u = v_uncond.f32();
  float* p = o.f32();
  for (int64_t i = 0; i < o.numel(); ++i) p[i] = u[i] + guidance * (c[i] - u[i]);
  return o;
}

// ---- Philox4x32-10 -----------------------------------------------------------------------
namespace {
inline void philox_round(uint32_t ctr[4], const uint32_t key[2]) {
  const uint64_t p0 = uint64_t(0xD2511F53u) * ctr[0];
  const uint64_t p1 = uint64_t(0xCD9E8D57u) * ctr[2];
  const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
  const uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
  const uint32_t n0 = hi1 ^ ctr[1] ^ key[0];
  const uint32_t n2 = hi0 ^ ctr[3] ^ key[1];
  ctr[0] = n0;
  ctr[1] = lo1;
  ctr[2] = n2;
  ctr[3] = lo0;
}
void philox4x32_10(uint64_t counter, uint64_t seed, uint32_t out[4]) {
  uint32_t ctr[4] = {uint32_t(counter), uint32_t(counter >> 32), 0u, 0u};
  uint32_t key[2] = {uint32_t(seed), uint32_t(seed >> 32)};
  for (int r = 0; r < 10; ++r) {
    philox_round(ctr, key);
    key[0] += 0x9E3779B9u;
    key[1] += 0xBB67AE85u;
  }
  std::memcpy(out, ctr, sizeof(ctr));
}
}  // namespace

Tensor gaussian_noise(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape);
  float* p = t.f32();
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; i += 4) {
    uint32_t r[4];
    philox4x32_10(static_cast<uint64_t>(i / 4), seed, r);
    // Box-Muller on two pairs; uniforms in (0, 1].
    for (int j = 0; j < 2; ++j) {
      const double u1 = (double(r[2 * j]) + 1.0) / 4294967296.0;
      const double u2 = double(r[2 * j + 1]) / 4294967296.0;
      const double rad = std::sqrt(-2.0 * std::log(u1));
      const double th = 6.283185307179586 * u2;
      if (i + 2 * j < n) p[i + 2 * j] = static_cast<float>(rad * std::cos(th));
      if (i + 2 * j + 1 < n) p[i + 2 * j + 1] = static_cast<float>(rad * std::sin(th));
    }
  }
  return t;
}

}  // namespace mg
