#!/usr/bin/env bash
# First GPU run of torchrec-ple (issue #17; ../shared/reference/cuda-path-review.md, last section).
#
#   bash benchmarks/gpu_check.sh prepare          # on CPU, no GPU time: the CPU references
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # on one GPU, ~10 min: steps 1-6 below
#   bash benchmarks/gpu_check.sh --cpu [OUT_DIR]  # the same steps on CPU with tiny sizes
#
# `prepare` writes runs/gpu_check_prep/ (ignored by git; carry it to the GPU machine): a CPU
# fit of feature_specs/synthetic.yaml and its evaluation, CPU throughputs, and a small click
# log for feature_specs/clicklog.yaml. The GPU run makes it first if it is missing.
#
# Steps (each writes <OUT>/<step>.json and logs/<step>.log; a failing step is recorded and
# the next one runs; the exit status is 1 when any failed):
#   1  stack: torch/CUDA/fbgemm versions; abort unless fbgemm is the CUDA build
#      smoke: the plan per table, memory after sharding, CUDA sync warnings of 3 steady steps
#      with the finite check on and off (train.on_nonfinite_loss), peak memory
#      l2: fbgemm's row-wise Adagrad applies the L2 weight decay (embedding_optimizer)
#   2  eval_cpu_ckpt: the CPU-trained checkpoint evaluated on the GPU equals the CPU evaluation (1e-5)
#   3  fit fp32 (AUC within 0.01 of the CPU run), bf16, fused Adam on synthetic.yaml; fp32 on
#      clicklog.yaml (streamed, 10M-row user table); samples/s and peak memory vs the plan
#   4  resume: a fit stopped at step 100 and resumed equals the uninterrupted GPU fit (1e-4)
#   5  plain: a plain-PyTorch PLE at the same sizes on the GPU (fp32, bf16): the yardstick
#   6  on CPU (CUDA_VISIBLE_DEVICES=): evaluate the GPU run (equal to 1e-5), export it, predict
#      on CPU and with --device cuda (equal scores)
# Then a summary table (summary.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY="${PY:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

MODE=gpu
if [[ "${1:-}" == "prepare" ]]; then MODE=prepare; shift; fi
if [[ "${1:-}" == "--cpu" ]]; then MODE=cpu; shift; fi
PREP="${PREP:-runs/gpu_check_prep}"
if [[ "$MODE" == cpu ]]; then PREP="${1:-${OUT:-runs/gpu_check_cpu}}/prep"; fi
OUT_DIR="${1:-${OUT:-runs/gpu_check}}"
[[ "$MODE" == prepare ]] && OUT_DIR="$PREP"
mkdir -p "$OUT_DIR/logs" "$PREP"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PREP="$(cd "$PREP" && pwd)"

SYN=feature_specs/synthetic.yaml
CLICK=feature_specs/clicklog.yaml
QUIET=(--set train.progress=false --set train.tensorboard=false)
if [[ "$MODE" == cpu ]]; then
  # 6000 rows / 512: 12 steps an epoch; a 100k-row user table instead of 10M
  SYN_SET=(--set data.synthetic.train_rows=6000 --set data.synthetic.validation_rows=2000)
  HALF=6
  CLICK_ROWS=20000
  CLICK_SET=(--set 'features[0].hash_buckets=100000' --set train.batch_size=1024)
  PLAIN_STEPS=20
  SMOKE_STEPS=(--warmup 2 --steps 2)
else
  SYN_SET=()  # the spec's 100k rows / 512: 196 steps in one epoch
  HALF=100
  CLICK_ROWS=300000
  CLICK_SET=()
  PLAIN_STEPS=300
  SMOKE_STEPS=(--warmup 5 --steps 3)
fi
FIT_SET=("${QUIET[@]}" "${SYN_SET[@]}" --set train.epochs=1)
CLICK_DATA=(--set "data.train.path=$PREP/clicklog/train" --set "data.validation.path=$PREP/clicklog/validation")

STEPS_TSV="$OUT_DIR/steps.tsv"
: > "$STEPS_TSV"
FAILED=0

