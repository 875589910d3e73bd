// Time spent per named part of a model's forward, for benchmarks (mogagen_bench --profile on).
// Each part is bracketed by Ops::synchronize, so profiling slows the run it measures;
// switched off, a Scope costs one branch.
#pragma once
#include <chrono>
#include <map>
#include <string>

#include "mogagen/ops.h"

namespace mg {

class PartProfile {
 public:
  explicit PartProfile(Ops& ops) : ops_(ops) {}
  // Turning it on or off clears the totals.
  void enable(bool on) {
    on_ = on;
    seconds_.clear();
  }
  bool enabled() const { return on_; }
  const std::map<std::string, double>& seconds() const { return seconds_; }

  // Adds the time from construction to destruction to the part's total (when enabled).
  class Scope {
   public:
    Scope(PartProfile& p, const char* part) : p_(p), part_(part) {
      if (!p_.on_) return;
      p_.ops_.synchronize();
      t0_ = now();
    }
    ~Scope() {
      if (!p_.on_) return;
      p_.ops_.synchronize();
      p_.seconds_[part_] += now() - t0_;
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    static double now() {
      return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    }
    PartProfile& p_;
    const char* part_;
    double t0_ = 0;
  };

 private:
  Ops& ops_;
  bool on_ = false;
  std::map<std::string, double> seconds_;
};

}  // namespace mg
