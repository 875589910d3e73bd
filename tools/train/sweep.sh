#!/usr/bin/env bash
# A trained model's semantic tests over many seeds and sampling settings: the eight
# single-colour prompts of tests/test_default_model.cpp and its shot list
# (configs/shapes-shots.json), each rendered with every setting and seed given, read the
# way the tests read them (tools/clip_report.cpp) and with MoGA's worst routing share from
# the --verbose report. For choosing a model's sampling defaults on seeds the tests do not
# use (docs/training.md), on the GPU machine, several renders at a time.
#
#   tools/train/sweep.sh MODEL_DIR OUT_DIR "SEEDS" SETTING [SETTING ...]
#   e.g. tools/train/sweep.sh .train/model $OUT/sweep "200 201 202" "--guidance 5" "--sampler euler --guidance 5"
#
# A SETTING is a string of mogagen flags. Environment: BUILD (build), DEVICE (cuda), JOBS
# (parallel renders, 8), SWEEP_SECONDS (renders still queued then are dropped). Writes
# OUT_DIR/results.tsv (a line a render), OUT_DIR/summary.txt (a line a setting) and
# OUT_DIR/logs.tgz (every render's log); prints the summary.
set -uo pipefail
if [ $# -lt 4 ]; then
  sed -n 2,15p "$0" | cut -c3- >&2
  exit 2
fi
model=$1 out=$2 seeds=$3
shift 3
BUILD=${BUILD:-build} DEVICE=${DEVICE:-cuda} JOBS=${JOBS:-8}
for f in "$BUILD/mogagen" "$BUILD/clip_report"; do
  [ -x "$f" ] || { echo "sweep: $f is not built" >&2; exit 3; }
done
[ -f "$model/model_index.json" ] || { echo "sweep: $model/model_index.json not found" >&2; exit 3; }
size=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['_mogagen']['defaults']['size'])" \
  "$model/model_index.json" 2>/dev/null) || { echo "sweep: $model/model_index.json has no _mogagen.defaults.size" >&2; exit 3; }
W=${size%x*} H=${size#*x}
shots_file="$(cd "$(dirname "$0")/../.." && pwd)/configs/shapes-shots.json"
mkdir -p "$out/r"

# the test's prompts: caption|colour|dx|dy (the motion's expected sign, 0: not checked)
PROMPTS=(
  "a red circle moves right on a black background|red|1|0"
  "a orange square moves left on a blue background|orange|-1|0"
  "a yellow triangle moves up on a gray background|yellow|0|-1"
  "a green circle moves down on a white background|green|0|1"
  "a cyan square grows on a black background|cyan|0|0"
  "a blue triangle moves right on a white background|blue|1|0"
  "a purple circle shrinks on a gray background|purple|0|0"
  "a white square moves left on a green background|white|-1|0"
)

# a KEY=value field of a clip_report line: field KEY LINE
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }

