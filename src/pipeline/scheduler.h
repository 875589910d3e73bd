// Flow-matching samplers: UniPC multistep (order 2, bh2, predict-x0, lower-order final)
// and Euler, with Wan's timestep shift. Convention: x_sigma = (1 - sigma) x0 + sigma eps;
// the model predicts the velocity v = eps - x0.
#pragma once
#include <string>
#include <vector>

#include "mogagen/tensor.h"

namespace mg {

enum class SamplerKind { UniPC, Euler };
SamplerKind parse_sampler(const std::string& s);  // "unipc" | "euler" (usage error otherwise)
const char* sampler_name(SamplerKind k);

// Which sigma grid the schedule is built from.
//  Diffusers: UniPCMultistepScheduler(use_flow_sigmas) / FlowMatchEulerDiscreteScheduler,
//             the configuration Wan2.1 ships for diffusers (golden/*/sched).
//  Wan:       Wan's own FlowUniPCMultistepScheduler grid, linspace(0.999, 0) (wan-notes 4.2).
enum class SigmaGrid { Diffusers, Wan };

struct Schedule {
  std::vector<double> timesteps;  // what the model receives, one per step
  std::vector<float> sigmas;      // steps + 1 values, the last one 0
  int steps() const { return static_cast<int>(timesteps.size()); }
};

Schedule make_schedule(SamplerKind kind, int steps, double shift,
                       SigmaGrid grid = SigmaGrid::Diffusers);

// Stateful sampler: call step() once per schedule step with the (guided) velocity at the
// current state; it returns the next state. The state passed in must be the one returned
// by the previous step (or the initial noise at step 0).
class FlowSampler {
 public:
  FlowSampler(SamplerKind kind, Schedule schedule);
  const Schedule& schedule() const { return sched_; }
  int step_index() const { return k_; }
  // x: current state x_k (host F32), v: velocity at (x_k, t_k). Returns x_{k+1}.
  Tensor step(const Tensor& x, const Tensor& v);

 private:
  Tensor unipc_step(const Tensor& x, const Tensor& v);
  SamplerKind kind_;
  Schedule sched_;
  int k_ = 0;
  // UniPC history: x0 predictions m_{k-1}, m_{k-2}; the corrected sample of the previous
  // step's input (last_sample) and the previous predictor order.
  Tensor m1_, m2_, last_sample_;
  int prev_order_ = 0;
  int lower_order_nums_ = 0;
};

// Classifier-free guidance: v_u + g (v_c - v_u), float32.
Tensor cfg_combine(const Tensor& v_cond, const Tensor& v_uncond, float guidance);

// Seeded Gaussian noise, reproducible on every platform and device: element i of the
// tensor is a standard normal from the counter-based Philox4x32-10 generator keyed by the
// seed (documented in docs/sampling.md).
Tensor gaussian_noise(const Shape& shape, uint64_t seed);

}  // namespace mg
