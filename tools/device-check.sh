#!/usr/bin/env bash
# Every GPU check in one device call (the device lends 30 minutes a session, a few
# minutes to start a machine: few, full calls). Run from the repository root on the GPU
# machine, with the golden sets copied to .golden/ and carried (docs/performance.md):
#
#   tools/device-check.sh [--bench]
#
# 1. unpacks the carried Debian packages (.debs/setup.sh) where the image lacks them;
# 2. builds mogagen, mogagen_bench and mogagen_tests with CUDA into build/ (kept while the
#    machine stays warm, so a second call only relinks);
# 3. runs the whole test suite, GPU tests included, against .golden/;
# 4. `mogagen verify <component> <set> --device cuda` on every golden set in .golden/;
# 5. renders the same jobs on the CPU and the GPU (tools/check-gpu-cpu.sh);
# 6. with --bench: the umT5 under each TF32 policy, then the 1.3B and 14B DiT and the VAE
#    (mogagen_bench), for docs/performance.md.
# The report goes to stdout and to $OUT/device-check.txt when OUT is set. The exit status
# is the number of failed steps (0: all passed).
set -uo pipefail
cd "$(dirname "$0")/.."
bench=0
[ "${1:-}" = "--bench" ] && bench=1
report="${OUT:-/tmp}/device-check.txt"
: >"$report"
failed=0
log() { echo "$*" | tee -a "$report"; }
step() {  # step NAME COMMAND...: runs it, keeps its last lines in the report
  local name="$1"
  shift
  local t0=$SECONDS
  "$@" >/tmp/device-check-step.log 2>&1
  local rc=$?
  tail -n 40 /tmp/device-check-step.log >>"$report"
  if [ $rc -eq 0 ]; then
    log "== ok    $name ($((SECONDS - t0)) s)"
  else
    log "== FAIL  $name (exit $rc, $((SECONDS - t0)) s)"
    failed=$((failed + 1))
  fi
}

log "device-check $(git rev-parse --short HEAD 2>/dev/null) on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
[ -f .debs/setup.sh ] && step "carried packages" bash .debs/setup.sh
step "build" bash -c "cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMOGAGEN_CUDA=ON -DMOGAGEN_TESTS=ON \
  && cmake --build build -j $(nproc) --target mogagen mogagen_bench mogagen_tests"
if [ ! -x build/mogagen_tests ]; then
  log "no build: stopping"
  exit "$failed"
fi
export MOGAGEN_GOLDEN_DIR="$PWD/.golden"
step "test suite (GPU tests included)" bash -c "cd build && ctest --output-on-failure -j 8 --timeout 900"
for set in .golden/*/; do
  set=${set%/}
  name=$(basename "$set")
  case "$name" in
    moga*) step "verify moga $name --device cuda" build/mogagen verify moga "$set" --device cuda ;;
  esac
  for comp in t5 dit vae sched; do
    [ -d "$set/$comp" ] && step "verify $comp $name --device cuda" build/mogagen verify "$comp" "$set" --device cuda
  done
done
step "CPU vs GPU renders" tools/check-gpu-cpu.sh build
if [ $bench = 1 ]; then
  for policy in exact tf32-except-qk tf32; do
    step "bench umT5-XXL, MOGAGEN_T5_MATMUL=$policy" env MOGAGEN_T5_MATMUL=$policy build/mogagen_bench t5 --tokens 512
  done
  step "bench DiT 1.3B" build/mogagen_bench dit --model 1.3b --iters 3
  step "bench DiT 14B" build/mogagen_bench dit --model 14b --iters 3
  step "bench VAE" build/mogagen_bench vae
fi
log "device-check: $failed step(s) failed"
exit "$failed"
