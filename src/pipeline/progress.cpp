#include "pipeline/progress.h"

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>

#include "mogagen/error.h"
#include "mogagen/log.h"

namespace mg {

namespace {
std::atomic<int> g_sigint{0};
void on_sigint(int) {
  if (g_sigint.fetch_add(1) >= 1) _exit(static_cast<int>(ExitCode::Interrupted));
  const char msg[] = "\nmogagen: interrupt: stopping after the current step (Ctrl-C again to quit now)\n";
  ssize_t r = write(2, msg, sizeof(msg) - 1);
  (void)r;
}
std::string fmt_secs(double s) {
  char b[32];
  if (s < 60)
    std::snprintf(b, sizeof b, "%.1fs", s);
  else if (s < 3600)
    std::snprintf(b, sizeof b, "%dm%02ds", int(s) / 60, int(s) % 60);
  else
    std::snprintf(b, sizeof b, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return b;
}
}  // namespace

void install_interrupt_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}
bool interrupted() { return g_sigint.load() > 0; }
void throw_if_interrupted() {
  if (interrupted()) throw Error(ExitCode::Interrupted, "interrupted");
}

double rss_mib() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, rss = 0;
  f >> pages >> rss;
  return rss * double(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

Progress::Progress(bool quiet, bool verbose)
    : quiet_(quiet), verbose_(verbose && !quiet), tty_(isatty(2) != 0) {}

void Progress::stage_begin(const std::string& name, int64_t total, const std::string& unit) {
  stage_ = name;
  unit_ = unit;
  total_ = total;
  done_ = 0;
  last_logged_pct_ = -1;
  t0_ = last_draw_ = std::chrono::steady_clock::now();
  draw(true);
}

void Progress::advance(int64_t n) {
  done_ += n;
  draw(done_ >= total_);
}

void Progress::stage_end() {
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  if (tty_ && !quiet_) std::fprintf(stderr, "\r\033[K");
  if (!quiet_)
    spdlog::info("{}: {} {} in {}", stage_, done_, unit_, fmt_secs(secs));
  if (verbose_) spdlog::debug("{}: resident memory {:.0f} MiB", stage_, rss_mib());
}

void Progress::info(const std::string& msg) {
  if (quiet_) return;
  if (tty_) std::fprintf(stderr, "\r\033[K");
  spdlog::info("{}", msg);
}

void Progress::verbose(const std::string& msg) {
  if (!verbose_) return;
  if (tty_) std::fprintf(stderr, "\r\033[K");
  spdlog::debug("{}", msg);
}

void Progress::draw(bool force) {
  if (quiet_ || total_ <= 0) return;
  const auto now = std::chrono::steady_clock::now();
  const double el = std::chrono::duration<double>(now - t0_).count();
  const double rate = el > 0 ? done_ / el : 0;
  const double eta = rate > 0 ? (total_ - done_) / rate : 0;
  if (tty_) {
    if (!force && std::chrono::duration<double>(now - last_draw_).count() < 0.1) return;
    last_draw_ = now;
    const int width = 30;
    const int fill = int(width * double(done_) / total_);
    std::string bar(fill, '#');
    bar += std::string(width - fill, '.');
    std::fprintf(stderr, "\r\033[K%s [%s] %lld/%lld %s  %.2f %s/s  ETA %s", stage_.c_str(),
                 bar.c_str(), (long long)done_, (long long)total_, unit_.c_str(), rate,
                 unit_.c_str(), fmt_secs(eta).c_str());
    std::fflush(stderr);
  } else {
    const int pct = int(100.0 * done_ / total_);
    if (pct / 10 == last_logged_pct_ / 10 && !(done_ == total_ && last_logged_pct_ != 100)) return;
    if (done_ == 0) return;
    last_logged_pct_ = pct;
    spdlog::info("{}: {}/{} {} ({:.2f} {}/s, ETA {})", stage_, done_, total_, unit_, rate, unit_,
                 fmt_secs(eta));
  }
}

}  // namespace mg
