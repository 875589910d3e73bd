// mogagen command line. Subcommands: verify (golden checks). Rendering is documented in
// README.md.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "mogagen/error.h"
#include "mogagen/log.h"

int main(int argc, char** argv) {
  spdlog::set_pattern("[%H:%M:%S.%e] %^%l%$ %v");
  try {
    return mg::cli::run(argc, argv);
  } catch (const mg::Error& e) {
    std::fprintf(stderr, "mogagen: error: %s\n", e.what());
    return static_cast<int>(e.code());
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "mogagen: error: out of host memory\n");
    return static_cast<int>(mg::ExitCode::Device);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mogagen: internal error: %s\n", e.what());
    return static_cast<int>(mg::ExitCode::Internal);
  }
}