# step NAME COMMAND...: run it, its output to logs/NAME.log; record ok/FAILED and seconds.
step() {
  local name="$1"; shift
  local t0=$SECONDS status=ok
  echo "== $name: $*"
  if "$@" > "$OUT_DIR/logs/$name.log" 2>&1; then status=ok; else status=FAILED; FAILED=1; fi
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >> "$STEPS_TSV"
  tail -n 2 "$OUT_DIR/logs/$name.log" | sed 's/^/   /'
  [[ "$status" == ok ]]
}
ple() { "$PY" -m torchrec_ple "$@"; }
check() { "$PY" -m benchmarks.gpu_check "$@"; }
on_cpu() { CUDA_VISIBLE_DEVICES= "$@"; }
# evaluate RUN JSON: the run's validation metrics as evaluate --json writes them
evaluate() { ple evaluate --checkpoint "$1" --json > "$2"; }

prepare() {
  local dir="$PREP"
  mkdir -p "$dir"
  step prep_cpu_fit on_cpu ple fit "$SYN" --out "$dir/cpu" --overwrite "${FIT_SET[@]}" || true
  step prep_cpu_eval on_cpu evaluate "$dir/cpu" "$dir/cpu_eval.json" || true
  rm -rf "$dir/clicklog"
  step prep_clicklog on_cpu ple generate-clicklog --rows "$CLICK_ROWS" --out "$dir/clicklog" || true
  step prep_cpu_clicklog on_cpu ple fit "$CLICK" --out "$dir/cpu_click" --overwrite \
    "${QUIET[@]}" "${CLICK_DATA[@]}" "${CLICK_SET[@]}" --set train.max_steps=20 || true
  step prep_cpu_plain on_cpu check plain --device cpu --steps 20 --out "$dir/cpu_plain.json" || true
}

if [[ "$MODE" == prepare ]]; then
  prepare
  check summary "$OUT_DIR" || true
  exit "$FAILED"
fi
if [[ ! -f "$PREP/cpu_eval.json" || ! -d "$PREP/clicklog" ]]; then
  echo "== no $PREP: preparing the CPU references first (CPU time)"
  prepare
fi

if [[ "$MODE" == cpu ]]; then
  DEV=cpu; RUN=on_cpu
else
  DEV=cuda; RUN=
fi
R="$OUT_DIR/runs"
mkdir -p "$R"

# 1. the stack, the plan and the syncs
if [[ "$MODE" == gpu ]]; then
  step stack check stack --require-cuda --out "$OUT_DIR/stack.json" || {
    check summary "$OUT_DIR" || true
    echo "fbgemm-gpu is not the CUDA build (or no GPU): nothing to check on this machine"
    exit 1
  }
else
  step stack on_cpu check stack --out "$OUT_DIR/stack.json" || true
fi
step smoke $RUN check smoke "$SYN" "${SYN_SET[@]}" "${SMOKE_STEPS[@]}" --out "$OUT_DIR/smoke.json" || true
step l2 $RUN check l2 --device "$DEV" --out "$OUT_DIR/l2.json" || true

# 2. the CPU-trained checkpoint on this device
step eval_cpu_ckpt $RUN evaluate "$PREP/cpu" "$OUT_DIR/eval_cpu_ckpt_on_$DEV.raw.json" || true
step eval_cpu_ckpt_same check same "$PREP/cpu_eval.json" "$OUT_DIR/eval_cpu_ckpt_on_$DEV.raw.json" \
  --tol 1e-5 --out "$OUT_DIR/eval_cpu_ckpt_same.json" || true

# 3. fits on this device
step fit_fp32 $RUN ple fit "$SYN" --out "$R/fp32" --overwrite "${FIT_SET[@]}" \
  --set "train.checkpoint_every=$HALF" || true
step fit_fp32_finite check finite "$R/fp32/metrics.json" --out "$OUT_DIR/fit_fp32_finite.json" || true
step fit_fp32_near_cpu check near "$R/fp32/metrics.json" "$PREP/cpu/metrics.json" --tol 0.01 \
  --out "$OUT_DIR/fit_fp32_near_cpu.json" || true
