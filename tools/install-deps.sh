#!/usr/bin/env bash
# Installs the Debian 12 packages mogagen builds and runs with. Idempotent; needs root
# (or sudo). The CUDA toolkit (nvcc, cuBLAS, cuDNN) is optional and not installed here.
set -euo pipefail
PKGS=(build-essential cmake pkg-config git
      libopenblas-dev nlohmann-json3-dev libspdlog-dev libcli11-dev libgtest-dev
      libsentencepiece-dev
      libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libx264-dev zlib1g-dev ffmpeg)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
