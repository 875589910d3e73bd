// Logging goes through spdlog's default logger ("mogagen"); see src/core/log.cpp.
#pragma once
#include <spdlog/spdlog.h>

namespace mg {
// level: "quiet" (errors only), "info", "verbose" (debug)
void set_log_level(const std::string& level);
}  // namespace mg
