#!/usr/bin/env bash
# Cold-process A/B of ablate's DPO settings on a GPU: settings that change how many distinct
# shapes a run meets, or what each new shape costs (cuDNN attention builds a plan per shape), only
# show in a fresh process. ablate's side of perf.dpo_vs_trl alone (--ablate-only), each run a
# fresh process, alternated A, B, A, B -> $OUT/{a,b}_<round>.json. Same model and settings as
# perf/gpu_check.sh's DPO step. Settings are DPOConfig overrides (--ablate-settings):
#   SHAPES_A (default: none, i.e. attention_kernel auto) and SHAPES_B (default
#   attention_kernel=efficient). On 2026-11-27 it compared pad_multiple=1 with pad_multiple=64
#   (perf/RESULTS.md).
# On a GPU machine (repo root, with the ignored .whl/ and .gpu/ present):
#   bash perf/checks/shapes_ab.sh
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-$(mktemp -d /tmp/gpu_shapes.XXXXXX)}
A=${SHAPES_A-}
B=${SHAPES_B-attention_kernel=efficient}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 ABLATE_CACHE=/tmp/ablate-cache \
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
MODEL=/tmp/shapes-model
python3 -m perf.random_model --shape smollm2-1.7b --out "$MODEL" --tokenizer .gpu/tokenizer \
  >"$OUT/model.log" 2>&1 || { tail -20 "$OUT/model.log"; exit 1; }
for round in 1 2; do
  for side in a b; do
    settings=$A
    [ "$side" = b ] && settings=$B
    python3 -m perf.dpo_vs_trl --model "$MODEL" --pairs 168 --max-length 1024 \
      --max-prompt-length 512 --batch-size 8 --micro-batch-size 8 --allow-fewer --skip-save \
      --ablate-only --ablate-settings "$settings" --json "$OUT/${side}_$round.json" \
      >"$OUT/${side}_$round.log" 2>&1
    python3 - "$OUT/${side}_$round.json" <<'PY' || tail -5 "$OUT/${side}_$round.log"
import json, sys
a = json.load(open(sys.argv[1]))["ablate"]
print({k: a.get(k) for k in ("settings", "ref_seconds", "train_seconds", "first_step_seconds",
                             "flop_utilisation", "train_flop_utilisation",
                             "peak_gpu_allocated_gib")}, flush=True)
PY
  done
done
