#!/usr/bin/env bash
# The test command: installs what is missing, builds everything (the CUDA backend too when
# nvcc is present) and runs the whole test suite through ctest. GPU tests skip cleanly
# without a GPU; golden tests skip when ../shared/golden is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/build.sh "$@"
cd "${MOGAGEN_BUILD_DIR:-build}"
ctest --output-on-failure -j "${MOGAGEN_JOBS:-$(nproc)}" --timeout 1500
