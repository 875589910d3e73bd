#!/usr/bin/env bash
# Rebuilds a model folder copied out of the device machine in three pieces (the copy-out
# limits: tools/device-lease.sh train2 and device-check.sh model write them):
#   tools/train/unpack_model.sh <the call's files folder>/model <destination folder>
# then, for the semantic tests on the CPU (about 5 minutes on two cores):
#   MOGAGEN_TEST_MODEL=<destination>/model build/mogagen_tests --gtest_filter='DefaultModel.*'
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 <copied-out model folder: dit.safetensors, vae.safetensors, rest.tgz> <destination>" >&2
  exit 2
fi
src=$1
dst=$2
for f in dit.safetensors vae.safetensors rest.tgz; do
  [ -f "$src/$f" ] || { echo "$0: $src/$f is missing" >&2; exit 3; }
done
mkdir -p "$dst"
rm -rf "$dst/model"
tar xzf "$src/rest.tgz" -C "$dst"
mkdir -p "$dst/model/transformer" "$dst/model/vae"
cp "$src/dit.safetensors" "$dst/model/transformer/diffusion_pytorch_model.safetensors"
cp "$src/vae.safetensors" "$dst/model/vae/diffusion_pytorch_model.safetensors"
echo "model rebuilt in $dst/model"
