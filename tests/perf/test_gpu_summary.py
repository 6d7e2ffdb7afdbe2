"""perf/gpu_summary.py: a GPU check's JSON files become one page with verdicts on the targets."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def summary():
    spec = importlib.util.spec_from_file_location("gpu_summary", REPO / "perf" / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_summary"] = module
    spec.loader.exec_module(module)
    return module


def side(seconds, utilisation, **extra):
    return {"seconds": seconds, "ref_seconds": 1.0, "train_seconds": seconds - 1.0,
            "pairs_per_second": 100 / seconds, "flop_utilisation": utilisation,
            "train_flop_utilisation": utilisation, "peak_gpu_allocated_gib": 50.0,
            "settings": {"precision": "autocast", "compile_regions": False}, **extra}


def dpo_result():
    variant = side(4.0, 0.45, ratio_vs_trl=5.0)
    variant["settings"] = {"precision": "bf16_weights", "compile_regions": False}
    failed = {"settings": {"compile_regions": True}, "error": "RuntimeError: boom"}
    return {"device": "NVIDIA H200", "params": 1_711_376_384, "peak_bf16_flops": 989e12,
            "pairs": 100, "real_tokens": 80_000, "batch_size": 8, "micro_batch_size": 8,
            "ablate": side(5.0, 0.35), "trl": side(20.0, 0.08), "ratio": 4.0,
            "variants": [variant, failed]}


def rm_result(ratio):
    ablate = side(2.0, 0.2)
    del ablate["ref_seconds"]
    trl = side(2.0 * ratio, 0.1)
    del trl["ref_seconds"]
    return {"pairs": 64, "real_tokens": 50_000, "batch_size": 8, "micro_batch_size": 8,
            "ablate": ablate, "trl": trl, "ratio": ratio}


def test_verdicts_name_the_setting_that_meets_a_target(summary, tmp_path):
    (tmp_path / "dpo_gpu.json").write_text(json.dumps(dpo_result()))
    (tmp_path / "rm_gpu.json").write_text(json.dumps(rm_result(1.8)))
    page = summary.main([str(tmp_path), "--out", str(tmp_path / "summary.md")])
    assert (tmp_path / "summary.md").read_text() == page + "\n"
    assert "# GPU check: NVIDIA H200" in page
    assert "- DPO ≥ 2× TRL: **met** (defaults 4.00×; best 5.00× with precision=bf16_weights)" \
        in page
    assert "- RM ≥ 2× TRL: **not met** (defaults 1.80×" in page
    assert ("useful-FLOP utilisation (8·P·T over reference + training seconds): **met only in "
            "dpo_gpu with precision=bf16_weights** (defaults 35.0 %; best 45.0 %") in page
    assert "| ablate | defaults | 5.00 (1.00 + 4.00) | 20.00 | 4.00× | 35.0 % |" in page
    assert "| ablate | compile_regions=True | failed: RuntimeError: boom |" in page
    assert "| TRL | precompute_ref_log_probs | 20.00 (1.00 + 19.00) | 5.00 | – | 8.0 % |" in page
    # the RM table has one utilisation column: it has no reference pass
    assert "| side | settings | s (ref + train) | pairs/s | vs TRL | 6·P·T / train | peak GPU " \
        "GiB |" in page


def test_reads_the_bundle_and_says_what_was_not_measured(summary, tmp_path):
    data = json.dumps(rm_result(2.5)).encode()
    with tarfile.open(tmp_path / "results.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("rm_gpu.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    page = summary.main([str(tmp_path)])
    assert "- RM ≥ 2× TRL: **met** (defaults 2.50×" in page
    assert "- DPO ≥ 2× TRL: not measured" in page
    assert "utilisation: not measured" in page


def test_missing_folder_is_a_clear_error(summary, tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        summary.main([str(tmp_path / "nope")])
