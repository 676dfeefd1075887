#!/bin/bash
# Dev probe (examples/imitkd/RESULTS.md, "A text student"): a *text* student, reading the gold English transcript
# (src_text) instead of the speech, trained on a demo run's corpus by NLL, word-KD and ImitKD-full from that
# run's expert: does the ranking of the methods change when the student reads text, Lin et al.'s own setting?
# The student has the speech students' decoder and a 3-layer text encoder of the same width; batches, learning
# rate, β hold (half the updates) and checkpoint choice (best greedy dev BLEU) are the small demo's.
#
#   examples/imitkd/probes/text_student.sh DEMO_DIR OUT [UPDATES=1000] [METHODS="nll word_kd imit_kd_CE"] [SEEDS="1 2 3"]
#
# DEMO_DIR: a finished `run_demo.py --size small` output (corpus/, config.yaml, expert/, expert-bin/). Two runs
# at a time, one thread each; resumable (a run with done.json, a decoding with its .hyp, is skipped). Then
# text_student_score.py prints the table (dev BLEU greedy/beam 5, the dev-chosen decoding's test BLEU).
# imitkd-train/imitkd-generate come from PATH (the venv).
set -u
D=${1:?usage: text_student.sh DEMO_DIR OUT [UPDATES] [METHODS] [SEEDS]}
command -v imitkd-train > /dev/null || { echo "error: imitkd-train is not on PATH (activate the venv: . .venv/bin/activate)" >&2; exit 2; }
BIN=$(dirname "$(command -v imitkd-train)")
OUT=${2:?usage: text_student.sh DEMO_DIR OUT [UPDATES] [METHODS] [SEEDS]}; UPD=${3:-1000}; METHODS=${4:-"nll word_kd imit_kd_CE"}; SEEDS=${5:-"1 2 3"}
HOLD=$((UPD/2))
mkdir -p $OUT
train() {  # method seed
  local m=$1 s=$2 dir=$OUT/$1.seed$2
  [ -f $dir/done.json ] && return 0
  mkdir -p $dir
  local extra=()
  case $m in
    nll) extra=(--criterion nll --label-smoothing 0.1);;
    word_kd) extra=(--criterion word_kd);;
    imit_kd_CE) extra=(--criterion imit_kd_CE --beta-hold-updates $HOLD);;
  esac
  [ $m != nll ] && extra+=(--expert $D/expert/checkpoint_best.pt --path $D/expert-bin --expert-sentencepiece-model $D/corpus/spm_joint.model)
  OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore $BIN/imitkd-train $D/corpus --task speech_to_text_kd --config-yaml $D/config.yaml \
    --train-subset train --valid-subset dev --student-src-column src_text \
    --arch transformer --encoder-layers 3 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128 \
    --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 --encoder-attention-heads 4 --decoder-attention-heads 4 \
    --dropout 0.1 --share-all-embeddings --cpu --num-workers 0 --seed $s --no-progress-bar --log-format json \
    --required-batch-size-multiple 1 --optimizer adam --adam-betas '(0.9,0.98)' --lr 0.002 --lr-scheduler inverse_sqrt \
    --warmup-updates 200 --clip-norm 10.0 --max-tokens 10000 --max-update $UPD --validate-interval 100000 \
    --save-interval 100000 --validate-interval-updates $((UPD/5)) --save-interval-updates $((UPD/5)) --keep-interval-updates 1 \
    --no-epoch-checkpoints --log-interval 50 --save-dir $dir "${extra[@]}" \
    --eval-bleu --eval-bleu-args '{"beam": 1, "max_len_a": 0, "max_len_b": 200}' --best-checkpoint-metric bleu \
    --maximize-best-checkpoint-metric > $dir/train.log 2>&1 && echo '{}' > $dir/done.json
}
decode() {  # run split beam
  local dir=$OUT/$1 split=$2 beam=$3 f=$OUT/$1/$2.beam$3.hyp
  [ -s $f ] && return 0
  OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore $BIN/imitkd-generate $D/corpus --task speech_to_text_kd --config-yaml $D/config.yaml \
    --student-src-column src_text --gen-subset $split --path $dir/checkpoint_best.pt --beam $beam --max-tokens 50000 --cpu \
    --num-workers 0 --required-batch-size-multiple 1 --max-len-a 0 --max-len-b 200 > $dir/$split.beam$beam.log 2>&1 &&
  grep '^D-' $dir/$split.beam$beam.log | sed 's/^D-//' | sort -n -k1,1 | cut -f3 > $f.tmp && mv $f.tmp $f
}
job() { train $1 $2 && for sp in dev test; do for b in 1 5; do decode $1.seed$2 $sp $b; done; done; }
pids=()
for s in $SEEDS; do for m in $METHODS; do
  job $m $s &
  pids+=($!)
  if [ ${#pids[@]} -ge 2 ]; then wait ${pids[0]}; pids=("${pids[@]:1}"); fi
done; done
wait
"$BIN/python" "$(dirname "$0")/text_student_score.py" "$D/corpus" "$OUT"
