// verify sched: schedules and UniPC states against golden/*/sched/case.safetensors.
#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "mogagen/safetensors.h"
#include "pipeline/scheduler.h"
#include "pipeline/verify.h"

namespace mg {

std::vector<VerifyLine> verify_sched(const std::string& dir_in, Ops& /*ops*/) {
  const std::string dir = resolve_case_dir(dir_in, "sched");
  const std::string path = dir + "/case.safetensors";
  TensorSource src = TensorSource::open(path);
  // Configurations are "{solver}_{steps}_{shift}" prefixes of the tensor names.
  std::set<std::string> configs;
  for (const auto& n : src.names()) {
    const auto dot = n.rfind('.');  // "unipc_10_3.0.x4" -> "unipc_10_3.0"
    if (dot != std::string::npos) configs.insert(n.substr(0, dot));
  }
  if (configs.empty())
    throw input_error(path + ": no '{solver}_{steps}_{shift}.*' tensors found");
  std::vector<VerifyLine> lines;
  for (const auto& cfg : configs) {
    const auto p1 = cfg.find('_'), p2 = cfg.rfind('_');
    if (p1 == std::string::npos || p1 == p2)
      throw input_error(path + ": cannot parse configuration name '" + cfg +
                        "' (expected solver_steps_shift)");
    const SamplerKind kind = parse_sampler(cfg.substr(0, p1));
    int steps = 0;
    double shift = 0;
    try {
      steps = std::stoi(cfg.substr(p1 + 1, p2 - p1 - 1));
      shift = std::stod(cfg.substr(p2 + 1));
    } catch (const std::exception&) {
      throw input_error(path + ": cannot parse steps/shift in '" + cfg + "'");
    }
    const Schedule s = make_schedule(kind, steps, shift, SigmaGrid::Diffusers);
    std::vector<float> ts(s.timesteps.begin(), s.timesteps.end());
    lines.push_back({"sched " + cfg + ".timesteps",
                     rel_error(Tensor::from_vector(ts, {steps}), src.load_f32(cfg + ".timesteps"))});
    lines.push_back({"sched " + cfg + ".sigmas",
                     rel_error(Tensor::from_vector(s.sigmas, {steps + 1}),
                               src.load_f32(cfg + ".sigmas"))});
    if (kind != SamplerKind::UniPC || !src.has(cfg + ".x0")) continue;
    FlowSampler sampler(kind, s);
    Tensor x = src.load_f32(cfg + ".x0");
    double worst = 0;
    for (int i = 0; i < steps; ++i) {
      x = sampler.step(x, src.load_f32(cfg + ".v" + std::to_string(i)));
      worst = std::max(worst, rel_error(x, src.load_f32(cfg + ".x" + std::to_string(i + 1))));
    }
    lines.push_back({"sched " + cfg + ".x (worst step)", worst});
    lines.push_back({"sched " + cfg + ".x" + std::to_string(steps) + " (final)",
                     rel_error(x, src.load_f32(cfg + ".x" + std::to_string(steps)))});
  }
  return lines;
}

}  // namespace mg
