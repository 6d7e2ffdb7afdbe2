#!/usr/bin/env bash
# One short GPU check of ablate's trainers and generation backend (perf/RESULTS.md, "GPU check").
# Every Python step runs as a module (`python -m perf.NAME`) from the repository root.
#
# On a GPU machine (repo root, with the ignored .whl/ and .gpu/ present):   bash perf/gpu_check.sh
# Here on the CPU, the same steps at toy size (~2-3 minutes):   bash perf/gpu_check.sh --cpu-smoke
#
# Steps, most important first, each under its own `timeout` and inside an overall budget
# (GPU_CHECK_BUDGET seconds from the start; a step that no longer fits is skipped):
#   0. install the wheels in .whl/ into /tmp/site             (skipped without .whl or with
#                                                              GPU_CHECK_SKIP_WHEELS=1)
#   1. nvidia-smi, versions, device, imports -> $OUT/env_gpu.json   (stops the check on failure)
#   2. a random-weight Llama of SmolLM2-1.7B's shape in /tmp, SmolLM2's tokenizer from
#      .gpu/tokenizer/                                          (stops the check on failure)
#   3. perf.dpo_vs_trl on it: bf16, batch 8, max length 1024 (prompt 512), up to 168 pairs
#      -> $OUT/dpo_gpu.json   (micro-batch 8 on a GPU with >= 100 GiB, else 4), then ablate alone
#      with the GPU_CHECK_DPO_VARIANTS settings (ablate first, then TRL, then the variants; the
#      comparison is written before the variants run); on failure it is retried once at half
#      the micro-batch (without variants) if time allows
#   3b. planner: perf.checks.planner_vs_peak, ablate's DPO trainer (models built by
#      ablate.train.fsdp.build_model) on GPU_CHECK_PLANNER_PAIRS pairs at the DPO step's
#      settings: peak GPU memory allocated beside the planner's estimate and their ratio
#      -> $OUT/planner_gpu.json   (smoke: the estimate alone)
#   4. perf.rm_vs_trl: 256 pairs of GPU_CHECK_DATA_FILE (64 of the shipped slice without
#      it), same lengths and batches, then ablate alone with the GPU_CHECK_RM_VARIANTS settings
#      -> $OUT/rm_gpu.json
#   4b. dpo_long: ablate's side alone over every pair of GPU_CHECK_DATA_FILE (default
#      .gpu/data/train_1000.jsonl.gz, the 1000 UltraFeedback rows of ../shared/data, ~850 pairs
#      fit 1024 tokens) that fits: a longer epoch, closer to a real run, then with the
#      GPU_CHECK_LONG_VARIANTS settings -> $OUT/dpo_long_gpu.json
#   4c. syncs: perf.checks.sync_check on a tiny random Llama: every call in a DPO or RM step that
#      makes the host wait for the GPU before the step's one read -> $OUT/syncs_gpu.json
#   5. perf.checks.dpo_step_profile: one DPO step's GPU time by kernel group (torch.profiler), eager
#      against the trainer's compiled regions, bf16 weights with fp32 masters, and pure bf16
#      -> $OUT/profile_gpu.json
#   6. perf.checks.generate_check: 16 GSM8k 8-shot prompts x 64 greedy tokens
#      -> $OUT/generate_gpu.json
# Everything printed is also in $OUT/gpu_check.log. At the end perf.gpu_summary writes
# $OUT/summary.md (every figure against the GPU targets), and the JSON files (step outcomes in
# steps.json) are bundled into $OUT/results.tgz, one file to copy back.
# Exit status: 0 all ran, 1 setup failed (wheels, preflight, model), 2 a measuring step failed.
#
# Settings (environment): GPU_CHECK_SHAPE (smollm2-1.7b | smollm2-135m | tiny), GPU_CHECK_PAIRS,
# GPU_CHECK_RM_PAIRS, GPU_CHECK_MAX_LENGTH, GPU_CHECK_MAX_PROMPT, GPU_CHECK_BATCH, GPU_CHECK_MICRO
# (a number or auto), GPU_CHECK_GEN_PROMPTS, GPU_CHECK_GEN_TOKENS, GPU_CHECK_BUDGET,
# GPU_CHECK_SKIP_WHEELS=1, GPU_CHECK_STEPS (default "dpo planner rm dpo_long syncs profile
# generate"), GPU_CHECK_PLANNER_PAIRS,
# GPU_CHECK_DATA_FILE, GPU_CHECK_LONG_PAIRS, GPU_CHECK_DPO_VARIANTS, GPU_CHECK_RM_VARIANTS,
# GPU_CHECK_LONG_VARIANTS, GPU_CHECK_PROFILE_MODES, PYTHON, OUT.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD

