// Helpers for end-to-end tests that run the mogagen binary.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "test_util.h"

namespace e2e {

struct Run {
  int code = -1;
  std::string out;  // stdout + stderr
};

// Runs a shell command, capturing stdout and stderr together.
inline Run sh(const std::string& cmd) {
  Run r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

// Runs a shell command; returns its stdout only (binary-safe) and sets *code to the status.
inline std::string capture(const std::string& cmd, int* code) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    *code = -1;
    return out;
  }
  std::array<char, 65536> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int st = pclose(p);
  *code = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  return out;
}

inline std::string bin() { return MOGAGEN_BINARY; }
inline std::string src() { return MOGAGEN_SOURCE_DIR; }
inline std::string q(const std::string& s) { return "'" + s + "'"; }

inline std::string tmpdir(const std::string& tag) { return testutil::make_tmpdir(tag); }

// A random-weight model folder written by `mogagen make-random-model` for a test suite.
struct TinyModel {
  std::string dir;    // the suite's temporary folder
  std::string model;  // dir + "/tiny"
  std::string log;    // the command's output
  bool ok = false;
  bool lacks_sentencepiece() const { return log.find("SentencePiece") != std::string::npos; }
};
inline TinyModel make_tiny_model(const std::string& tag, const std::string& config, int seed) {
  TinyModel t;
  t.dir = tmpdir(tag);
  t.model = t.dir + "/tiny";
  auto r = sh(bin() + " make-random-model --config " + q(src() + "/configs/" + config) +
              " --seed " + std::to_string(seed) + " -o " + q(t.model));
  t.ok = r.code == 0;
  t.log = r.out;
  return t;
}

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

inline bool have(const char* tool) {
  return sh(std::string("command -v ") + tool + " >/dev/null").code == 0;
}

}  // namespace e2e
