#!/usr/bin/env bash
# Configures and builds mogagen in ./build (Release). Extra arguments go to CMake, e.g.
#   tools/build.sh -DMOGAGEN_CUDA=OFF
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${MOGAGEN_BUILD_DIR:-build}"
JOBS="${MOGAGEN_JOBS:-$(nproc)}"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$BUILD_DIR" -j "$JOBS"