SMOKE=0
if [ "${1:-}" = "--cpu-smoke" ] || [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then SMOKE=1; fi

if [ "$SMOKE" = 1 ]; then
  SHAPE=${GPU_CHECK_SHAPE:-tiny}; PAIRS=${GPU_CHECK_PAIRS:-4}; RM_PAIRS=${GPU_CHECK_RM_PAIRS:-4}
  MAX_LENGTH=${GPU_CHECK_MAX_LENGTH:-256}; MAX_PROMPT=${GPU_CHECK_MAX_PROMPT:-128}
  BATCH=${GPU_CHECK_BATCH:-4}; MICRO=${GPU_CHECK_MICRO:-2}
  GEN_PROMPTS=${GPU_CHECK_GEN_PROMPTS:-4}; GEN_TOKENS=${GPU_CHECK_GEN_TOKENS:-16}
  BUDGET=${GPU_CHECK_BUDGET:-300}; SKIP_WHEELS=${GPU_CHECK_SKIP_WHEELS:-1}
  PY=${PYTHON:-$REPO/.venv/bin/python}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # a shared 2-core machine
else
  SHAPE=${GPU_CHECK_SHAPE:-smollm2-1.7b}; PAIRS=${GPU_CHECK_PAIRS:-168}
  RM_PAIRS=${GPU_CHECK_RM_PAIRS:-256}
  MAX_LENGTH=${GPU_CHECK_MAX_LENGTH:-1024}; MAX_PROMPT=${GPU_CHECK_MAX_PROMPT:-512}
  BATCH=${GPU_CHECK_BATCH:-8}; MICRO=${GPU_CHECK_MICRO:-auto}
  GEN_PROMPTS=${GPU_CHECK_GEN_PROMPTS:-16}; GEN_TOKENS=${GPU_CHECK_GEN_TOKENS:-64}
  BUDGET=${GPU_CHECK_BUDGET:-520}; SKIP_WHEELS=${GPU_CHECK_SKIP_WHEELS:-0}
  PY=${PYTHON:-python3}
fi
# the targets first (DPO and RM against TRL), then the long run, diagnostics last
STEPS=${GPU_CHECK_STEPS:-dpo planner rm dpo_long syncs profile generate}
PLANNER_PAIRS=${GPU_CHECK_PLANNER_PAIRS:-16}  # two optimiser steps at batch 8
DATA_FILE=${GPU_CHECK_DATA_FILE:-.gpu/data/train_1000.jsonl.gz}
LONG_PAIRS=${GPU_CHECK_LONG_PAIRS:-2000}  # all that fit
[ "$SMOKE" = 1 ] && LONG_PAIRS=${GPU_CHECK_LONG_PAIRS:-8}
# ablate runs first (it pays the process's first-use costs, not TRL), then TRL, then ablate alone
# again: bf16 weights with fp32 masters, compiled MLP and norm regions, the memory-efficient
# attention kernel instead of cuDNN (no per-shape plans), and last the defaults again, warm: the
# control that tells a setting's gain from the warm-up of the runs before it
DPO_VARIANTS=${GPU_CHECK_DPO_VARIANTS-precision=bf16_weights;compile_regions=true;attention_kernel=efficient;defaults}
[ "$SMOKE" = 1 ] && DPO_VARIANTS=${GPU_CHECK_DPO_VARIANTS-precision=bf16_weights;compile_regions=true;attention_kernel=math;defaults}
# the RM and the long DPO epoch again with bf16 weights (fp32 masters), the likeliest default
RM_VARIANTS=${GPU_CHECK_RM_VARIANTS-precision=bf16_weights;defaults}
LONG_VARIANTS=${GPU_CHECK_LONG_VARIANTS-precision=bf16_weights}
PROFILE_MODES=${GPU_CHECK_PROFILE_MODES:-eager regions master bf16}
OUT=${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_check_work.XXXXXX)
MODEL=$WORK/model-$SHAPE

export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 \
  HF_HOME=$WORK/hf HF_DATASETS_CACHE=$WORK/hf/datasets ABLATE_CACHE=$WORK/ablate-cache \
  PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

STEP_LOG=$WORK/steps.tsv
: >"$STEP_LOG"

# step NAME MAX_SECONDS MIN_SECONDS COMMAND...: run under `timeout`, capped by what is left of
# the budget; skipped when less than MIN_SECONDS is left. Returns the command's status.
step() {
  local name=$1 max=$2 min=$3; shift 3
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt "$min" ]; then
    echo "=== [$name] SKIPPED: ${left}s of the ${BUDGET}s budget left, needs ${min}s"
    printf '%s\tskipped\t0\t-\n' "$name" >>"$STEP_LOG"
    return 99
  fi
  local limit=$((max < left ? max : left))
  echo "=== [$name] start at ${SECONDS}s, limit ${limit}s: $*"
  local began=$SECONDS
  timeout --kill-after=15 "$limit" "$@"
  local rc=$?
  local took=$((SECONDS - began))
  local status=ok
  [ "$rc" -ne 0 ] && status=failed
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status=timeout
  echo "=== [$name] $status (rc $rc) after ${took}s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "$rc" >>"$STEP_LOG"
  return "$rc"
}

