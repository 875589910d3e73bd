// Shared test helpers.
#pragma once
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "mogagen/tensor.h"

namespace testutil {

// The golden reference sets: $MOGAGEN_GOLDEN_DIR when set (e.g. a copy carried to a GPU
// machine), else ../shared/golden beside the checkout.
inline std::string golden_dir() {
  if (const char* g = std::getenv("MOGAGEN_GOLDEN_DIR")) return g;
  return std::string(MOGAGEN_SOURCE_DIR) + "/../shared/golden";
}

// A fresh folder under the system temp directory, named mogagen-<tag>-XXXXXX.
inline std::string make_tmpdir(const std::string& tag) {
  std::string t = (std::filesystem::temp_directory_path() / ("mogagen-" + tag + "-XXXXXX")).string();
  if (!mkdtemp(t.data())) std::abort();
  return t;
}

// A fresh folder (make_tmpdir) removed with everything in it at scope exit.
struct TempDir {
  std::string path;
  explicit TempDir(const std::string& tag) : path(make_tmpdir(tag)) {}
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// PSNR in dB between two 8-bit images or videos of the same size (99 when identical).
inline double psnr8(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  double mse = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - double(b[i]);
    mse += d * d;
  }
  mse /= double(a.size());
  return mse == 0 ? 99.0 : 10 * std::log10(255.0 * 255.0 / mse);
}

// A CPU F32 tensor of normal random values (never zeros: they hide unwritten outputs).
inline mg::Tensor randn(const mg::Shape& s, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  mg::Tensor t = mg::Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = d(g);
  return t;
}

}  // namespace testutil
