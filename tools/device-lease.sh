#!/usr/bin/env bash
# Device leases (docs/performance.md, docs/training.md) as short calls, each one a single
# command for the device tool, so that the next call can be issued within the 30 s before
# an idle machine is released. The next lease (issue 4):
#
#   OUT=$OUT tools/device-lease.sh tune      # carry .debs, .golden/wan-a, .golden/moga-a: build,
#                                            # GPU tests, verify, sustained tuning, CpuAndGpuAgree, 1.3B MoGA
#   OUT=$OUT tools/device-lease.sh measure   # carry .golden/wan-c, .peer: verify wan-c, device-check bench
#   OUT=$OUT tools/device-lease.sh peer      # issue 4's four peer targets (umT5, VAE, compiled DiTs)
#
# (the tree, .debs and the three golden sets together exceed the 64 MiB a call carries)
# issue 4 closes on same-lease ratios only, so `peer` follows `measure` in the same lease.
# Our attention kernel (eleventh session): `flash` (the kernel alone, tools/flash_probe.cu),
# `sm90` (carry .debs, .golden/wan-a, .golden/moga-a: the engine with it), then `peer`;
# `sm90b` (carry .debs and .golden/wan-c's dit, t5, sched, report.json); `final` (below),
# then `peer`.
# For a training run (issue 6; run 12 ships since the ninth session):
#   OUT=$OUT tools/device-lease.sh train1    # checks (background) + training part 1 (~530 s)
#   OUT=$OUT tools/device-lease.sh train2    # training part 2 + export, model copied out (~530 s)
#   OUT=$OUT tools/device-lease.sh diag13    # CpuAndGpuAgree, 1.3B MoGA, clocks beside the 1.3B (~150 s)
#   OUT=$OUT tools/device-lease.sh sweep     # a trained model's semantic tests over seeds and settings
# Earlier leases' steps, kept for re-measuring: diag, issue5, issue5b (eighth session),
# moga, long (issue 5 at 187,200 and 563,160 tokens).
#
# Carry [".debs", ".golden"] (".peer" for the peer, ".train/prep" for training,
# ".train/model12" for the sweep). Each part writes its logs under $OUT and prints a short
# summary. CpuAndGpuAgree tests the model trained in this machine's .train/model where
# there is one, else models/default.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the output folder of the device tool}"
# run 12's recipe (docs/training.md)
FLAGS=(--prep .train/prep --out .train/model --seed 1 --vae-seconds 240 --dit-seconds 720 --lr-decay cosine
       --moga-impl mask --masked-kernel fused --object-weight 8 --vae-object-weight 8 --uniform-t 0.4
       --balance 0.2 --bg-shading 0.12 --data-reuse 2)

# A fresh machine's build: the carried packages unpacked where the image lacks them, then a
# CUDA build of the given targets into build/ (device-check.sh builds its own)
build_here() {
  bash .debs/setup.sh >"$OUT/setup.log" 2>&1
  (cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMOGAGEN_CUDA=ON -DMOGAGEN_TESTS=ON &&
    cmake --build build -j "$(nproc)" --target "$@") >"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; return 1; }
}

# DefaultModel.CpuAndGpuAgree on the model trained here (.train/model), else models/default
agree_step() {
  if [ -f .train/model/model_index.json ]; then
    env MOGAGEN_TEST_MODEL="$PWD/.train/model" timeout 150 build/mogagen_tests --gtest_filter=DefaultModel.CpuAndGpuAgree
  else
    timeout 150 build/mogagen_tests --gtest_filter=DefaultModel.CpuAndGpuAgree
  fi >"$OUT/agree.log" 2>&1
  echo "CpuAndGpuAgree: exit $?"
  grep -E "PSNR" "$OUT/agree.log"
}

# issue 5's 1.3B MoGA forward at 187,200 tokens (3.420 s in the eighth and ninth sessions)
moga13b_step() {
  timeout 60 build/mogagen_bench dit --frames 120 --height 60 --width 104 --model 1.3b --attention moga \
    --groups 5 --iters 1 >"$OUT/moga13b.log" 2>&1
  grep -E "median|plans built" "$OUT/moga13b.log" | cut -c1-200
}

