// Error values with a user-actionable message and a documented exit code.
#pragma once
#include <stdexcept>
#include <string>

namespace mg {

// Process exit codes (documented in README.md, "Exit codes").
enum class ExitCode : int {
  Ok = 0,
  Failure = 1,        // a check failed (e.g. verify out of tolerance) or a job failed
  Usage = 2,          // bad command line or job spec
  BadInput = 3,       // unreadable / malformed input file (JSON, shot list, batch)
  BadWeights = 4,     // missing, malformed or mismatched weights / checkpoint
  Io = 5,             // cannot write output, disk errors
  Device = 6,         // device (CUDA) unavailable or out of memory
  Interrupted = 130,  // stopped by Ctrl-C
  Internal = 70,      // a bug: invariant violated
};

class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
  ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

// Convenience constructors.
inline Error usage_error(const std::string& m) { return Error(ExitCode::Usage, m); }
inline Error input_error(const std::string& m) { return Error(ExitCode::BadInput, m); }
inline Error weights_error(const std::string& m) { return Error(ExitCode::BadWeights, m); }
inline Error io_error(const std::string& m) { return Error(ExitCode::Io, m); }
inline Error device_error(const std::string& m) { return Error(ExitCode::Device, m); }
inline Error internal_error(const std::string& m) { return Error(ExitCode::Internal, m); }

}  // namespace mg

// Internal invariant check: throws mg::Error(Internal) with file:line.
#define MG_CHECK(cond, msg)                                                              \
  do {                                                                                   \
    if (!(cond))                                                                         \
      throw ::mg::internal_error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + \
                                 ": check failed: " #cond ": " + (msg));                 \
  } while (0)
