"""perf.gpu_summary: a GPU check's JSON files become one page with verdicts on the targets,
read strictly (TRL's precision, without TRL's weight hashing, the same work, a real GPU run)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from perf import gpu_summary


@pytest.fixture(scope="module")
def summary():
    return gpu_summary


def side(seconds, utilisation, ref=True, **extra):
    out = {"seconds": seconds, "train_seconds": seconds - 1.0 if ref else seconds,
           "pairs_per_second": 100 / seconds, "flop_utilisation": utilisation,
           "train_flop_utilisation": utilisation, "peak_gpu_allocated_gib": 50.0, "steps": 13,
           "settings": {"precision": "autocast", "compile_regions": False}, **extra}
    if ref:
        out["ref_seconds"] = 1.0
    return out


def variant(seconds, utilisation, ratio, **overrides):
    return side(seconds, utilisation, ratio_vs_trl=ratio, overrides=overrides)


def comparison(ratio, variants=(), hash_seconds=0.0, device="NVIDIA H200", ref=True):
    trl = side(20.0, 0.08, ref=ref, hash_seconds=hash_seconds,
               checks={"model_device": "cuda:0", "mixed_precision": "bf16"})
    unhashed = {"ratio_without_trl_hashing": round((20.0 - hash_seconds) / (20.0 / ratio), 3)} \
        if ref else {}
    return {"device": device, "precision": "bf16" if device != "cpu" else "float32",
            "params": 1_711_376_384, "peak_bf16_flops": 989e12, "pairs": 100,
            "real_tokens": 80_000, "batch_size": 8, "micro_batch_size": 8,
            "ablate": side(20.0 / ratio, 0.35, ref=ref, processed_flop_utilisation=0.29),
            "trl": trl, "ratio": ratio, **unhashed, "variants": list(variants)}


def page_for(summary, tmp_path, **files) -> str:
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    return summary.main([str(tmp_path), "--out", str(tmp_path / "summary.md")])


def test_verdicts_and_tables(summary, tmp_path):
    dpo = comparison(4.0, [variant(4.0, 0.45, 5.0, precision="bf16_weights"),
                           {"settings": {"compile_regions": True},
                            "overrides": {"compile_regions": True},
                            "error": "RuntimeError: boom"},
                           variant(4.9, 0.36, 4.1)])
    page = page_for(summary, tmp_path, dpo_gpu=dpo, rm_gpu=comparison(1.8, ref=False))
    assert (tmp_path / "summary.md").read_text() == page + "\n"
    assert "# GPU check: NVIDIA H200" in page
    assert "- DPO ≥ 2× TRL: **met** (defaults 4.00×, 4.00× without TRL's weight hashing" in page
    assert "- RM ≥ 2× TRL: **not met** (defaults 1.80×)" in page
    assert ("**met only in dpo_gpu with precision=bf16_weights** (defaults 35.0 %; best 45.0 %"
            in page)
    assert "counting only the tokens ablate's layout runs" in page
    assert "| ablate | defaults | 5.00 (1.00 + 4.00) | 20.00 | 4.00× | 35.0 % |" in page
    assert "| ablate | compile_regions=True | failed: RuntimeError: boom |" in page
    assert "| ablate | defaults (warm re-run) | 4.90 (1.00 + 3.90) |" in page
    assert "| TRL | precompute_ref_log_probs | 20.00 (1.00 + 19.00) | 5.00 | – | 8.0 % |" in page
    # the RM table has one utilisation column: it has no reference pass
    assert "| side | settings | s (ref + train) | pairs/s | vs TRL | 6·P·T / train | peak GPU " \
        "GiB |" in page


def test_a_target_is_not_met_by_trl_hashing_another_precision_or_other_work(summary, tmp_path):
    # 2.4x end to end, but TRL spent 6 s of its 20 hashing weights: 1.68x without it
    hashed = comparison(2.4, hash_seconds=6.0)
    # only bf16 weights reach 2x, and only a run with another loss reaches 40 %
    other = comparison(1.5, [variant(8.0, 0.30, 2.5, precision="bf16_weights"),
                             variant(5.0, 0.50, 4.0, loss="simpo")])
    page = page_for(summary, tmp_path, dpo_gpu=hashed, rm_gpu=other)
    assert "- DPO ≥ 2× TRL: **not met** (defaults 2.40×, 1.68× without TRL's weight hashing" \
        in page
    assert "- RM ≥ 2× TRL: **not met at TRL's precision; met with precision=bf16_weights" in page
    (tmp_path / "rm_gpu.json").unlink()
    page = page_for(summary, tmp_path, dpo_gpu=other)
    assert "counted twice as TRL runs it): **not met** (defaults 35.0 %; best 35.0 %" in page
    assert "| ablate | loss=simpo |" in page  # shown, but it is not the benchmark's work


def test_a_cpu_run_is_not_a_gpu_comparison_and_bundles_are_read(summary, tmp_path):
    data = json.dumps(comparison(8.0, device="cpu", ref=False)).encode()
    with tarfile.open(tmp_path / "results.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("./rm_gpu.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    page = summary.main([str(tmp_path)])
    assert "- RM ≥ 2× TRL: not a GPU comparison (ran on a CPU)" in page
    assert "- DPO ≥ 2× TRL: not measured" in page
    assert "utilisation: not measured" in page


def test_missing_folder_is_a_clear_error(summary, tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        summary.main([str(tmp_path / "nope")])


def test_the_planner_step_is_on_the_page(summary, tmp_path):
    page = page_for(summary, tmp_path, planner_gpu={
        "estimate_gib": 62.193, "measured_gib": 58.6, "ratio": 1.061, "pairs": 16,
        "longest_tokens": 1742})
    assert ("estimate 62.193 GiB, measured 58.6 GiB, ratio 1.061 (16 pairs, longest 1742 "
            "tokens)") in page
