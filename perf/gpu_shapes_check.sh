#!/usr/bin/env bash
# Does padding DPO micro-batches to a multiple of 64 tokens speed up a cold process on a GPU?
# (cuDNN attention builds a plan per distinct shape; length-varying batches meet a new shape at
# most steps.) ablate's side of perf/dpo_vs_trl.py alone, each setting in a fresh process,
# alternated: pad 1, 64, 1, 64 -> $OUT/pad<multiple>_<round>.json. Same model and settings as
# perf/gpu_check.sh's DPO step. On a lent GPU machine (carry [".whl", ".gpu"]):
#     bash perf/gpu_shapes_check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$(mktemp -d /tmp/gpu_shapes.XXXXXX)}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 ABLATE_CACHE=/tmp/ablate-cache \
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
MODEL=/tmp/shapes-model
python3 perf/random_model.py --shape smollm2-1.7b --out "$MODEL" --tokenizer .gpu/tokenizer \
  >"$OUT/model.log" 2>&1 || { tail -20 "$OUT/model.log"; exit 1; }
for round in 1 2; do
  for multiple in 1 64; do
    python3 perf/dpo_vs_trl.py --model "$MODEL" --pairs 168 --max-length 1024 \
      --max-prompt-length 512 --batch-size 8 --micro-batch-size 8 --allow-fewer --skip-save \
      --ablate-only --pad-multiple "$multiple" --json "$OUT/pad${multiple}_$round.json" \
      >"$OUT/pad${multiple}_$round.log" 2>&1
    python3 - "$OUT/pad${multiple}_$round.json" <<'PY' || tail -5 "$OUT/pad${multiple}_$round.log"
import json, sys
a = json.load(open(sys.argv[1]))["ablate"]
print({k: a.get(k) for k in ("settings", "ref_seconds", "train_seconds", "first_step_seconds",
                             "flop_utilisation", "train_flop_utilisation",
                             "peak_gpu_allocated_gib")}, flush=True)
PY
  done
done
