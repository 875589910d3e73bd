// Progress reporting: a redrawn bar with step, rate and ETA on a terminal, plain log lines
// otherwise (CI logs, files). Also the Ctrl-C flag checked between steps.
#pragma once
#include <atomic>
#include <chrono>
#include <string>

namespace mg {

class Progress {
 public:
  // quiet: nothing but errors. verbose: per-stage times and memory.
  Progress(bool quiet, bool verbose);
  void stage_begin(const std::string& name, int64_t total, const std::string& unit);
  void advance(int64_t n = 1);
  void stage_end();
  void info(const std::string& msg);     // a line (clears the bar first)
  void verbose(const std::string& msg);  // only with --verbose
  bool is_verbose() const { return verbose_; }

 private:
  void draw(bool force);
  bool quiet_, verbose_, tty_;
  std::string stage_, unit_;
  int64_t total_ = 0, done_ = 0;
  std::chrono::steady_clock::time_point t0_, last_draw_;
  int last_logged_pct_ = -1;
};

// Ctrl-C: the first SIGINT sets the flag (work stops cleanly after the current step); a
// second one exits at once.
void install_interrupt_handler();
bool interrupted();
void throw_if_interrupted();  // throws mg::Error(Interrupted)
// Resident set size of this process in MiB (for --verbose).
double rss_mib();

}  // namespace mg
