#pragma once

namespace mg::cli {
// Parses the command line and runs; returns the process exit code. Throws mg::Error.
int run(int argc, char** argv);
}  // namespace mg::cli
