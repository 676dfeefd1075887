#!/bin/bash
# Dev probe (examples/imitkd/RESULTS.md): a finished demo's speech student trained again with extra flags, e.g.
# ImitKD-full whose β decays to a floor instead of to 1/200 (`--beta-base 4`: 0.25 at the last update).
#
#   examples/imitkd/probes/speech_student.sh DEMO_DIR OUT NAME "EXTRA FLAGS" [KEY=imit_kd_CE] [SEEDS="1 2 3"]
#
# Each run is the demo's own command for the student KEY (the first line of DEMO_DIR/students/KEY/train.log:
# same corpus, ASR encoder, expert, batches, schedule and checkpoint choice), with its --seed and --save-dir
# replaced and EXTRA FLAGS appended (fairseq takes the last value of a repeated flag). Each run is then decoded
# on dev and test with greedy search and beam 5 into OUT/NAME.seed<N>/<split>.beam<B>.hyp. Two runs at a time
# (LANES=1: one), one thread each; resumable (a run with done.json, a decoding with its .hyp, is skipped).
# speech_student_score.py prints the dev table beside the demo's own students.
set -u
D=${1:?usage: speech_student.sh DEMO_DIR OUT NAME "EXTRA FLAGS" [KEY] [SEEDS]}
OUT=${2:?}; NAME=${3:?}; EXTRA=${4?}; KEY=${5:-imit_kd_CE}; SEEDS=${6:-"1 2 3"}
command -v imitkd-train > /dev/null || { echo "error: imitkd-train is not on PATH (activate the venv: . .venv/bin/activate)" >&2; exit 2; }
BIN=$(dirname "$(command -v imitkd-train)")
CMD=$(head -n 1 "$D/students/$KEY/train.log")
[ "${CMD:0:2}" = "$ " ] || { echo "error: $D/students/$KEY/train.log does not start with the demo's command" >&2; exit 2; }
read -r -a ARGV <<< "${CMD:2}"  # (the demo's arguments have no spaces, but --eval-bleu-args' JSON: rejoined below)
mkdir -p "$OUT"
train() {  # seed
  local s=$1 dir=$OUT/$NAME.seed$1
  [ -f "$dir/done.json" ] && return 0
  mkdir -p "$dir"
  local args=() i
  for ((i = 1; i < ${#ARGV[@]}; i++)); do  # ARGV[0]: the demo's imitkd-train; this venv's is used
    case ${ARGV[i]} in
      --seed|--save-dir) i=$((i + 1));;
      --eval-bleu-args)  # its JSON, split at its spaces: the words up to the one ending in }
        local json=${ARGV[i+1]}; i=$((i + 1))
        while [ "${json: -1}" != "}" ]; do i=$((i + 1)); json+=" ${ARGV[i]}"; done
        args+=(--eval-bleu-args "$json");;
      *) args+=("${ARGV[i]}");;
    esac
  done
  # shellcheck disable=SC2086  (EXTRA is a list of flags)
  OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore "$BIN/imitkd-train" "${args[@]}" --seed "$s" --save-dir "$dir" $EXTRA \
    > "$dir/train.log" 2>&1 && echo '{}' > "$dir/done.json"
}
decode() {  # seed split beam
  local dir=$OUT/$NAME.seed$1 split=$2 beam=$3 f=$OUT/$NAME.seed$1/$2.beam$3.hyp
  [ -s "$f" ] && return 0
  OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore "$BIN/imitkd-generate" "$D/corpus" --task speech_to_text_kd \
    --config-yaml "$D/config.yaml" --gen-subset "$split" --path "$dir/checkpoint_best.pt" --beam "$beam" --max-tokens 50000 \
    --cpu --num-workers 0 --required-batch-size-multiple 1 --max-len-a 0 --max-len-b 200 > "$dir/$split.beam$beam.log" 2>&1 &&
  grep '^D-' "$dir/$split.beam$beam.log" | sed 's/^D-//' | sort -n -k1,1 | cut -f3 > "$f.tmp" && mv "$f.tmp" "$f"
}
job() { train "$1" && for sp in dev test; do for b in 1 5; do decode "$1" $sp $b; done; done; }
pids=()
for s in $SEEDS; do
  job "$s" &
  pids+=($!)
  if [ ${#pids[@]} -ge "${LANES:-2}" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
wait
"$BIN/python" "$(dirname "$0")/speech_student_score.py" "$D" "$OUT"
