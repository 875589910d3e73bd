// `mogagen verify`: run one component of the engine on a golden case directory (format:
// ../shared/golden/README.md) and report the relative error ||out-ref||/||ref|| per output.
#pragma once
#include <string>
#include <vector>

#include "mogagen/ops.h"

namespace mg {

struct VerifyLine {
  std::string name;  // e.g. "dit[wan].out_t0"
  double rel_err = 0.0;
};

// Each throws mg::Error with a clear message when the directory or its files are
// missing/malformed. `dir` is the component directory (e.g. golden/wan-a/dit) or the set
// directory (golden/wan-a), in which case the component subfolder is used.
std::vector<VerifyLine> verify_dit(const std::string& dir, Ops& ops);
std::vector<VerifyLine> verify_t5(const std::string& dir, Ops& ops);
std::vector<VerifyLine> verify_vae(const std::string& dir, Ops& ops);
std::vector<VerifyLine> verify_sched(const std::string& dir, Ops& ops);
std::vector<VerifyLine> verify_moga(const std::string& dir, Ops& ops);

// Resolves `dir` to the component folder: dir itself when it holds case.safetensors,
// else dir/<component>. Throws BadInput naming both paths when neither exists.
std::string resolve_case_dir(const std::string& dir, const std::string& component);

}  // namespace mg
