#!/usr/bin/env bash
# r1kit-tiny from nothing, with r1kit's own commands: the R1 pipeline in miniature on a laptop CPU.
#
#   recipes/tiny.sh            the full run (see docs/r1kit-tiny.md for its time on 2 CPU cores)
#   recipes/tiny.sh --quick    every stage at a reduced size, in a few minutes (CI runs it)
#
# Stages (each skipped when its output exists, so an interrupted run continues where it stopped):
#   0 init      a random DeepSeek-V3 (MLA + DeepSeekMoE) and a tokenizer trained on the tasks' text
#   1 base      base training on problem/answer text: no reasoning traces
#   2 sft       cold-start SFT on step-by-step traces inside <think> (arithmetic, countdown, reasoning-gym chain_sum)
#     direct    the baseline: the same problems and steps, trained to answer at once (empty thinking block)
#   3 grpo      GRPO with accuracy + format rewards on harder problems (more digits, more numbers, more terms)
#   4 distill   r1kit-tiny's verified traces (rejection sampling) train a dense Qwen2 student half its size
#   5 eval      every stage on held-out problems with `r1kit eval`; then the model card
# Outputs go to $OUT (default runs/tiny, runs/tiny-quick with --quick). SHIP=1 copies the models into
# r1kit/assets/ and the card into docs/r1kit-tiny.md (how the shipped r1kit-tiny was made).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
R1KIT=${R1KIT:-"python3 -m r1kit"}
SEED=${SEED:-0}
export TOKENIZERS_PARALLELISM=false

if [ "$QUICK" = 1 ]; then
  OUT=${OUT:-runs/tiny-quick}
  TEACHER=(--model-type deepseek_v3 --preset tiny);  STUDENT=(--model-type qwen2 --preset tiny)
  N_TRAIN=300; BASE_STEPS=30; SFT_STEPS=${SFT_STEPS:-150}; GRPO_STEPS=${GRPO_STEPS:-16}; STUDENT_STEPS=80
  GRPO=(--prompts-per-step 8 --num-generations 8 --max-completion-length 96 --lr ${GRPO_LR:-3e-4})
  N_EVAL=16; N_SAMPLES=4; DISTILL_PROMPTS=64; DISTILL_SAMPLES=4
else
  OUT=${OUT:-runs/tiny}
  TEACHER=(--model-type deepseek_v3 --preset r1kit-tiny);  STUDENT=(--model-type qwen2 --preset r1kit-tiny-student)
  N_TRAIN=30000; BASE_STEPS=200; SFT_STEPS=${SFT_STEPS:-1000}; GRPO_STEPS=${GRPO_STEPS:-80}; STUDENT_STEPS=${STUDENT_STEPS:-1200}
  # Dynamic sampling (DAPO): groups whose samples all get the same reward teach nothing, so more prompts are drawn
  # until the step has 16 groups that do.
  GRPO=(--prompts-per-step 16 --num-generations 8 --max-completion-length 256 --lr ${GRPO_LR:-5e-5} --dynamic-sampling)
  # One sample per distillation prompt: more distinct problems for the student than several samples of fewer.
  N_EVAL=${N_EVAL:-50}; N_SAMPLES=8; DISTILL_PROMPTS=19200; DISTILL_SAMPLES=1
fi
MAX_TOKENS=320; [ "$QUICK" = 1 ] && MAX_TOKENS=160   # most of the time of --quick is evaluating models that ramble to the limit
# One example per row (no packing): every example starts at position 0 with nothing else in its context, as at
# inference; packed rows let examples attend to each other, and a tiny model learned much more slowly from them.
TRAIN=(--lr 3e-3 --batch-size 32 --max-seq-len 384 --no-packing --warmup-steps 30 --min-lr-ratio 0.1 --num-examples 0
       --seed "$SEED")

# The task families. Training problems come from the train split, evaluation problems from the test split: every
# problem is assigned to one split by a hash of its content, so no evaluated problem is in any training set.
if [ "$QUICK" = 1 ]; then   # smaller problems, so that a 0.25M model learns something in a minute
  ADD="arithmetic?ops=+&digits=1&min_digits=1&phrasing=varied"
  ADD_HARD="arithmetic?ops=+&digits=2&min_digits=2&phrasing=varied"
  CD="countdown?numbers=2&max_value=10&max_target=100"
  CD_HARD="countdown?numbers=3&max_value=10&max_target=100"
  CS="reasoning_gym:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1"
  CS_HARD="reasoning_gym:chain_sum?min_terms=3&max_terms=3&min_digits=1&max_digits=1"