copy_model() {
  mkdir -p "$OUT/model" &&
    cp .train/model/transformer/diffusion_pytorch_model.safetensors "$OUT/model/dit.safetensors" &&
    cp .train/model/vae/diffusion_pytorch_model.safetensors "$OUT/model/vae.safetensors" &&
    tar czf "$OUT/model/rest.tgz" --exclude='*diffusion_pytorch_model.safetensors' -C .train model &&
    echo "model copied to \$OUT/model"
}

# The GPU's SM and memory clocks, power, temperature and throttle reasons every 100 ms into
# $OUT/NAME-clocks.csv, in the background (CLOCK_LOG_PID: kill it when done); `mark TEXT`
# then writes a timestamped line to $OUT/NAME-marks.txt, for the windows of what ran.
clock_log() {
  local q="timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active"
  nvidia-smi --query-gpu="$q" --format=csv >/dev/null 2>&1 || q="${q/clocks_event_reasons/clocks_throttle_reasons}"
  nvidia-smi --query-gpu="$q" --format=csv,noheader -lms 100 >"$OUT/$1-clocks.csv" 2>&1 &
  CLOCK_LOG_PID=$!
  MARKS="$OUT/$1-marks.txt"
}
mark() { echo "$(date +%H:%M:%S.%N | cut -c1-12) $*" >>"$MARKS"; }

# Why the 1.3B's self-attention runs 6% slower inside its forward (11.26 ms a call) than
# alone (10.59 ms, same shape and operands' layout) where the 14B's 40-head calls do not:
# the SM clock, power and throttle reasons every 100 ms beside a sustained forward and
# sustained attention calls (small and unit-sized operands), each window marked; the cuDNN
# configuration each picks (--log verbose); the kernels each runs (nsys, where installed).
clocks() {
  clock_log diag13
  local A=(build/mogagen_bench attention --tokens 32760 --segment 0 --log verbose)
  mark start 1.3B forward x 8
  timeout 60 build/mogagen_bench dit --model 1.3b --iters 8 --log verbose >"$OUT/clocks-dit13b.log" 2>&1
  mark start 1.3B forward x 8, small norm weights
  timeout 60 build/mogagen_bench dit --model 1.3b --iters 8 --norm-weights small >"$OUT/clocks-dit13bs.log" 2>&1
  mark start attention 12 heads x 300 small
  timeout 30 "${A[@]}" --heads 12 --iters 300 --operands small >"$OUT/clocks-attn12.log" 2>&1
  mark start attention 12 heads x 300 unit
  timeout 30 "${A[@]}" --heads 12 --iters 300 --operands unit >"$OUT/clocks-attn12u.log" 2>&1
  mark start attention 12 heads x 300 normal
  timeout 30 "${A[@]}" --heads 12 --iters 300 --operands normal >"$OUT/clocks-attn12n.log" 2>&1
  mark start attention 40 heads x 100 normal
  timeout 30 "${A[@]}" --heads 40 --iters 100 >"$OUT/clocks-attn40.log" 2>&1
  mark end
  kill "$CLOCK_LOG_PID" 2>/dev/null
  grep -hE "median|TFLOP/s|fastest|plan built" "$OUT"/clocks-*.log | cut -c1-200
  local nsys
  nsys=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  if [ -n "$nsys" ]; then
    timeout 90 "$nsys" profile --stats=true -o /tmp/nsys-dit13b --force-overwrite true \
      build/mogagen_bench dit --model 1.3b --iters 2 >"$OUT/nsys-dit13b.log" 2>&1
    timeout 60 "$nsys" profile --stats=true -o /tmp/nsys-attn12 --force-overwrite true \
      "${A[@]}" --heads 12 --iters 20 >"$OUT/nsys-attn12.log" 2>&1
    grep -hiE -A12 "cuda_gpu_kern_sum" "$OUT"/nsys-*.log | cut -c1-220 | head -40
  else
    echo "no nsys on this machine"
  fi
}

