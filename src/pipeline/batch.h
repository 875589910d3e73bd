// Batch rendering: a JSON Lines file, one job per line ({"prompt" | "shots", "output", any
// setting}). Jobs run in order; a failing job is reported and the rest still run; a job
// whose output already exists (outputs are renamed into place only when complete) is
// skipped, so a rerun resumes; a summary ends the run.
#pragma once
#include <string>

#include "pipeline/job.h"
#include "pipeline/progress.h"

namespace mg {

struct BatchSummary {
  int total = 0, rendered = 0, skipped = 0, failed = 0;
  bool interrupted = false;
};

// `base` holds the defaults, the --config file and the command-line flags.
BatchSummary run_batch(const std::string& path, const JobSpec& base, Progress& progress);

}  // namespace mg
