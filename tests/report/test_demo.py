"""`make demo` keeps its word: it runs the grid the README describes, from what ships in the
repository, and its table's marks of what is beyond noise come from the paired tests."""

import shutil
import subprocess
from pathlib import Path

import pytest


from ablate.cli import plan_of
from ablate.report.build import build_report
from ablate.report.frame import load_results
from ablate.report.groups import group_stats
from ablate.report.tables import NOISE_MARK, fmt
from ablate.spec import load_grid
from ablate.spec.metrics import refusal_f1
from ablate.store import RunStore, atomic_write_json, atomic_write_jsonl

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "grids" / "demo.yaml"


def readme_demo_section() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("## The demo"):].split("\n## ", 1)[0]


def test_make_demo_runs_the_demo_grid_and_prints_its_table():
    target = (REPO / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "ablate grid grids/demo.yaml" in target
    assert "ablate report --table smoke --grid demo" in target


def test_the_readme_says_what_the_demo_grid_runs():
    spec = load_grid(DEMO)
    section = readme_demo_section()
    dpo = spec.algorithms["dpo"]
    data = spec.datasets["declining"]
    assert f"{data.max_rows} pairs" in section and data.name in section
    assert f"lr {dpo.lr:g}" in section and f"batch {dpo.batch_size}" in section
    for bench, limit in spec.eval.limit.items():
        assert f"{limit} " in section and bench in section.lower()
    assert "string match" in section and spec.eval.judge in section
    assert "grids/demo.yaml" in section


def test_the_demo_runs_from_shipped_data(monkeypatch):
    """Every training set is a packaged slice and every eval's items fit its shipped slice, so
    a clean clone runs the demo offline."""
    from ablate.data.registry import SOURCES
    from ablate.evals import get_benchmark
    from ablate.evals.data import load_items

    monkeypatch.delenv("ABLATE_DATA_DIR", raising=False)
    plan = plan_of(load_grid(DEMO))
    kinds = set()
    for step in plan.steps.values():
        kinds.add(step.kind)
        if step.kind == "train_dpo":
            assert SOURCES[step.config.data.name].packaged, step.config.data.name
        if step.kind == "eval":
            items, root = load_items(get_benchmark(step.config.benchmark), step.config.protocol,
                                     step.config.limit, None)
            assert root is None and len(items) == step.config.limit, step.config.benchmark
    assert kinds == {"train_dpo", "eval"}


def write_eval(store: RunStore, step, rows: list[dict], value: float,
               secondary: dict | None = None) -> None:
    folder = store.step_dir(step)
    folder.mkdir(parents=True)
    atomic_write_jsonl(folder / "scores.jsonl", rows)
    atomic_write_json(folder / "result.json", {
        "kind": "eval", "benchmark": step.config.benchmark, "category": "x",
        "protocol": step.config.protocol, "metric": "m", "value": value, "unit": "percent",
        "higher_is_better": True, "category_score": value, "n_items": len(rows),
        "scores_file": "scores.jsonl", "secondary": secondary or {}})
    atomic_write_json(folder / "DONE.json", {"step": step.id, "seconds": 1.0})


def demo_store(root: Path, refusing: dict[bool, list[bool]] | None = None) -> RunStore:
    """The real demo plan with made-up results: a DPO model that refuses 80 of the 100 unsafe
    prompts where SFT refused 20, and answers MMLU exactly as SFT did."""
    spec = load_grid(DEMO)
    plan = plan_of(spec)
    store = RunStore(root)
    store.save_plan(plan, source=str(DEMO), about={"description": "d", "labels": {}})
    unsafe = [k % 2 == 0 for k in range(spec.eval.limit["xstest"])]
    refusing = refusing or {True: [u and k % 5 != 4 for k, u in enumerate(unsafe)],
                            False: [u and k % 10 == 0 for k, u in enumerate(unsafe)]}
    mmlu = [{"item_id": f"q{k}", "score": float(k % 3 == 0)}
            for k in range(spec.eval.limit["mmlu"])]
    for cell in plan.cells:
        refused = refusing[not cell.is_baseline]
        write_eval(store, plan.steps[cell.evals["xstest"]],
                   [{"item_id": str(k), "score": float(u == r), "unsafe": u, "refused": r}
                    for k, (u, r) in enumerate(zip(unsafe, refused))],
                   100 * refusal_f1(unsafe, refused),
                   {f"refusal_rate_{kind}": 100 * sum(r for u, r in zip(unsafe, refused)
                                                      if u == (kind == "unsafe"))
                    / sum(u == (kind == "unsafe") for u in unsafe)
                    for kind in ("unsafe", "safe")})
        write_eval(store, plan.steps[cell.evals["mmlu"]], mmlu,
                   100 * sum(r["score"] for r in mmlu) / len(mmlu))
    return store


def test_the_demo_table_marks_noise_and_effects_from_the_paired_tests(tmp_path):
    """XSTest is beyond noise (no mark, its paired CI in the notes, as the stats computed it),
    MMLU within noise (marked)."""
    store = demo_store(tmp_path / "runs")
    stats = group_stats(load_results(store, "demo"))
    dpo = next(s for g, s in stats.items() if "alg=dpo" in g)
    test = dpo["bench:xstest"].test
    assert not test.within_noise and dpo["bench:mmlu"].within_noise
    build_report(store, "demo", ["smoke"], [], ["md"], tmp_path / "out")
    md = (tmp_path / "out" / "tablesmoke.md").read_text()
    lines = md.splitlines()
    header = next(line for line in lines if "| XSTest |" in line)
    row = next(line for line in lines if "+DPO" in line)
    cells = dict(zip(*([c.strip().strip("*") for c in line.strip("|").split("|")]
                       for line in (header, row))))
    assert cells["XSTest"] == fmt(dpo["bench:xstest"].value)  # no mark: beyond noise
    assert cells["MMLU"] == fmt(dpo["bench:mmlu"].value) + NOISE_MARK
    assert (f"XSTest {fmt(test.delta, signed=True)} (95% CI {fmt(test.ci_low, signed=True)} to "
            f"{fmt(test.ci_high, signed=True)}, p = {test.p_value:.3f})") in md
    # what moved F1: the share of unsafe and of safe prompts each model refused
    note = next(line for line in lines if line.startswith("- XSTest refusals"))
    assert note.endswith("(SFT) 20.0 / 0.0; " + row.split("|")[1].strip() + " 80.0 / 0.0.")


def test_an_f1_equal_to_the_accuracy_by_chance_is_still_tested_as_f1(tmp_path):
    """DPO refusing 51 of the 100 unsafe prompts and 49 of the 100 safe ones has refusal F1
    102 / 200 = 51.0, its accuracy too; SFT refusing 2 and 3 has F1 4 / 105. The paired test is
    of F1 (+47.2, far beyond noise), not of the accuracies (49.5 against 51.0, noise)."""
    unsafe = [k % 2 == 0 for k in range(200)]
    def refuses(unsafe_n, safe_n):
        seen = {True: 0, False: 0}
        out = []
        for u in unsafe:
            seen[u] += 1
            out.append(seen[u] <= (unsafe_n if u else safe_n))
        return out
    store = demo_store(tmp_path / "runs", {True: refuses(51, 49), False: refuses(2, 3)})
    stats = group_stats(load_results(store, "demo"))
    dpo = next(s for g, s in stats.items() if "alg=dpo" in g)["bench:xstest"]
    assert fmt(dpo.value) == "51.0"
    assert abs(dpo.test.delta - (51.0 - 400 / 105)) < 1e-9
    assert dpo.test.ci_low > 30 and not dpo.test.within_noise


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="needs pdflatex")
def test_the_demo_tables_compile_with_pdflatex(tmp_path):
    store = demo_store(tmp_path / "runs")
    build_report(store, "demo", ["smoke"], [], ["latex"], tmp_path / "r")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                             "tables.tex"], cwd=tmp_path / "r", capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "r" / "tables.pdf").stat().st_size > 1000