# Whether timing candidates sustained (MOGAGEN_TUNE_MS, kernels/kernels.cuh) picks cuDNN SDPA
# configurations and cuBLASLt algorithms that run faster at the power cap: the 12-head
# attention call and the 1.3B forward, each with the default (burst) timing and sustained,
# with all eight heuristic configurations and the knob search; the clocks beside them.
tune() {
  clock_log tune
  local A=(build/mogagen_bench attention --tokens 32760 --segment 0 --heads 12 --iters 300 --log verbose)
  local D=(build/mogagen_bench dit --model 1.3b --iters 8 --log verbose)
  local S=(env MOGAGEN_TUNE_MS="${TUNE_MS:-300}" MOGAGEN_SDPA_CANDIDATES=8 MOGAGEN_SDPA_KNOBS=search)
  mark attention burst
  timeout 60 "${A[@]}" >"$OUT/tune-attn-burst.log" 2>&1
  mark attention sustained all
  timeout 120 "${S[@]}" "${A[@]}" >"$OUT/tune-attn-sustained.log" 2>&1
  mark dit burst
  timeout 90 "${D[@]}" >"$OUT/tune-dit-burst.log" 2>&1
  mark dit sustained all
  timeout 200 "${S[@]}" "${D[@]}" >"$OUT/tune-dit-sustained.log" 2>&1
  mark dit sustained, default candidates
  timeout 150 env MOGAGEN_TUNE_MS="${TUNE_MS:-300}" "${D[@]}" >"$OUT/tune-dit-sustained4.log" 2>&1
  mark dit burst again
  timeout 90 "${D[@]}" >"$OUT/tune-dit-burst2.log" 2>&1
  mark end
  kill "$CLOCK_LOG_PID" 2>/dev/null
  for f in burst sustained; do
    echo "-- attention $f"
    grep -hE "median|TFLOP/s|fastest" "$OUT/tune-attn-$f.log" | cut -c1-200
  done
  for f in burst sustained sustained4 burst2; do
    echo "-- dit $f"
    grep -hE "median|TFLOP/s|is the fastest" "$OUT/tune-dit-$f.log" | cut -c1-200
  done
}

# The GPU tests of build/ (CudaOps.*, BenchOptions.*)
gputests_step() {
  timeout 240 build/mogagen_tests --gtest_filter='CudaOps.*:BenchOptions.*' >"$OUT/gputests.log" 2>&1
  echo "GPU tests: exit $?"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests ran|FAILED" "$OUT/gputests.log" | head -20 | cut -c1-200
}

# verify --device cuda on the carried golden sets (VERIFY_SETS: only those named)
verify_step() {
  OUT="$OUT" timeout 200 tools/device-check.sh golden >"$OUT/verify.log" 2>&1
  echo "verify: exit $?"
  grep "==" "$OUT/device-check.txt" | cut -c1-160
}

# the CPU-vs-GPU renders (tools/check-gpu-cpu.sh), then CpuAndGpuAgree
renders_step() {
  timeout 200 tools/check-gpu-cpu.sh build >"$OUT/check-gpu-cpu.log" 2>&1
  echo "check-gpu-cpu: exit $?"
  tail -2 "$OUT/check-gpu-cpu.log" | cut -c1-200
  agree_step
}

# bench_step NAME COMMAND...: a bench's log to $OUT/NAME.log, its summary lines printed
bench_step() {
  local name=$1
  shift
  timeout 200 "$@" >"$OUT/$name.log" 2>&1
  echo "$name: exit $?"
  grep -E "median|TFLOP/s|attention:|decode|peak|kept" "$OUT/$name.log" | cut -c1-200
}

