"""`ablate grid` end to end with the real runners on the tiny model: train, evaluate, report,
re-run does nothing, and a run killed mid-way finishes the rest without redoing finished steps."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

GRID = """\
name: e2e
models:
  tiny: {builtin: tiny-llama}
datasets:
  uf: {name: ultrafeedback-slice, max_rows: 8}
  hh: {name: hh-rlhf-slice, max_rows: 8}
algorithms:
  dpo: {kind: dpo, lr: 1.0e-4, epochs: 1, batch_size: 4, micro_batch_size: 2, max_length: 128,
        max_prompt_length: 64, eval_fraction: 0.25}
axes:
  model: [tiny]
  data: [uf, hh]
  algorithm: [dpo]
eval:
  benchmarks: [gsm8k, mmlu]
  limit: {gsm8k: 2, mmlu: 4}
  max_new_tokens: {gsm8k: 16}
"""


def ablate(*args, store, check=True, **kwargs):
    env = {**os.environ, "ABLATE_STORE": str(store), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ablate.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, check=check, cwd=REPO, **kwargs)


@pytest.mark.slow
def test_grid_runs_end_to_end_and_resumes(tmp_path, tiny_model_dir):
    grid = tmp_path / "e2e.yaml"
    grid.write_text(GRID)
    store = tmp_path / "store"

    # Kill the run once the first training step is done, then run again.
    proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "grid", str(grid)],
                            env={**os.environ, "ABLATE_STORE": str(store)}, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(store.glob("steps/train_dpo/*/DONE.json")):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.parent.name: p.stat().st_mtime for p in store.glob("steps/*/*/DONE.json")}
    assert done_before, "the first training step did not finish in time"

    result = ablate("grid", grid, store=store)
    assert "already done" in result.stdout
    for step_id, mtime in done_before.items():
        done = next(store.glob(f"steps/*/{step_id}/DONE.json"))
        assert done.stat().st_mtime == mtime, "a finished step was redone"
    done_after = list(store.glob("steps/*/*/DONE.json"))
    assert len(done_after) == 2 + 2 * 3  # two DPO runs, 3 models x 2 benchmarks

    for result_file in store.glob("steps/eval/*/result.json"):
        data = json.loads(result_file.read_text())
        assert data["benchmark"] in ("gsm8k", "mmlu") and 0 <= data["value"] <= 100

    again = ablate("grid", grid, store=store)
    assert "Nothing to do" in again.stdout

    status = ablate("status", grid, store=store)
    assert status.stdout.count("done") >= 8

    report = ablate("report", "--table", "smoke", "--grid", "e2e", "--store", store,
                    "--out", tmp_path / "report", store=store)
    assert "gsm8k" in report.stdout.lower()