else
  ADD="arithmetic?ops=+&digits=3&min_digits=1&phrasing=varied"
  ADD_HARD="arithmetic?ops=+&digits=4&min_digits=4&phrasing=varied"
  CD="countdown?numbers=3&max_value=10&max_target=100"
  CD_HARD="countdown?numbers=4&max_value=10&max_target=100"
  CS="reasoning_gym:chain_sum?min_terms=2&max_terms=4&min_digits=1&max_digits=1"
  CS_HARD="reasoning_gym:chain_sum?min_terms=5&max_terms=6&min_digits=1&max_digits=1"
fi
FAMILIES=("$ADD" "$CD" "$CS")
HARD=("$ADD_HARD" "$CD_HARD" "$CS_HARD")
# GRPO's problems (and the "harder" held-out set): harder than most of the SFT data, and within reach: GRPO learns
# only from groups where some sample is right, so a family is in it when the cold-start model's held-out pass@8 is
# above 0 (r1kit eval, n=8, T=0.6): 3-digit sums (the SFT mix is mostly 1-2 digits; pass@8 0.96), 4-digit sums (0.12)
# and 5-6 term chains (0.38). 4-number countdown (pass@8 0: no signal) is evaluated but not trained on.
if [ "$QUICK" = 1 ]; then RL=("${HARD[@]}")
else RL=("arithmetic?ops=+&digits=3&min_digits=3&phrasing=varied" "$ADD_HARD" "$CS_HARD"); fi

n() { echo $(( N_TRAIN * $1 / 100 )); }   # a share of N_TRAIN
# SFT mixture: mostly the standard problems, a few hard ones (GRPO needs a model that is sometimes right on them),
# with and without the R1 instruction (users ask "What is 12 + 30?" without it).
SFT_TASKS=()
for spec in "${FAMILIES[@]}"; do
  SFT_TASKS+=(--task "$spec&n=$(n 20)&seed=1" --task "$spec&n=$(n 8)&seed=2&template=plain")
done
for spec in "${HARD[@]}"; do SFT_TASKS+=(--task "$spec&n=$(n 5)&seed=3"); done
BASE_TASKS=("${SFT_TASKS[@]}")
GRPO_TASKS=()
for spec in "${RL[@]}"; do GRPO_TASKS+=(--task "$spec&n=$(n 20)&seed=4"); done
EVAL_TASKS=() HARD_EVAL=()
for spec in "${FAMILIES[@]}"; do EVAL_TASKS+=(--task "$spec&n=$N_EVAL&split=test"); done
for spec in "${RL[@]}"; do EVAL_TASKS+=(--task "$spec&n=$N_EVAL&split=test"); HARD_EVAL+=("$spec&n=$N_EVAL&split=test"); done
for spec in "${HARD[@]}"; do [[ " ${RL[*]} " == *" $spec "* ]] || EVAL_TASKS+=(--task "$spec&n=$N_EVAL&split=test"); done

stage() { echo; echo "== $1"; }
mkdir -p "$OUT"
# The run's task specs, kept beside the models (r1kit demo and the tests read the held-out "eval" sets from it).
python3 -c 'import json, sys
groups, key = {}, None
for a in sys.argv[2:]:
    if a.startswith("@"): key = a[1:]; groups[key] = []
    elif a != "--task": groups[key].append(a)
json.dump(groups, open(sys.argv[1], "w"), indent=1)' "$OUT/r1kit_tasks.json" @base "${BASE_TASKS[@]}" @sft "${SFT_TASKS[@]}" \
  @grpo "${GRPO_TASKS[@]}" @eval "${EVAL_TASKS[@]}" @hard "${HARD_EVAL[@]}"
done_() { [ -f "$1/config.json" ]; }
START=$(date +%s)

stage "0 init: random r1kit-tiny architecture + tokenizer -> $OUT/init, $OUT/student-init"
done_ "$OUT/init" || $R1KIT init --out "$OUT/init" "${TEACHER[@]}" "${SFT_TASKS[@]}" --seed "$SEED"
done_ "$OUT/student-init" || $R1KIT init --out "$OUT/student-init" "${STUDENT[@]}" "${SFT_TASKS[@]}" --seed "$SEED"

stage "1 base: problem/answer text, no reasoning -> $OUT/base/final"
done_ "$OUT/base/final" || $R1KIT train sft --model "$OUT/init" --out "$OUT/base" "${BASE_TASKS[@]}" \
  --task-target text --max-steps "$BASE_STEPS" "${TRAIN[@]}"