# tools/flash_probe.cu built into $OUT, then its checks on odd shapes (both grid modes)
flash_probe_step() {
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Ikernels -Xptxas -v -o "$OUT/flash_probe" \
    tools/flash_probe.cu kernels/flash_sm90.cu >"$OUT/flash-build.log" 2>&1 ||
    { tail -20 "$OUT/flash-build.log"; return 1; }
  grep -E "C75|spill" "$OUT/flash-build.log" | sort | uniq -c | cut -c1-160
  for persist in 1 0; do
    for shape in "1000 2 0 128" "1000 2 0 176" "777 3 0 176 $persist 1500" "200 1 0 128 $persist 100" "4096 4 0 176"; do
      set -- $shape
      [ $# -eq 4 ] && set -- "$@" $persist
      timeout 30 "$OUT/flash_probe" "$@" 2>&1 | grep check | cut -c1-240
    done
  done
}

case "${1:-}" in
  diag)
    # the eighth session's first call: the unrun kernels checked (GPU tests, verify) and
    # timed (bench), and the MoGA forwards diagnosed (attention_stats, the plans built, with
    # the 14B cut to 8 layers: its 40 blocks are alike)
    T5_POLICIES=split-qk OUT="$OUT" tools/device-check.sh verify bench >"$OUT/bench.log" 2>&1
    mv "$OUT/device-check.txt" "$OUT/device-check-bench.txt"
    B=(build/mogagen_bench dit --frames 120 --height 60 --width 104 --attention moga --groups 5 --iters 1 --profile on)
    timeout 150 "${B[@]}" --model 14b --layers 8 --log verbose >"$OUT/moga14b-8.log" 2>&1
    echo "14B MoGA, 8 layers: exit $?"
    timeout 100 "${B[@]}" --model 1.3b >"$OUT/moga13b.log" 2>&1
    echo "1.3B MoGA: exit $?"
    grep -E "^== |median|decode|TFLOP/s" "$OUT/device-check-bench.txt" | cut -c1-160
    grep -hE "median|plans built|cannot run|self-attention|moga |dit profile" "$OUT"/moga*.log | cut -c1-200
    ;;
  issue5)
    # the GPU tests for what changed since diag, then issue 5 at 187,200 tokens (moga:
    # 14B and 1.3B MoGA, both dense forwards); the 1.3B dense forward at 32,760 tokens with
    # one cuDNN configuration and with eight timed; the VAE as it now defaults
    OUT="$OUT" tools/device-check.sh verify moga >"$OUT/issue5.log" 2>&1
    for n in 1 8; do
      MOGAGEN_SDPA_CANDIDATES=$n timeout 60 build/mogagen_bench dit --model 1.3b --iters 3 >"$OUT/dit13b-cand$n.log" 2>&1
    done
    timeout 60 build/mogagen_bench vae >"$OUT/vae.log" 2>&1
    grep -E "^== |median|decode" "$OUT/device-check.txt" "$OUT"/dit13b-cand*.log "$OUT/vae.log" | cut -c1-220
    grep -hE "plans built|self-attention|moga |dit profile|peak" "$OUT"/logs/*MoGA*.log | cut -c1-200
    ;;
  issue5b)
    # issue 5 at a minute of video (14B MoGA, 563,160 tokens, M = 5 and 20), then the
    # MoGA profiles at 187,200 tokens at the timed forward's timestep (the 14B's 40 blocks
    # are alike: 8 of them give its shares)
    LONG_NO_VAE=1 OUT="$OUT" timeout 420 tools/device-check.sh long >"$OUT/long.log" 2>&1
    B=(build/mogagen_bench dit --frames 120 --height 60 --width 104 --attention moga --groups 5 --iters 1 --profile on)
    timeout 90 "${B[@]}" --model 14b --layers 8 >"$OUT/moga14b-8.log" 2>&1
    timeout 60 "${B[@]}" --model 1.3b >"$OUT/moga13b.log" 2>&1
    grep -hE "median|peak|== " "$OUT/device-check.txt" | cut -c1-200
    grep -hE "median|plans built|self-attention|moga |dit profile|profiled|share in|memory" "$OUT"/moga*.log | cut -c1-200
    ;;
  train1)
    (nice -n 19 env OUT="$OUT" tools/device-check.sh checks >"$OUT/checks.log" 2>&1) &
    python3 tools/train/train.py "${FLAGS[@]}" --stages vae,dit --slice-seconds 240 >"$OUT/train1.log" 2>&1
    echo "training part 1: exit $? (3: paused as planned)"
    wait
    cp .train/train.log "$OUT/" 2>/dev/null
    grep -E "vae done|colour_check|paused" "$OUT/train1.log" | cut -c1-400
    grep "==" "$OUT/device-check.txt"
    ;;
  train2)
    python3 tools/train/train.py "${FLAGS[@]}" --stages dit,export --resume --slice-seconds 520 >"$OUT/train2.log" 2>&1
    echo "training part 2: exit $?"
    cp .train/train.log "$OUT/" 2>/dev/null
    copy_model
    grep -E "dit done|routers calibrated|semantic:|check:" "$OUT/train2.log" | cut -c1-300
    ;;
  measure)
    # after tune (its build, and .golden/wan-a and moga-a verified there: the tree, .debs and
    # all three golden sets exceed what one call carries), the verify commands on the set
    # carried now (VERIFY_SETS, default wan-c), then issue 4's benchmarks
    VERIFY_SETS="${VERIFY_SETS:-wan-c}" BENCH_SHORT=1 T5_POLICIES=split-qk OUT="$OUT" timeout 450 \
      tools/device-check.sh golden bench >"$OUT/bench.log" 2>&1
    grep -E "==|median|decode|TFLOP/s|attention:" "$OUT/device-check.txt" | cut -c1-200
    ;;
  tune)
    # build, the GPU tests and every verify --device cuda (device-check verify), then tune
    OUT="$OUT" timeout 280 tools/device-check.sh verify >"$OUT/verify.log" 2>&1
    grep "==" "$OUT/device-check.txt" | grep -v "== ok" | cut -c1-200
    grep -c "== ok" "$OUT/device-check.txt"
    tune
    agree_step
    moga13b_step
    ;;
  attn)
    # issue 4's attention targets against the peer's SDPA in the same lease (the measure
    # call's attention bench drew its operands on one core and ran out of time), and the
    # 14B forward timed eight times (its 0.95x target is met by under 1%)
    build_here mogagen mogagen_bench mogagen_tests || exit 1
    timeout 150 build/mogagen_bench attention >"$OUT/attention.log" 2>&1
    echo "bench attention: exit $?"
    cat "$OUT/attention.log" | cut -c1-200
    timeout 120 build/mogagen_bench dit --model 14b --iters 8 >"$OUT/dit14b.log" 2>&1
    grep -E "median" "$OUT/dit14b.log" | cut -c1-200
    PEER_PARTS="attn" OUT="$OUT" timeout 240 tools/device-check.sh peer >"$OUT/peer-step.log" 2>&1
    grep -hE "== " "$OUT/device-check.txt" | cut -c1-200
    grep sdpa "$OUT/peer.json" 2>/dev/null | cut -c1-300
    ;;
  attn2)
    # the attention targets in the same state for both: ours (mogagen_bench attention, the
    # 1.3B shape first now, as the peer's part_attn) in a burst, then ours and the peer's
    # (tools/peer/sdpa_sustained.py) sustained, alternately, at 12 and 40 heads
    build_here mogagen_bench || exit 1
    timeout 150 build/mogagen_bench attention >"$OUT/attention.log" 2>&1
    echo "bench attention: exit $?"
    cut -c1-200 "$OUT/attention.log"
    for round in 1 2; do
      for h in 12 40; do
        it=$([ $h = 12 ] && echo 300 || echo 100)
        timeout 60 build/mogagen_bench attention --tokens 32760 --segment 0 --heads $h --iters $it 2>&1 | cut -c1-200
        timeout 90 python3 tools/peer/sdpa_sustained.py $h $it 2>&1 | tail -2 | cut -c1-200
      done
    done
    ;;
  sm90)
    # kernels/flash_sm90.cu in the engine (carry .debs, .golden/wan-a, .golden/moga-a): build,
    # the GPU tests, verify --device cuda on both sets, then issue 4's benches with the
    # attention kernel chosen per shape class (the default) and with cuDNN's forced
    build_here mogagen mogagen_bench mogagen_tests || exit 1
    gputests_step
    VERIFY_SETS="wan-a moga-a" verify_step
    bench_step dit13 build/mogagen_bench dit --model 1.3b --iters 8
    bench_step dit13-cudnn env MOGAGEN_ATTENTION_KERNEL=cudnn build/mogagen_bench dit --model 1.3b --iters 8
    bench_step dit13-profile build/mogagen_bench dit --model 1.3b --iters 3 --profile on --log verbose
    bench_step dit14 build/mogagen_bench dit --model 14b --iters 3
    bench_step attention build/mogagen_bench attention
    bench_step t5 build/mogagen_bench t5 --tokens 512
    bench_step vae build/mogagen_bench vae
    ;;
  sm90b)
    # after sm90 and peer (carry .debs, .golden/wan-c's dit, t5, sched and report.json): the
    # probe with both grids, the GPU tests again, verify on the third set, the renders, the
    # attention bench (each case says which kernel ran) and the 1.3B with the choice logged
    flash_probe_step
    for persist in 1 0; do
      timeout 60 "$OUT/flash_probe" 32760 12 300 176 $persist 2>&1 | tail -1 | cut -c1-200
      timeout 60 "$OUT/flash_probe" 131072 40 30 176 $persist 131072 2048 2>&1 | tail -1 | cut -c1-200
    done
    rm -f "$OUT/flash_probe"
    build_here mogagen mogagen_bench mogagen_tests || exit 1
    gputests_step
    VERIFY_SETS="wan-c" verify_step
    renders_step
    bench_step attention build/mogagen_bench attention --log verbose
    bench_step dit13 build/mogagen_bench dit --model 1.3b --iters 8 --log verbose
    ;;
  final)
    # the final tree (carry .debs, .golden/wan-a, .golden/moga-a, .golden/wan-c/dit and its
    # report.json): the GPU tests, verify, the renders, issue 4's benches (ours with the kernel
    # chosen per shape class, and the 1.3B with cuDNN's forced); then `peer` in the same lease
    build_here mogagen mogagen_bench mogagen_tests || exit 1
    gputests_step
    verify_step
    renders_step
    bench_step attention build/mogagen_bench attention --log verbose
    bench_step dit13 build/mogagen_bench dit --model 1.3b --iters 8 --log verbose
    bench_step dit13-cudnn env MOGAGEN_ATTENTION_KERNEL=cudnn build/mogagen_bench dit --model 1.3b --iters 8
    bench_step dit14 build/mogagen_bench dit --model 14b --iters 3
    bench_step dit13-profile build/mogagen_bench dit --model 1.3b --iters 3 --profile on
    bench_step t5 build/mogagen_bench t5 --tokens 512
    bench_step vae build/mogagen_bench vae
    ;;
  flash)
    # kernels/flash_sm90.cu alone (tools/flash_probe.cu): correctness on odd shapes, one CTA
    # per tile and persistent, then sustained against the peer's cuDNN SDPA, alternately, and
    # ragged segments of 2,048 and 1,560 rows
    flash_probe_step
    for round in 1 2; do
      for persist in 1 0; do
        timeout 60 "$OUT/flash_probe" 32760 12 300 176 $persist 2>&1 | tail -2 | cut -c1-200
      done
      timeout 90 python3 tools/peer/sdpa_sustained.py 12 300 2>&1 | tail -1 | cut -c1-200
    done
    for seg in 2048 1560; do
      for persist in 1 0; do
        timeout 60 "$OUT/flash_probe" 131072 40 30 176 $persist 131072 $seg 2>&1 | tail -2 | cut -c1-200
      done
    done
    ;;
  gputests)
    # a fresh machine: build, then the GPU tests and the bench's tests
    build_here mogagen mogagen_bench mogagen_tests || exit 1
    gputests_step
    ;;
  diag13)
    # after train1/train2 (their build): the trained model on both devices, issue 5's 1.3B
    # MoGA forward, then why the 1.3B's attention is slower in its forward (clocks)
    agree_step
    moga13b_step
    clocks
    ;;
  sweep)
    # issue 6: a trained model (carried in .train/model12) over seeds the semantic tests do
    # not use and several sampling settings (tools/train/sweep.sh), for its defaults
    build_here mogagen clip_report || exit 1
    JOBS=12 SWEEP_SECONDS="${SWEEP_SECONDS:-400}" tools/train/sweep.sh "${SWEEP_MODEL:-.train/model12}" "$OUT/sweep" \
      "${SWEEP_SEEDS:-200 201 202 203 204 205}" "" "--guidance 7" "--sampler euler" "--guidance 3.5" \
      "--steps 50" "--shift 5" "--guidance 9" "--shift 2"
    ;;
  moga)
    MOGA_DENSE=1.3b OUT="$OUT" timeout 560 tools/device-check.sh moga >"$OUT/moga.log" 2>&1
    grep -hE "median|attention:|routing \(timed|profile|self-attention|== " "$OUT"/logs/*.log "$OUT/device-check.txt" \
      2>/dev/null | cut -c1-200
    ;;
  peer)
    PEER_PARTS="t5 vae dit13c dit14c" OUT="$OUT" timeout 560 tools/device-check.sh peer >"$OUT/peer-step.log" 2>&1
    grep -hE "== " "$OUT/device-check.txt" | cut -c1-200
    cat "$OUT/peer.json" 2>/dev/null | cut -c1-300
    ;;
  long)
    OUT="$OUT" timeout "${LONG_SECONDS:-400}" tools/device-check.sh long >"$OUT/long.log" 2>&1
    grep -hE "median|decode|peak|== " "$OUT/device-check.txt" | cut -c1-200
    ;;
  *)
    echo "usage: OUT=<folder> tools/device-lease.sh diag|issue5|issue5b|train1|train2|measure|tune|attn|attn2|gputests|diag13|sweep|peer|moga|long" >&2
    exit 2
    ;;
esac
