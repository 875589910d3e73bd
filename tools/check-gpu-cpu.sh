#!/usr/bin/env bash
# Renders the same job with the same seed on the CPU and on the GPU with a tiny random model
# (dense, then MoGA) and prints the PSNR between the two decoded videos (raw RGB frames, so
# no FFmpeg is needed); fails below 30 dB (issue 4's bar). Usage: tools/check-gpu-cpu.sh [BUILD_DIR]
set -euo pipefail
B="${1:-build}"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
for cfg in tiny-t2v tiny-moga-t2v; do
  "$B/mogagen" make-random-model --config "configs/$cfg.json" --seed 11 -o "$T/$cfg" >/dev/null 2>&1
  for dev in cpu cuda; do
    "$B/mogagen" --model "$T/$cfg" --device "$dev" --size 128x96 --frames 17 --steps 10 --seed 5 \
      -p "a red circle moves left on a blue background" --dump-rgb "$T/$cfg.$dev.rgb" -q
  done
  python3 - "$T/$cfg.cpu.rgb" "$T/$cfg.cuda.rgb" "$cfg" <<'PY'
import math, sys
a = open(sys.argv[1], "rb").read(); b = open(sys.argv[2], "rb").read()
assert len(a) == len(b) and len(a) > 0, (len(a), len(b))
mse = sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)
psnr = 99.0 if mse == 0 else 10 * math.log10(255 * 255 / mse)
print(f"{sys.argv[3]}: {len(a) // (128 * 96 * 3)} frames, CPU vs GPU PSNR {psnr:.2f} dB")
if psnr < 30.0:
    sys.exit(f"{sys.argv[3]}: CPU and GPU renders differ: {psnr:.2f} dB, below 30 dB")
PY
done
