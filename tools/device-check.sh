#!/usr/bin/env bash
# Every GPU check in one device call (the device lends 30 minutes a session, a few
# minutes to start a machine: few, full calls). Run from the repository root on the GPU
# machine, with the golden sets copied to .golden/ and carried (docs/performance.md):
#
#   tools/device-check.sh [checks|verify|golden] [model] [bench] [moga] [long] [peer]  (default: checks)
#
# 1. unpacks the carried Debian packages (.debs/setup.sh) where the image lacks them;
# 2. builds mogagen, mogagen_bench and mogagen_tests with CUDA into build/ (kept while the
#    machine stays warm, so a second call only relinks);
# then the parts asked for:
#   checks  the whole test suite with the GPU tests, against .golden/; `mogagen verify
#           <component> <set> --device cuda` on every golden set in .golden/; the same jobs
#           rendered on the CPU and the GPU (tools/check-gpu-cpu.sh)
#   verify  checks without the whole suite: the GPU tests alone (CudaOps.*, the umT5 policy
#           test), then the verify commands and the renders (a minute less)
#   golden  the verify commands alone
#   model   issue 6: the model trained in .train/model copied out to $OUT/model, then the
#           semantic tests on it (tests/test_default_model.cpp, about 3 minutes)
#   bench   issue 4: umT5-XXL under each TF32 policy, the 1.3B DiT (with the GPU's clocks
#           recorded beside it, with the old small norm weights, and again with the cuDNN
#           knob search) and the 14B DiT, the VAE in each convolution mode with its
#           profile, attention alone (dense, varlen, MoGA's calls; again with the knob search)
#   moga    issue 5: MoGA (M = 5) forwards at 187,200 tokens for 14B and 1.3B with their
#           profiles, then the dense ones; the routers are calibrated to balanced groups
#           first (mogagen_bench --router balanced) (about 7 minutes)
#   long    issue 5: 14B MoGA at 563,160 tokens, M = 5 and M = 20, one forward each with
#           time and peak memory; first issue 4's VAE decode of a minute (361 latent
#           frames), its peak memory against 21 frames' (about 6 minutes)
#   peer    the PyTorch peer in the same lease (../shared/bench/peer_bench.py from .peer/,
#           with diffusers' src/ from .peer/diffusers-src.tar.xz): eager and compiled 1.3B
#           and 14B DiTs, the VAE, umT5-XXL, attention (issue 4's four targets first: umT5,
#           VAE, compiled 1.3B and 14B); JSON lines in $OUT/peer.json
# Shorter parts where a lease is short of time: T5_POLICIES (bench; default "split-qk
# tf32-except-qk exact tf32"), MOGA_DENSE (moga's dense forwards; default "1.3b 14b", the
# 14B one takes about two minutes), LONG_NO_VAE=1 (long without the minute-long VAE decode),
# PEER_PARTS (peer; default "t5 vae dit13c dit14c attn dit13 dit14": issue 4's four targets
# are the first four), BENCH_SHORT=1 (bench without the VAE's two non-default modes),
# VERIFY_SETS (the golden sets in .golden/ that checks, verify and golden visit, by name;
# default: all).
# The report goes to stdout and to $OUT/device-check.txt when OUT is set, each step's whole
# output to $OUT/logs/. The exit status
# is the number of failed steps (0: all passed).
set -uo pipefail
cd "$(dirname "$0")/.."
parts="${*:-checks}"
for p in $parts; do
  case "$p" in
    checks | verify | golden | model | bench | moga | long | peer) ;;
    *) echo "device-check: unknown part '$p' (expected checks, verify, golden, model, bench, moga, long or peer)" >&2; exit 2 ;;
  esac
