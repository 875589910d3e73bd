#include "pipeline/batch.h"

#include <filesystem>
#include <fstream>
#include <memory>

#include "mogagen/error.h"
#include "mogagen/log.h"
#include "pipeline/render.h"

namespace mg {

BatchSummary run_batch(const std::string& path, const JobSpec& base, Progress& pr) {
  std::ifstream f(path);
  if (!f) throw input_error(path + ": cannot open the batch file for reading");
  struct Line {
    int no;
    std::string text;
  };
  std::vector<Line> lines;
  std::string text;
  for (int no = 1; std::getline(f, text); ++no) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank
    if (text[text.find_first_not_of(" \t")] == '#') continue;            // comment
    lines.push_back({no, text});
  }
  BatchSummary sum;
  sum.total = int(lines.size());
  std::unique_ptr<Engine> engine;
  std::vector<std::string> failures;
  for (size_t j = 0; j < lines.size(); ++j) {
    const auto& ln = lines[j];
    const std::string where = path + ":" + std::to_string(ln.no);
    if (interrupted()) {
      sum.interrupted = true;
      break;
    }
    try {
      JobSpec job = base;
      JsonDoc d = parse_json_text(ln.text, where);
      apply_settings(job, d, "", true);
      if (job.output.empty()) throw input_error(where + ": the job has no \"output\"");
      std::error_code ec;
      if (std::filesystem::exists(job.output, ec)) {
        pr.info("[" + std::to_string(j + 1) + "/" + std::to_string(lines.size()) + "] " +
                job.output + " exists: skipped");
        ++sum.skipped;
        continue;
      }
      finalize(job);
      pr.info("[" + std::to_string(j + 1) + "/" + std::to_string(lines.size()) + "] " +
              job.output + ": " + job.shots[0].prompt +
              (job.shots.size() > 1 ? " (+" + std::to_string(job.shots.size() - 1) + " shots)" : ""));
      const ModelPaths mp = resolve_model_paths(job);
      if (!engine || !(engine->paths() == mp) || engine->device() != job.device)
        engine = std::make_unique<Engine>(mp, job.device, pr);
      RenderResult r = engine->render(job);
      pr.info("wrote " + r.output + " (" + std::to_string(r.frames) + " frames, seed " +
              std::to_string(r.seed) + ", " + std::to_string(int(r.seconds)) + " s)");
      ++sum.rendered;
    } catch (const Error& e) {
      if (e.code() == ExitCode::Interrupted) {
        sum.interrupted = true;
        failures.push_back(where + ": interrupted");
        break;
      }
      ++sum.failed;
      failures.push_back(where + ": " + e.what());
      spdlog::error("{}: job failed: {}", where, e.what());
    } catch (const std::exception& e) {
      ++sum.failed;
      failures.push_back(where + ": " + e.what());
      spdlog::error("{}: job failed: {}", where, e.what());
    }
  }
  pr.info("batch " + path + ": " + std::to_string(sum.total) + " jobs, " +
          std::to_string(sum.rendered) + " rendered, " + std::to_string(sum.skipped) +
          " skipped (already complete), " + std::to_string(sum.failed) + " failed" +
          (sum.interrupted ? ", interrupted" : ""));
  for (const auto& fl : failures) spdlog::error("  {}", fl);
  return sum;
}

}  // namespace mg