step fit_bf16 $RUN ple fit "$SYN" --out "$R/bf16" --overwrite "${FIT_SET[@]}" \
  --set train.precision=bf16 || true
step fit_bf16_finite check finite "$R/bf16/metrics.json" --out "$OUT_DIR/fit_bf16_finite.json" || true
if [[ "$MODE" == gpu ]]; then
  step fit_adam $RUN ple fit "$SYN" --out "$R/adam" --overwrite "${FIT_SET[@]}" \
    --set train.embedding_optimizer.type=adam --set train.embedding_optimizer.lr=0.001 || true
  step fit_adam_finite check finite "$R/adam/metrics.json" --out "$OUT_DIR/fit_adam_finite.json" || true
  step fit_adam_near_cpu check near "$R/adam/metrics.json" "$PREP/cpu/metrics.json" --tol 0.03 \
    --out "$OUT_DIR/fit_adam_near_cpu.json" || true
fi
step fit_clicklog $RUN ple fit "$CLICK" --out "$R/click" --overwrite "${QUIET[@]}" \
  "${CLICK_DATA[@]}" "${CLICK_SET[@]}" || true
step fit_clicklog_finite check finite "$R/click/metrics.json" --out "$OUT_DIR/fit_clicklog_finite.json" || true

# 4. resume: stopped at step HALF, resumed to the epoch's end = the uninterrupted run
step resume_first $RUN ple fit "$SYN" --out "$R/resumed" --overwrite "${FIT_SET[@]}" \
  --set "train.max_steps=$HALF" || true
step resume_rest $RUN ple fit "$SYN" --out "$R/resumed" --resume "${FIT_SET[@]}" \
  --set train.max_steps=100000 || true
step resume_same check same "$R/resumed/metrics.json" "$R/fp32/metrics.json" --tol 1e-4 \
  --out "$OUT_DIR/resume_same.json" || true

# 5. the yardstick: a plain-PyTorch PLE at the same sizes, batches already on the device
step plain_fp32 $RUN check plain --device "$DEV" --steps "$PLAIN_STEPS" --out "$OUT_DIR/plain_fp32.json" || true
step plain_bf16 $RUN check plain --device "$DEV" --steps "$PLAIN_STEPS" --precision bf16 \
  --out "$OUT_DIR/plain_bf16.json" || true

# 6. the GPU-written run on CPU: evaluate, export, predict (and predict on the GPU)
step cpu_eval_of_run on_cpu evaluate "$R/fp32" "$OUT_DIR/cpu_eval_of_run.raw.json" || true
step cpu_eval_of_run_same check same "$OUT_DIR/cpu_eval_of_run.raw.json" "$R/fp32/metrics.json" \
  --tol 1e-5 --out "$OUT_DIR/cpu_eval_of_run_same.json" || true
step export on_cpu ple export --checkpoint "$R/fp32" --out "$R/fp32_model" --overwrite || true
VALID="$R/valid.parquet"
step valid_rows check rows "$SYN" "${SYN_SET[@]}" --out "$VALID" || true
step predict_cpu on_cpu ple predict --checkpoint "$R/fp32_model" --input "$VALID" \
  --output "$R/scores_cpu.parquet" || true
step predict_dev $RUN ple predict --checkpoint "$R/fp32_model" --input "$VALID" \
  --output "$R/scores_$DEV.parquet" --device "$DEV" || true
step predict_same check scores "$R/scores_cpu.parquet" "$R/scores_$DEV.parquet" --tol 1e-5 \
  --out "$OUT_DIR/predict_same.json" || true

# throughputs beside the CPU references
for name in cpu_fit:"$PREP/cpu/metrics.json" cpu_clicklog:"$PREP/cpu_click/metrics.json"; do
  check finite "${name#*:}" --out "$OUT_DIR/ref_${name%%:*}.json" > /dev/null 2>&1 || true
done
cp "$PREP/cpu_plain.json" "$OUT_DIR/ref_cpu_plain.json" 2>/dev/null || true

echo
check summary "$OUT_DIR" || true
exit "$FAILED"
