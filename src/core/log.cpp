#include "mogagen/log.h"

namespace mg {

void set_log_level(const std::string& level) {
  if (level == "quiet")
    spdlog::set_level(spdlog::level::err);
  else if (level == "verbose")
    spdlog::set_level(spdlog::level::debug);
  else
    spdlog::set_level(spdlog::level::info);
}

}  // namespace mg