stage "2 cold-start SFT on reasoning traces -> $OUT/sft/final"
# Stages 2-5 use both cores: SFT alone with two threads (twice as fast as one thread beside another job), then GRPO
# with one thread beside a second lane that trains the direct-answer baseline and evaluates the earlier stages.
# (Two 2-thread processes on 2 cores fight over both and slow down several times; one thread each does not.)
sft_run() {  # sft_run NAME TARGET
  done_ "$OUT/$1/final" || $R1KIT train sft --model "$OUT/base/final" --out "$OUT/$1" \
    "${SFT_TASKS[@]}" --task-target "$2" --max-steps "$SFT_STEPS" --save-every 100 --resume auto "${TRAIN[@]}" \
    >"$OUT/$1.log" 2>&1 || { echo "$1 failed: see $OUT/$1.log"; return 1; }
}
evaluate() {  # evaluate STAGE
  $R1KIT eval --model "$OUT/$1/final" "${EVAL_TASKS[@]}" -n "$N_SAMPLES" --temperature 0.6 --top-p 0.95 \
    --max-tokens "$MAX_TOKENS" --seed "$SEED" --out "$OUT/eval/$1" --no-progress >/dev/null
  echo "evaluated $1 -> $OUT/eval/$1/results.json"
}
sft_run sft reasoning

stage "3 GRPO on harder problems, accuracy + format rewards -> $OUT/grpo/final
   beside it: direct-answer baseline -> $OUT/direct/final (log: $OUT/direct.log), eval of base, sft, direct"
export OMP_NUM_THREADS=1
{ sft_run direct direct && for m in base sft direct; do evaluate "$m"; done; } & lane=$!
done_ "$OUT/grpo/final" || $R1KIT train grpo --model "$OUT/sft/final" --out "$OUT/grpo" "${GRPO_TASKS[@]}" \
  --reward accuracy:1.0,format:0.2 --max-steps "$GRPO_STEPS" "${GRPO[@]}" --temperature 1.0 --beta 0 \
  --loss-type dr_grpo --seed "$SEED" --save-every 20
$R1KIT plot "$OUT/grpo" >/dev/null
wait "$lane"
unset OMP_NUM_THREADS

stage "4 distill: verified traces of r1kit-tiny -> $OUT/traces.jsonl -> student $OUT/student/final"
DISTILL_TASKS=()
for spec in "${FAMILIES[@]}" "${RL[@]}"; do DISTILL_TASKS+=(--task "$spec&n=$(( DISTILL_PROMPTS / 6 ))&seed=5"); done
$R1KIT distill --teacher "$OUT/grpo/final" "${DISTILL_TASKS[@]}" --samples-per-prompt "$DISTILL_SAMPLES" --keep shortest \
  --max-tokens "$MAX_TOKENS" --temperature 0.6 --out "$OUT/traces.jsonl" --no-progress
done_ "$OUT/student/final" || $R1KIT train sft --model "$OUT/student-init" --out "$OUT/student" \
  --data "$OUT/traces.jsonl" --max-steps "$STUDENT_STEPS" "${TRAIN[@]}"

stage "5 eval: GRPO and the student on held-out problems (the rest ran beside GRPO) -> $OUT/eval/<stage>"
for m in grpo student; do evaluate "$m"; done
python3 recipes/tiny_card.py "$OUT" --minutes $(( ($(date +%s) - START) / 60 ))
echo "model card -> $OUT/model_card.md"

if [ "${SHIP:-0}" = 1 ]; then
  for pair in grpo:r1kit-tiny student:r1kit-tiny-distill direct:r1kit-tiny-direct; do
    src="$OUT/${pair%%:*}/final"; dst="r1kit/assets/${pair##*:}"
    rm -rf "$dst" && mkdir -p "$dst"
    cp "$src"/*.json "$src"/*.safetensors "$dst"/
    cp "$OUT/r1kit_tasks.json" "$dst"/
  done
  mkdir -p docs/img/r1kit-tiny && cp "$OUT/model_card.md" docs/r1kit-tiny.md && cp "$OUT"/card/*.png docs/img/r1kit-tiny/
  echo "shipped: r1kit/assets/{r1kit-tiny,r1kit-tiny-distill,r1kit-tiny-direct}, docs/r1kit-tiny.md"
fi
echo "done in $(( ($(date +%s) - START) / 60 )) min"
