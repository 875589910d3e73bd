#!/usr/bin/env bash
# One command on a fresh Debian 12 machine: install what is needed, build, and render the
# default job (a multi-shot example with the default model in models/, on the CPU unless a
# GPU is present). The video lands in out/example.mp4 with a contact sheet out/example.png.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/build.sh -DMOGAGEN_TESTS=OFF "$@"
mkdir -p out
MODEL_ARGS=()
SHOTS=configs/shapes-shots.json
if [ ! -f models/default/model_index.json ]; then
  # No default model in this checkout (models/default, docs/training.md): render with a
  # random-weight tiny model so the whole pipeline still runs end to end (the video is
  # noise-like, not a picture).
  if [ ! -f out/tiny-model/model_index.json ]; then
    rm -rf out/tiny-model
    build/mogagen make-random-model --config configs/tiny-t2v.json --seed 1 -o out/tiny-model
  fi
  MODEL_ARGS=(--model out/tiny-model --size 160x96 --steps 10)
  SHOTS=configs/example-shots.json
fi
build/mogagen --shots "$SHOTS" "${MODEL_ARGS[@]}" -o out/example.mp4 --preview out/example.png
echo "setup: rendered out/example.mp4 (contact sheet: out/example.png)"