# one render: SETTING_INDEX PROMPT_INDEX (8: the shot list) SEED -> one results line
one() {
  local si=$1 pi=$2 seed=$3
  local setting=${SETTINGS[$si]} tag="s${si}_p${pi}_seed${seed}"
  local rgb="$out/r/$tag.rgb" log="$out/r/$tag.log"
  local args
  if [ "$pi" = 8 ]; then
    args=(--shots "$shots_file")
  else
    args=(-p "${PROMPTS[$pi]%%|*}")
  fi
  # shellcheck disable=SC2086  # a setting is a string of flags
  "$BUILD/mogagen" --model "$model" --device "$DEVICE" -v --seed "$seed" "${args[@]}" $setting \
    --dump-rgb "$rgb" >"$log" 2>&1
  local rc=$?
  local worst
  worst=$(grep -oE "largest [0-9.]+x fair share" "$log" | awk '{v=$2+0; if (v>m) m=v} END {printf "%.2f", m}')
  if [ $rc -ne 0 ]; then
    printf '%s\t%s\t%s\trender failed (exit %s)\n' "$si" "$pi" "$seed" "$rc"
    return
  fi
  if [ "$pi" = 8 ]; then
    # shots: red 0-17, green 17-33, blue 33-49; shot 1 moves right
    local ok=1 cols="" dx=""
    local b=(0 17 33 49) want=(red green blue)
    for s in 0 1 2; do
      local rep c
      rep=$("$BUILD/clip_report" "$rgb" "$W" "$H" "${b[$s]}" "${b[$((s + 1))]}")
      c=$(field colour "$rep")
      [ "$s" = 0 ] && dx=$(field dx "$rep")
      cols="$cols$c,"
      [ "$c" = "${want[$s]}" ] || ok=0
    done
    local mok
    mok=$(awk -v d="$dx" 'BEGIN {print (d > 0.3) ? 1 : 0}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$si" "$pi" "$seed" "${cols%,}" "$ok" "dx=$dx" "$mok" "$worst"
  else
    IFS='|' read -r _ want dxs dys <<<"${PROMPTS[$pi]}"
    local rep c dx dy
    rep=$("$BUILD/clip_report" "$rgb" "$W" "$H")
    c=$(field colour "$rep")
    dx=$(field dx "$rep")
    dy=$(field dy "$rep")
    local cok=0 mok
    [ "$c" = "$want" ] && cok=1
    mok=$(awk -v x="$dx" -v y="$dy" -v sx="$dxs" -v sy="$dys" \
      'BEGIN {ok = 1; if (sx != 0 && sx * x <= 0.3) ok = 0; if (sy != 0 && sy * y <= 0.3) ok = 0; print ok}')
    printf '%s\t%s\t%s\t%s\t%s\tdx=%s,dy=%s\t%s\t%s\n' "$si" "$pi" "$seed" "$c" "$cok" "$dx" "$dy" "$mok" "$worst"
  fi
  rm -f "$rgb"
}

SETTINGS=("$@")
export -f one field
export BUILD DEVICE model out shots_file W H
# arrays do not export: pass them as strings
export SETTINGS_STR PROMPTS_STR
SETTINGS_STR=$(printf '%s\n' "${SETTINGS[@]}")
PROMPTS_STR=$(printf '%s\n' "${PROMPTS[@]}")
jobs_list() {
  for si in "${!SETTINGS[@]}"; do
    for seed in $seeds; do
      for pi in 0 1 2 3 4 5 6 7 8; do echo "$si $pi $seed"; done
    done
  done
}
t0=$SECONDS
jobs_list | timeout "${SWEEP_SECONDS:-1000000}" xargs -P "$JOBS" -L 1 bash -c \
  'mapfile -t SETTINGS <<<"$SETTINGS_STR"; mapfile -t PROMPTS <<<"$PROMPTS_STR"; one "$@"' _ \
  | sort -t$'\t' -k1,1n -k2,2n -k3,3n >"$out/results.tsv"
echo "sweep: $(wc -l <"$out/results.tsv") renders in $((SECONDS - t0)) s" >"$out/summary.txt"
# per setting: colour right, motion right (prompts that name one), shot lists right, worst share
awk -F'\t' -v n="${#SETTINGS[@]}" '
  NR == FNR { name[FNR - 1] = $0; next }
  $4 ~ /^render failed/ { fail[$1]++; next }
  $2 < 8 { col[$1] += $5; ncol[$1]++
           if ($2 != 4 && $2 != 6) { mot[$1] += $7; nmot[$1]++ }
           if ($8 + 0 > 2.0) { over[$1]++ } if ($8 + 0 > worst[$1]) worst[$1] = $8 + 0 }
  $2 == 8 { shots[$1] += ($5 && $7); nshots[$1]++; if ($8 + 0 > 2.0) over[$1]++
            if ($8 + 0 > worst[$1]) worst[$1] = $8 + 0 }
  END { for (s = 0; s < n; s++)
          printf "setting %d [%s]: colour %d/%d, motion %d/%d, shot lists %d/%d, renders over 2x %d, worst share %.2f, failed %d\n",
                 s, name[s], col[s], ncol[s], mot[s], nmot[s], shots[s], nshots[s], over[s], worst[s], fail[s] }
' <(printf '%s\n' "${SETTINGS[@]}") "$out/results.tsv" >>"$out/summary.txt"
tar czf "$out/logs.tgz" -C "$out" r && rm -rf "$out/r"
cat "$out/summary.txt"
