// Shared test helpers.
#pragma once
#include <cstdlib>
#include <string>

namespace testutil {

// The golden reference sets: $MOGAGEN_GOLDEN_DIR when set (e.g. a copy carried to a GPU
// machine), else ../shared/golden beside the checkout.
inline std::string golden_dir() {
  if (const char* g = std::getenv("MOGAGEN_GOLDEN_DIR")) return g;
  return std::string(MOGAGEN_SOURCE_DIR) + "/../shared/golden";
}

}  // namespace testutil
