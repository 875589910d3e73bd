#include "cli/commands.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "mogagen/error.h"
#include "mogagen/log.h"
#include "mogagen/ops.h"
#include "pipeline/verify.h"

namespace mg::cli {
namespace {

struct VerifyArgs {
  std::string component;
  std::string dir;
  std::string device = "cpu";
  double tol = -1;  // default per device
};

int run_verify(const VerifyArgs& a) {
  auto ops = make_ops(a.device);
  const double tol = a.tol > 0 ? a.tol : (ops->device().is_cpu() ? 1e-4 : 2e-2);
  std::vector<VerifyLine> lines;
  if (a.component == "dit")
    lines = verify_dit(a.dir, *ops);
  else if (a.component == "t5")
    lines = verify_t5(a.dir, *ops);
  else if (a.component == "vae")
    lines = verify_vae(a.dir, *ops);
  else if (a.component == "sched")
    lines = verify_sched(a.dir, *ops);
  else if (a.component == "moga")
    lines = verify_moga(a.dir, *ops);
  else
    throw usage_error("verify: unknown component '" + a.component +
                      "' (expected dit, t5, vae, sched or moga)");
  int bad = 0;
  for (const auto& l : lines) {
    const bool ok = l.rel_err <= tol;
    bad += !ok;
    std::printf("%-44s rel_err %.3e  %s\n", l.name.c_str(), l.rel_err, ok ? "ok" : "FAIL");
  }
  std::printf("%s: %zu outputs, %d above tolerance %.1e on %s\n", a.component.c_str(),
              lines.size(), bad, tol, ops->name().c_str());
  return bad ? static_cast<int>(ExitCode::Failure) : 0;
}

}  // namespace

int run(int argc, char** argv) {
  CLI::App app{"mogagen: text to long multi-shot video (Wan2.1 + MoGA)", "mogagen"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("mogagen ") + MOGAGEN_VERSION);

  VerifyArgs va;
  auto* verify = app.add_subcommand(
      "verify", "Run one component on a golden case directory and report relative errors");
  verify->add_option("component", va.component, "dit | t5 | vae | sched | moga")->required();
  verify->add_option("golden-dir", va.dir, "golden set (e.g. ../shared/golden/wan-a)")
      ->required();
  verify->add_option("--device", va.device, "cpu | cuda | cuda:N")->capture_default_str();
  verify->add_option("--tol", va.tol, "tolerance (default 1e-4 on cpu, 2e-2 on cuda)");
  std::string level = "info";
  app.add_flag_callback("--quiet,-q", [&] { level = "quiet"; }, "errors only");
  app.add_flag_callback("--verbose,-v", [&] { level = "verbose"; }, "more logging");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return static_cast<int>(ExitCode::Usage);
  }
  set_log_level(level);
  if (app.got_subcommand(verify)) return run_verify(va);
  return 0;
}

}  // namespace mg::cli