done
want() { case " $parts " in *" $1 "*) return 0 ;; esac; return 1; }
report="${OUT:-/tmp}/device-check.txt"
: >"$report"
failed=0
steps=0
log() { echo "$*" | tee -a "$report"; }
step() {  # step NAME COMMAND...: runs it, keeps its last lines in the report
  local name="$1"
  shift
  local t0=$SECONDS
  "$@" >/tmp/device-check-step.log 2>&1
  local rc=$?
  tail -n 40 /tmp/device-check-step.log >>"$report"
  # the whole output too (the report keeps 40 lines, and a MoGA bench prints a line per
  # block before its timings): $OUT/logs/<step number>_<name>.log
  if [ -n "${OUT:-}" ]; then
    steps=$((steps + 1))
    mkdir -p "$OUT/logs"
    cp /tmp/device-check-step.log "$OUT/logs/$(printf %02d $steps)_$(echo "$name" | tr -c 'A-Za-z0-9.=-' _ | cut -c1-80).log"
  fi
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
if want checks || want verify || want golden; then
  if want checks; then
    step "test suite (GPU tests included)" bash -c "cd build && ctest --output-on-failure -j 8 --timeout 900"
  elif want verify; then
    step "GPU tests (CudaOps.*, UMT5.GpuMatmulPoliciesMatchCpu)" \
      build/mogagen_tests --gtest_filter='CudaOps.*:UMT5.GpuMatmulPoliciesMatchCpu'
  fi
  for set in .golden/*/; do
    [ -d "$set" ] || continue
    set=${set%/}
    name=$(basename "$set")
    case " ${VERIFY_SETS:-$name} " in *" $name "*) ;; *) continue ;; esac
    case "$name" in
      moga*) step "verify moga $name --device cuda" build/mogagen verify moga "$set" --device cuda ;;
    esac
    for comp in t5 dit vae sched; do
      if [ -d "$set/$comp" ]; then
        step "verify $comp $name --device cuda" build/mogagen verify "$comp" "$set" --device cuda
      fi
    done
    # the other precisions users can choose (the defaults are split-qk and bf16 channels-last convolutions)
    if [ -d "$set/t5" ]; then
      step "verify t5 $name --device cuda, MOGAGEN_T5_MATMUL=tf32-except-qk" \
        env MOGAGEN_T5_MATMUL=tf32-except-qk build/mogagen verify t5 "$set" --device cuda
    fi
    if [ -d "$set/vae" ]; then
      step "verify vae $name --device cuda, MOGAGEN_CONV=cudnn (float32 data)" \
        env MOGAGEN_CONV=cudnn build/mogagen verify vae "$set" --device cuda
      step "verify vae $name --device cuda, MOGAGEN_CONV=bf16 (channels first)" \
        env MOGAGEN_CONV=bf16 build/mogagen verify vae "$set" --device cuda
    fi
  done
  if want checks || want verify; then
    step "CPU vs GPU renders" tools/check-gpu-cpu.sh build
  fi
fi
if want model; then
  # issue 6: a model trained in this machine's .train/model (docs/training.md): copied out
  # to $OUT/model (the two safetensors files and a tar of the rest, each under the copy-out
  # limits), then the semantic tests on it
  if [ -f .train/model/model_index.json ]; then
    if [ -n "${OUT:-}" ]; then
      mkdir -p "$OUT/model"
      cp .train/model/transformer/diffusion_pytorch_model.safetensors "$OUT/model/dit.safetensors"
      cp .train/model/vae/diffusion_pytorch_model.safetensors "$OUT/model/vae.safetensors"
      tar czf "$OUT/model/rest.tgz" --exclude='*diffusion_pytorch_model.safetensors' -C .train model
      log "model copied to \$OUT/model"
    fi
    step "default model: semantic tests (DefaultModel.*)" env MOGAGEN_TEST_MODEL="$PWD/.train/model" \
      build/mogagen_tests --gtest_filter='DefaultModel.*'
  else
    log "== FAIL  model: no trained model in .train/model"
    failed=$((failed + 1))
  fi
fi
if want bench; then
  for policy in ${T5_POLICIES:-split-qk tf32-except-qk exact tf32}; do
    step "bench umT5-XXL, MOGAGEN_T5_MATMUL=$policy" env MOGAGEN_T5_MATMUL=$policy build/mogagen_bench t5 --tokens 512 --profile on
  done
  # the GPU's clocks and power beside the 1.3B forward (its attention runs 6% below the
  # same call alone: clocks held down by power would say why)
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi dmon -s pc -d 1 >"${OUT:-/tmp}/dmon-dit13b.txt" 2>&1 &
    dmon=$!
  fi
  step "bench DiT 1.3B" build/mogagen_bench dit --model 1.3b --iters 3 --profile on
  [ -n "${dmon:-}" ] && kill "$dmon" 2>/dev/null
  # the benches up to the ninth session drew the norms' scales like every weight (0.02
  # N(0, 1)), so q and k entered attention about 50 times smaller than in a trained model
  # or the peer: under the power cap that changes the speed (docs/performance.md)
  step "bench DiT 1.3B, --norm-weights small (as up to the ninth session)" \
    build/mogagen_bench dit --model 1.3b --iters 3 --norm-weights small
  # cuDNN's knob search (MOGAGEN_SDPA_KNOBS=search, an experiment): variants of the
  # heuristics' first configuration timed for the first graph of each family
  step "bench DiT 1.3B, MOGAGEN_SDPA_KNOBS=search" env MOGAGEN_SDPA_KNOBS=search \
    build/mogagen_bench dit --model 1.3b --iters 3 --log verbose
  step "bench DiT 14B" build/mogagen_bench dit --model 14b --iters 3 --profile on
  step "bench VAE (bf16 convolutions on channels-last copies, the default)" build/mogagen_bench vae --profile on
  if [ -z "${BENCH_SHORT:-}" ]; then
    step "bench VAE, MOGAGEN_CONV=bf16 (channels first)" env MOGAGEN_CONV=bf16 build/mogagen_bench vae --profile on
    step "bench VAE, MOGAGEN_CONV=cudnn (float32 data)" env MOGAGEN_CONV=cudnn build/mogagen_bench vae --profile on
  fi
  step "bench attention (dense, varlen, MoGA's calls)" build/mogagen_bench attention
  step "bench attention, MOGAGEN_SDPA_KNOBS=search" env MOGAGEN_SDPA_KNOBS=search build/mogagen_bench attention --log verbose
fi
B="build/mogagen_bench dit --frames 120 --height 60 --width 104"  # 187,200 tokens
if want moga; then
  # MoGA first: the 14B dense forward alone takes over two minutes (58 s a forward)
  for m in 14b 1.3b; do
    step "bench DiT $m MoGA M=5, 187,200 tokens" $B --model $m --attention moga --groups 5 --iters 1 --profile on
  done
  for m in ${MOGA_DENSE:-1.3b 14b}; do
    step "bench DiT $m dense, 187,200 tokens" $B --model $m --attention dense --iters 1
  done
fi
if want long; then
  # issue 4: a minute of video (361 latent frames -> 1,441 frames) decodes in bounded memory
  [ -z "${LONG_NO_VAE:-}" ] && step "bench VAE, 361 latent frames (1,441 frames)" build/mogagen_bench vae --frames 361
  for g in 5 20; do
    step "bench DiT 14b MoGA M=$g, 563,160 tokens" build/mogagen_bench dit --model 14b --frames 361 \
      --height 60 --width 104 --attention moga --groups $g --iters 1 --warmup 0
  done
fi
if want peer; then
  # The peer of issue 4's ratios, for the same lease: ../shared/bench/peer_bench.py and a
  # diffusers src/ tarball in .peer/ (git-ignored, carried; docs/performance.md says how)
  if [ -f .peer/peer_bench.py ] && [ -f .peer/diffusers-src.tar.xz ]; then
    rm -rf /tmp/peer && mkdir -p /tmp/peer && tar -xJf .peer/diffusers-src.tar.xz -C /tmp/peer
    # each measurement is a JSON line as it comes (peer.log), so a cut-short call keeps them
    step "peer: PyTorch eager and compiled DiTs, VAE, umT5, attention" bash -c "set -o pipefail; \
      DIFFUSERS_SRC=/tmp/peer/src python3 .peer/peer_bench.py '${OUT:-/tmp}/peer.json' \
      ${PEER_PARTS:-t5 vae dit13c dit14c attn dit13 dit14} 2>&1 | tee '${OUT:-/tmp}/peer.log'"
  else
    log "== FAIL  peer: .peer/peer_bench.py or .peer/diffusers-src.tar.xz missing"
    failed=$((failed + 1))
  fi
fi
log "device-check: $failed step(s) failed"
exit "$failed"
