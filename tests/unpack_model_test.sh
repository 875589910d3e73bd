#!/usr/bin/env bash
# tools/train/unpack_model.sh: rebuilds a model folder from its three copied-out pieces, and
# refuses a missing piece (exit 3, naming the file) and a wrong call (exit 2).
set -uo pipefail
script="$(dirname "$0")/../tools/train/unpack_model.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
mkdir -p "$t/src/model/transformer" "$t/src/model/vae" "$t/out"
echo '{"a": 1}' > "$t/src/model/model_index.json"
tar czf "$t/pieces.tgz" -C "$t/src" model
mkdir -p "$t/pieces"
mv "$t/pieces.tgz" "$t/pieces/rest.tgz"
printf dit > "$t/pieces/dit.safetensors"
printf vae > "$t/pieces/vae.safetensors"
fail() { echo "FAIL: $*"; exit 1; }
"$script" "$t/pieces" "$t/out" >/dev/null || fail "unpack of whole pieces"
[ "$(cat "$t/out/model/transformer/diffusion_pytorch_model.safetensors")" = dit ] || fail "the DiT file"
[ "$(cat "$t/out/model/vae/diffusion_pytorch_model.safetensors")" = vae ] || fail "the VAE file"
[ -f "$t/out/model/model_index.json" ] || fail "the rest of the folder"
rm "$t/pieces/vae.safetensors"
msg=$("$script" "$t/pieces" "$t/out2" 2>&1)
[ $? -eq 3 ] || fail "a missing piece: exit 3 expected"
case "$msg" in *vae.safetensors*missing*) ;; *) fail "the message names the missing file: $msg" ;; esac
"$script" "$t/pieces" >/dev/null 2>&1
[ $? -eq 2 ] || fail "a call without a destination: exit 2 expected"
echo "unpack_model.sh: ok"
