"""docs/own-data.md, run as written from a clean copy of the repository: DPO on the shipped
20-row file, evaluated on GSM8k and the example benchmark of one's own, reported."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "own-data.md"


def clean_copy(dest: Path) -> Path:
    """The files a clone has (tracked, or new and not ignored), nothing a run left behind."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def guide_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), re.S)
    return [line.split()[1:] for block in blocks for line in block.splitlines()
            if line.startswith("ablate ")]


def ablate(args, cwd: Path, store: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ABLATE_STORE": str(store), "HF_HUB_OFFLINE": "1", "COLUMNS": "250",
           "PYTHONPATH": str(cwd)}
    out = subprocess.run([sys.executable, "-m", "ablate.cli", *args], cwd=cwd, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, f"ablate {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


def train_id(dry_run: str) -> str:
    return re.search(r"│ ([0-9a-f]{12}) │ train_dpo", dry_run).group(1)


@pytest.mark.slow
def test_the_guide_runs_from_a_clean_copy(tmp_path, tiny_model_dir):
    repo = clean_copy(tmp_path / "clone")
    store = tmp_path / "store"
    commands = guide_commands()
    assert [c[0] for c in commands] == ["data", "validate", "grid", "grid", "report"]
    outputs = [ablate(args, repo, store).stdout for args in commands]

    assert "20 rows, 20 usable" in outputs[1]
    done = [json.loads(p.read_text()) for p in store.glob("steps/eval/*/result.json")]
    assert sorted(r["benchmark"] for r in done) == ["capitals", "capitals", "gsm8k", "gsm8k"]
    assert {r["category"] for r in done if r["benchmark"] == "capitals"} == {"geography"}
    report = (repo / "my-report" / "tablesmoke.md").read_text()
    assert re.search(r"\| Cell \| (GSM8k|capitals) \| (GSM8k|capitals) \| Reasoning\* \| "
                     r"Average\* \| geography \|", report), report
    digest = re.search(r"sha256:[0-9a-f]{64}", outputs[0]).group(0)
    assert f"trained on {repo / 'examples' / 'my_prefs.jsonl'} ({digest})" in report

    spec = json.loads(next(store.glob("steps/train_dpo/*/spec.json")).read_text())
    assert spec["config"]["data"]["digest"] == digest
    assert spec["execution"]["data"]["path"] == str(repo / "examples" / "my_prefs.jsonl")

    # one changed row is another training step; the old one stays done
    before = train_id(outputs[2])
    data = repo / "examples" / "my_prefs.jsonl"
    rows = data.read_text().splitlines()
    rows[3] = json.dumps({**json.loads(rows[3]), "chosen": "Eight, like every spider."})
    data.write_text("\n".join(rows) + "\n")
    after = train_id(ablate(["grid", "examples/my_grid.yaml", "--dry-run"], repo, store).stdout)
    assert after != before and (store / "steps" / "train_dpo" / before / "DONE.json").is_file()