write_steps() {
  "$PY" - "$STEP_LOG" "$OUT/steps.json" "$SMOKE" "$SHAPE" "$SECONDS" "$BUDGET" <<'EOF' || true
import json, sys
log, out, smoke, shape, seconds, budget = sys.argv[1:7]
steps = []
for line in open(log):
    name, status, took, rc = line.rstrip("\n").split("\t")
    steps.append({"step": name, "status": status, "seconds": int(took), "rc": rc})
json.dump({"smoke": smoke == "1", "shape": shape, "total_seconds": int(seconds),
           "budget_seconds": int(budget), "steps": steps}, open(out, "w"), indent=2)
print(json.dumps(steps))
EOF
}

main() {
  echo "gpu_check: smoke=$SMOKE shape=$SHAPE pairs=$PAIRS rm_pairs=$RM_PAIRS" \
       "max_length=$MAX_LENGTH max_prompt=$MAX_PROMPT batch=$BATCH micro=$MICRO gen=${GEN_PROMPTS}x$GEN_TOKENS" \
       "budget=${BUDGET}s steps='$STEPS' out=$OUT work=$WORK python=$PY"
  date -u; uname -a; nproc; free -g 2>/dev/null | head -2; df -h /tmp 2>/dev/null | tail -1

  # 0. wheels
  if [ "$SKIP_WHEELS" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
    step wheels 180 30 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl || { echo "FATAL: wheel install failed"; return 1; }
    export PYTHONPATH=/tmp/site:$REPO
  else
    echo "=== [wheels] not installed (smoke, GPU_CHECK_SKIP_WHEELS=1, or no .whl/)"
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
  fi

  # 1. device and environment
  if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi
    timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  else
    echo "(no nvidia-smi)"
  fi
  local require_cuda=--require-cuda
  [ "$SMOKE" = 1 ] && require_cuda=
  step preflight 150 30 "$PY" -m perf.gpu_env --json "$OUT/env_gpu.json" $require_cuda \
    || { echo "FATAL: preflight failed (see the import errors above)"; return 1; }

  local micro=$MICRO
  if [ "$micro" = auto ]; then
    local gib code="import json, sys; print(int(json.load(open(sys.argv[1])).get('memory_gib') or 0))"
    gib=$("$PY" -c "$code" "$OUT/env_gpu.json")
    # 1.7B without checkpointing: ~31 GiB of weights, grads, AdamW state and bf16 weight copies,
    # plus ~2.8 MiB of saved activations per token (measured on one layer of this shape under
    # autocast); 16 sequences of ~1k tokens (micro-batch 8) would need ~75 GiB: too close to an
    # 80 GiB H100's limit.
    if [ "${gib:-0}" -ge 100 ]; then micro=8; else micro=4; fi
    echo "micro-batch: $micro (GPU memory ${gib} GiB)"
  fi

  # 2. the model
  step model 240 60 "$PY" -m perf.random_model --shape "$SHAPE" --out "$MODEL" \
    --tokenizer .gpu/tokenizer || { echo "FATAL: could not build the model"; return 1; }
  ls -la "$MODEL"

  for name in $STEPS; do
    case $name in
      dpo)
        step dpo 300 90 "$PY" -m perf.dpo_vs_trl --model "$MODEL" --pairs "$PAIRS" \
          --max-length "$MAX_LENGTH" --max-prompt-length "$MAX_PROMPT" --batch-size "$BATCH" \
          --micro-batch-size "$micro" --allow-fewer --skip-save --order ablate-first \
          --ablate-variants "$DPO_VARIANTS" --json "$OUT/dpo_gpu.json"
        local rc=$?
        if [ "$rc" -ne 0 ] && [ "$rc" -ne 99 ] && [ "$micro" -gt 1 ]; then
          echo "DPO failed at micro-batch $micro; retrying at $((micro / 2)), no variants"
          step dpo_retry 300 120 "$PY" -m perf.dpo_vs_trl --model "$MODEL" --pairs "$PAIRS" \
            --max-length "$MAX_LENGTH" --max-prompt-length "$MAX_PROMPT" \
            --batch-size "$BATCH" --micro-batch-size "$((micro / 2))" --allow-fewer \
            --skip-save --order ablate-first --json "$OUT/dpo_gpu.json"
        fi
        ;;
      dpo_long)
        if [ ! -f "$DATA_FILE" ]; then
          echo "=== [dpo_long] SKIPPED: no $DATA_FILE"; continue
        fi
        step dpo_long 240 60 "$PY" -m perf.dpo_vs_trl --model "$MODEL" --pairs "$LONG_PAIRS" \
          --data-file "$DATA_FILE" --max-length "$MAX_LENGTH" --max-prompt-length "$MAX_PROMPT" \
          --batch-size "$BATCH" --micro-batch-size "$micro" --allow-fewer --skip-save \
          --ablate-only --ablate-variants "$LONG_VARIANTS" --json "$OUT/dpo_long_gpu.json"
        ;;
      planner)
        # the planner's peak memory for a DPO step of this shape beside the peak it reaches,
        # trained with the current loading (ablate.train.fsdp.build_model); at toy size on the
        # CPU only the estimate
        local estimate_only=()
        [ "$SMOKE" = 1 ] && estimate_only=(--estimate-only)
        step planner 180 60 "$PY" -m perf.checks.planner_vs_peak --model "$MODEL" \
          --pairs "$PLANNER_PAIRS" --max-length "$MAX_LENGTH" --max-prompt-length "$MAX_PROMPT" \
          --batch-size "$BATCH" --micro-batch-size "$micro" --out "$WORK/planner" \
          "${estimate_only[@]}" --json "$OUT/planner_gpu.json"
        ;;
      syncs)
        step syncs_model 60 20 "$PY" -m perf.random_model --shape tiny --out "$WORK/model-tiny" \
          --tokenizer .gpu/tokenizer \
          && step syncs 120 30 "$PY" -m perf.checks.sync_check --model "$WORK/model-tiny" \
            --json "$OUT/syncs_gpu.json"
        ;;
      rm)
        local rm_data=() rm_pairs=$RM_PAIRS
        if [ -f "$DATA_FILE" ]; then rm_data=(--data-file "$DATA_FILE")
        elif [ "$SMOKE" != 1 ]; then rm_pairs=${GPU_CHECK_RM_PAIRS:-64}; fi
        step rm 240 90 "$PY" -m perf.rm_vs_trl --model "$MODEL" --pairs "$rm_pairs" \
          "${rm_data[@]}" --max-length "$MAX_LENGTH" --batch-size "$BATCH" \
          --micro-batch-size "$micro" --allow-fewer --skip-save --order ablate-first \
          --ablate-variants "$RM_VARIANTS" --json "$OUT/rm_gpu.json"
        ;;
      profile)
        TORCH_LOGS=${TORCH_LOGS:-recompiles} step profile 200 60 \
          "$PY" -m perf.checks.dpo_step_profile \
          --model "$MODEL" --pairs "$PAIRS" --max-length "$MAX_LENGTH" \
          --max-prompt-length "$MAX_PROMPT" --batch-size "$BATCH" --modes $PROFILE_MODES \
          --json "$OUT/profile_gpu.json"
        ;;
      generate)
        step generate 150 45 "$PY" -m perf.checks.generate_check --model "$MODEL" \
          --prompts "$GEN_PROMPTS" --new-tokens "$GEN_TOKENS" --json "$OUT/generate_gpu.json"
        ;;
      *) echo "unknown step $name" ;;
    esac
  done

  if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 20 nvidia-smi --query-gpu=name,memory.used,temperature.gpu,clocks.sm --format=csv
  fi
  # exit 2 when a measuring step failed, timed out or was skipped for lack of budget (a DPO
  # retry that passed is fine), or when one of the two comparisons with TRL did not run at all
  if grep -qP '^(generate|rm|dpo_long|syncs|profile)\t(failed|timeout)\t' "$STEP_LOG" \
     || grep -qP '^rm\tskipped\t' "$STEP_LOG" \
     || { grep -qP '^dpo\t(failed|timeout|skipped)\t' "$STEP_LOG" \
          && ! grep -qP '^dpo_retry\tok\t' "$STEP_LOG"; }; then
    return 2
  fi
  case " $STEPS " in *" dpo "*) grep -qP '^dpo' "$STEP_LOG" || return 2 ;; esac
  case " $STEPS " in *" rm "*) grep -qP '^rm\t' "$STEP_LOG" || return 2 ;; esac
  return 0
}

main 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
{
  echo "=== steps:"
  write_steps
  echo "=== summary:"
  "$PY" -m perf.gpu_summary "$OUT" --out "$OUT/summary.md" || echo "(no summary)"
  (cd "$OUT" && tar czf results.tgz ./*.json && rm -f ./*.json) || echo "(JSON files not bundled)"
  echo "=== total ${SECONDS}s (budget ${BUDGET}s); results in $OUT:"
  ls -la "$OUT"
} 2>&1 | tee -a "$OUT/gpu_check.log"
rm -rf "$WORK"
exit "$rc"
