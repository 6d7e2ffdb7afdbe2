"""Reports from run stores built in code: formats, determinism, seeds, noise, bad input, CLI."""

import json

import pytest
import typer
from typer.testing import CliRunner

from ablate.cli import plan_of
from ablate.report.build import ReportError, build_report
from ablate.report.cli import report_command
from ablate.report.frame import load_results
from ablate.report.groups import group_stats
from ablate.report.tables import fmt
from report_store import build_plan, detail_json, fill_store, read

PPO_MIXED = "data=uf,alg=ppo,rm=uf-13b,prompts=mixed,seed=1"


def report(store, out, **kw):
    args = dict(tables=["smoke"], figures=[], formats=["all"])
    args.update(kw)
    return build_report(store, "toy", out_dir=out, **args)


def test_frame_is_tidy_with_cis_and_run_ids(toy_store):
    results = load_results(toy_store, "toy")
    frame = results.frame
    assert len(frame) == 5 * 3 and set(frame.status) == {"done"}
    row = frame[(frame.cell == "sft") & (frame.benchmark == "gsm8k")].iloc[0]
    assert row.category == "reasoning" and row.ci_low < row.value < row.ci_high
    assert row.eval_step in row.run_ids.split()
    ppo = frame[frame.cell.str.contains("prompts=uf")].iloc[0]
    assert len(ppo.run_ids.split()) == 3  # rm -> ppo -> eval
    assert frame.groupby("group").cell.nunique()["data=uf,alg=dpo"] == 2


def test_seeds_noise_and_shading(toy_store):
    results = load_results(toy_store, "toy")
    stats = group_stats(results)
    dpo = stats["data=uf,alg=dpo"]
    assert dpo["bench:mmlu"].n_seeds == 2 and dpo["bench:mmlu"].sd > 0
    # MMLU 0.50 -> 0.71: real; ToxiGen (lower is better) 0.20 -> 0.11: real and oriented
    assert not dpo["bench:mmlu"].within_noise and dpo["bench:mmlu"].test.delta > 15
    assert dpo["safety"].test.delta > 0 and not dpo["safety"].within_noise
    assert dpo["average"].ci[0] < dpo["average"].value < dpo["average"].ci[1]
    ppo = stats["data=uf,alg=ppo,rm=uf-13b,prompts=uf"]
    assert ppo["bench:mmlu"].within_noise  # same probability as SFT: noise
    assert stats["sft"]["average"].test is None


def test_each_cell_is_compared_with_the_sft_of_its_own_base_model(tmp_path, monkeypatch):
    import report_store

    def sft(model):
        return {"model": model, "data": "none", "algorithm": "sft", "reward_model": "none",
                "prompts": "none", "seed": None}

    monkeypatch.setattr(report_store, "BENCHMARKS", ("mmlu",))
    monkeypatch.setattr(report_store, "CELLS", {
        "sft=small": (sft("small"), {"mmlu": 0.30}),
        "sft=big": (sft("big"), {"mmlu": 0.70}),
        "model=small,data=uf,alg=dpo,seed=1": ({**sft("small"), "data": "uf", "algorithm": "dpo",
                                                "seed": 1}, {"mmlu": 0.45}),
    })
    store = fill_store(tmp_path / "runs", build_plan())
    results = load_results(store, "toy")
    stats = group_stats(results)
    small = results.frame.set_index("cell").value
    dpo = stats["model=small,data=uf,alg=dpo"]["bench:mmlu"]
    # against its own SFT (30 %), not the mean of both baselines (50 %)
    assert dpo.test.delta == pytest.approx(small["model=small,data=uf,alg=dpo,seed=1"]
                                           - small["sft=small"])
    assert dpo.test.delta > 5 and not dpo.within_noise
    out = report(store, tmp_path / "out", formats=["md"])
    assert not out.notes
    lines = read(tmp_path / "out" / "tablesmoke.md").splitlines()
    assert sum("(SFT)" in line for line in lines) == 2  # each baseline has its own row


def test_figures_draw_one_base_model_against_its_own_sft(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import report_store
    from ablate.report.figures import figure_1, figure_3

    def sft(model):
        return {"model": model, "data": "none", "algorithm": "sft", "reward_model": "none",
                "prompts": "none", "seed": None}

    monkeypatch.setattr(report_store, "BENCHMARKS", ("gsm8k", "mmlu"))
    monkeypatch.setattr(report_store, "CELLS", {
        "sft=small": (sft("small"), {"gsm8k": 0.20, "mmlu": 0.30}),
        "sft=big": (sft("big"), {"gsm8k": 0.70, "mmlu": 0.70}),
        "model=big,data=uf,alg=ppo,rm=uf-13b,prompts=uf,seed=1": (
            {**sft("big"), "data": "uf", "algorithm": "ppo", "reward_model": "uf-13b",
             "prompts": "uf", "seed": 1}, {"gsm8k": 0.60, "mmlu": 0.70})})
    results = load_results(fill_store(tmp_path / "runs", build_plan()), "toy")
    stats = group_stats(results)
    fig = figure_3(results, stats)
    [line] = [l for l in fig.axes[0].get_lines() if l.get_label() == "SFT"]
    assert line.get_ydata()[0] == stats["sft=big"]["bench:gsm8k"].value  # the bars' own SFT
    fig = figure_1(results, stats)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0] == "big (SFT)" and not any("small" in label for label in labels)


def test_all_formats_and_determinism(toy_store, tmp_path):
    first = report(toy_store, tmp_path / "a", tables=["smoke", "4", "cost"], figures=["1", "2", "3"])
    report(toy_store, tmp_path / "b", tables=["smoke", "4", "cost"], figures=["1", "2", "3"])
    names = sorted(p.name for p in first.files)
    for expected in ("tablesmoke.md", "tablesmoke.csv", "tablesmoke.tex", "table4.md", "tablecost.csv",
                     "tables.tex", "index.html", "figure1.png", "figure2.pdf", "figure3.png"):
        assert expected in names
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == names  # no temp files left
    for name in names:
        if name.endswith((".md", ".csv", ".tex")):
            assert read(tmp_path / "a" / name) == read(tmp_path / "b" / name), name
    md = read(tmp_path / "a" / "tablesmoke.md")
    assert "± " in md and "†" in md and "within noise" in md
    tex = read(tmp_path / "a" / "tablesmoke.tex")
    assert r"\cellcolor{blue!15}" in tex and r"\cellcolor{orange!25}" in tex and r"$^\dagger$" in tex
    csv_lines = read(tmp_path / "a" / "tablesmoke.csv").splitlines()
    assert csv_lines[0].startswith("table,grid,row,Cell,column,key,value,shown,sd,n_seeds,ci_low")
    assert any(",1,better," in line or ",0,better," in line for line in csv_lines)


def test_html_is_self_contained_with_cell_details(toy_store, tmp_path):
    report(toy_store, tmp_path, tables=["smoke"], figures=["1", "3"])
    page = read(tmp_path / "index.html")
    assert page.count("data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page and "<link" not in page
    details = detail_json(page)
    dpo = next(d for d in details.values() if d["title"].startswith("+DPO") and d["benchmarks"])
    assert "95% CI" in dpo["summary"] and "vs SFT" in dpo["summary"]
    assert dpo["seeds"] == "1, 2" and len(dpo["runs"].split()) >= 4
    assert dpo["examples"] and dpo["examples"][0]["href"].endswith("outputs.jsonl")
    assert "GSM8k" in [b[0] for b in dpo["benchmarks"]]


def test_missing_cells_are_missing_not_zero(tmp_path):
    store = fill_store(tmp_path / "runs", build_plan(), skip=(f"{PPO_MIXED}/mmlu",))
    out = report(store, tmp_path / "out")
    md = read(tmp_path / "out" / "tablesmoke.md")
    row = next(line for line in md.splitlines() if "Mixed prompts" in line)
    assert row.count("—") == 3 and " 0.0 " not in row  # MMLU, Factuality, Average
    assert "missing (not zero): 3 cell(s)" in md
    assert "jobs to run (`ablate grid grids/toy.yaml` runs them)" in md and "mmlu: run eval" in md
    assert not out.notes


def test_corrupt_result_is_named_and_skipped(toy_store, tmp_path):
    plan = build_plan()
    cell = next(c for c in plan.cells if c.name == PPO_MIXED)
    bad = toy_store.step_dir(plan.steps[cell.evals["gsm8k"]]) / "result.json"
    bad.write_text("{not json")
    scores = toy_store.step_dir(plan.steps[cell.evals["mmlu"]]) / "scores.jsonl"
    scores.write_text('{"item_id": "x"}\n')
    out = report(toy_store, tmp_path / "out")
    assert any(str(bad) in note and "corrupt result skipped" in note for note in out.notes)
    assert any(f"{scores}:1" in note for note in out.notes)
    md = read(tmp_path / "out" / "tablesmoke.md")
    assert str(bad) in md
    row = next(line for line in md.splitlines() if "Mixed prompts" in line)
    assert row.split("|")[2].strip() == "—"  # GSM8k missing, MMLU still shown (without CI)


@pytest.mark.parametrize("bad", ["NaN", "Infinity"])
def test_non_finite_numbers_are_corrupt_results_named_by_file(toy_store, tmp_path, bad):
    """Python's json writes NaN and Infinity; a NaN item score would make every bootstrap
    comparison False (p = 0, no CI) without a word."""
    plan = build_plan()
    cell = next(c for c in plan.cells if c.name == PPO_MIXED)
    result = toy_store.step_dir(plan.steps[cell.evals["gsm8k"]]) / "result.json"
    result.write_text(result.read_text().replace('"value": ', f'"value": {bad}, "was": ', 1))
    scores = toy_store.step_dir(plan.steps[cell.evals["mmlu"]]) / "scores.jsonl"
    lines = scores.read_text().splitlines()
    lines[3] = json.dumps({"item_id": "mmlu-3", "score": float(bad.lower().replace("inity", ""))})
    scores.write_text("\n".join(lines) + "\n")
    out = report(toy_store, tmp_path / "out")
    assert any(str(result) in note and "finite number" in note for note in out.notes)
    assert any(f"{scores}:4" in note and "finite number" in note for note in out.notes)
    stats = group_stats(load_results(toy_store, "toy"))
    mmlu = stats["data=uf,alg=ppo,rm=uf-13b,prompts=mixed"]["bench:mmlu"]
    assert mmlu.ci is None and mmlu.test is None  # shown without a CI, not with a fake p of 0


def test_a_metric_that_is_not_the_mean_of_its_items_gets_no_ci_or_test(toy_store, tmp_path):
    """XSTest reports refusal F1 while its items score 'classified correctly': bootstrapping the
    items would test accuracy and print it beside F1 (once with its CI on the other side of 0)."""
    plan = build_plan()
    for cell in plan.cells:
        result = toy_store.step_dir(plan.steps[cell.evals["mmlu"]]) / "result.json"
        data = json.loads(result.read_text())
        data.update(value=data["value"] * 0.8, category_score=data["value"] * 0.8, metric="f1")
        result.write_text(json.dumps(data))
    results = load_results(toy_store, "toy")
    assert results.not_resampled == {"mmlu": "f1"}
    stats = group_stats(results)
    dpo = stats["data=uf,alg=dpo"]
    for key in ("bench:mmlu", "factuality", "average"):
        assert dpo[key].value is not None and dpo[key].ci is None and dpo[key].test is None, key
    assert dpo["bench:gsm8k"].ci is not None and dpo["bench:gsm8k"].test is not None
    out = report(toy_store, tmp_path / "out", formats=["md"])
    assert "no CI or paired test for MMLU (f1)" in read(tmp_path / "out" / "tablesmoke.md")
    assert not out.notes


def test_figure_1_measures_each_bar_against_the_model_it_was_trained_from(toy_store):
    """DPO and both PPO cells start from the SFT model: each gain is over the SFT bar, not over
    the bar drawn before it (PPO did not start from DPO)."""
    import matplotlib

    matplotlib.use("Agg")
    from ablate.report.figures import BLUE, GREY, figure_1

    results = load_results(toy_store, "toy")
    stats = group_stats(results)
    value = {g: stats[g]["bench:gsm8k"].value for g in stats}
    sft = value["sft"]
    fig = figure_1(results, stats)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    expected = [fmt(value[g] - sft, signed=True) for g in
                ("data=uf,alg=dpo", "data=uf,alg=ppo,rm=uf-13b,prompts=uf", PPO_MIXED[:-7])]
    assert texts == expected
    ppo_over_dpo = value["data=uf,alg=ppo,rm=uf-13b,prompts=uf"] - value["data=uf,alg=dpo"]
    assert fmt(ppo_over_dpo, signed=True) not in texts
    # bars start at zero, every CI bar fits, both axes say what they show
    low, high = ax.get_ylim()
    tops = [stats[g]["bench:gsm8k"].ci[1] for g in stats]
    assert low <= 0 and high > max(tops) and ax.get_ylabel().startswith("GSM8k")
    assert [b.get_facecolor()[:3] for b in ax.patches][1] == matplotlib.colors.to_rgb(BLUE)

    # a tie with its parent at the shown precision is neither better nor worse
    stats["data=uf,alg=dpo"]["bench:gsm8k"].value = sft + 0.01
    fig = figure_1(results, stats)
    assert fig.axes[0].patches[1].get_facecolor()[:3] == matplotlib.colors.to_rgb(GREY)
    assert fig.axes[0].texts[0].get_text() == "+0.0"


def test_figure_1_keeps_a_missing_step_in_place(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from ablate.report.figures import figure_1

    store = fill_store(tmp_path / "runs", build_plan(),
                       skip=("data=uf,alg=dpo,seed=1/gsm8k", "data=uf,alg=dpo,seed=2/gsm8k"))
    results = load_results(store, "toy")
    stats = group_stats(results)
    fig = figure_1(results, stats)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(labels) == 4 and texts[0] == "missing"
    sft = stats["sft"]["bench:gsm8k"].value
    first_ppo = stats["data=uf,alg=ppo,rm=uf-13b,prompts=uf"]["bench:gsm8k"].value
    assert texts[1] == fmt(first_ppo - sft, signed=True)  # PPO's parent is the SFT model


def test_a_best_of_n_cell_whose_sampler_did_not_apply_is_noted(toy_store, tmp_path):
    plan = build_plan()
    cell = next(c for c in plan.cells if c.name == PPO_MIXED)
    result = toy_store.step_dir(plan.steps[cell.evals["mmlu"]]) / "result.json"
    result.write_text(json.dumps({**json.loads(result.read_text()), "sampler_applied": False}))
    report(toy_store, tmp_path / "out", formats=["md"])
    assert ("best-of-N does not apply to MMLU (log-likelihood scoring, or samples for pass@k)"
            in read(tmp_path / "out" / "tablesmoke.md"))


def test_cost_table(toy_store, tmp_path):
    out = report(toy_store, tmp_path, tables=["cost"], formats=["csv", "md"])
    md = read(tmp_path / "tablecost.md")
    assert ("| +PPO on UltraF., 13B UltraF. RM, UF prompts | 7200.0 | 180.0 | 2.050 | 4.000 | 0 |"
            in md)
    assert "| +DPO on UltraF., seed 2 | 3600.0 |" in md
    assert "| Tulu 2 13B (SFT) | 0.0 | 180.0 | 0.050 | 0.000 | 0 |" in md  # no GPUs recorded
    assert "—" not in md and "data=uf" not in md
    assert not (tmp_path / "index.html").exists() and out.files


def test_cost_table_says_cpu_for_a_cpu_run(toy_store, tmp_path):
    plan = build_plan()
    sft = next(c for c in plan.cells if c.is_baseline)
    for sid in sft.evals.values():
        done = toy_store.step_dir(plan.steps[sid]) / "DONE.json"
        done.write_text(json.dumps({**json.loads(done.read_text()), "gpus": 0, "device": "cpu"}))
    report(toy_store, tmp_path, tables=["cost"], formats=["md"])
    md = read(tmp_path / "tablecost.md")
    assert "| Tulu 2 13B (SFT) | 0.0 | 180.0 | 0.050 | 0 (CPU) | 0 |" in md
    assert "0 (CPU): every step of the cell recorded running on CPU" in md


def test_tables_3_and_4_pivot(toy_store, tmp_path):
    out = report(toy_store, tmp_path, tables=["3", "4"], formats=["md"])
    t3, t4 = out.tables
    assert [r.lead[0] for r in t3.rows] == ["13B UltraF. RM"]
    assert t3.rows[0].cells[0].text == "71.0"  # the RM's held-out accuracy, in percent
    assert [r.lead for r in t4.rows] == [["Tulu 2 13B (SFT)", ""], ["13B UltraF. RM", "UF"],
                                         ["13B UltraF. RM", "Mixed"]]
    assert t4.rows[2].cells[0].shade == "better"


def test_unknown_names_and_missing_grid(toy_store, tmp_path):
    with pytest.raises(ReportError, match="valid tables: 1, 2, 3, 4, 5, smoke, cost"):
        report(toy_store, tmp_path, tables=["6"])
    with pytest.raises(ReportError, match="valid figures: 1, 2, 3, kl-frontier"):
        report(toy_store, tmp_path, figures=["9"])
    with pytest.raises(ReportError, match=r"no results for grid 'nope' .*: run `ablate grid "
                       r"grids/nope.yaml` .*grids in this store: toy"):
        build_report(toy_store, "nope", ["smoke"], [], ["md"], tmp_path)


def test_cli(toy_store, tmp_path, monkeypatch):
    app = typer.Typer()
    app.command("report")(report_command)
    app.command("other")(lambda: None)
    runner = CliRunner()
    monkeypatch.setenv("ABLATE_STORE", str(toy_store.root))
    result = runner.invoke(app, ["report", "--all", "--grid", "toy", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "Every cell: SFT vs DPO and PPO on made-up scores" in result.output
    assert (tmp_path / "r" / "index.html").is_file()
    assert (tmp_path / "r" / "figure2.png").is_file() and (tmp_path / "r" / "tablecost.md").is_file()
    bad = runner.invoke(app, ["report", "--figure", "7", "--grid", "toy"])
    assert bad.exit_code == 2 and "valid figures: 1, 2, 3, kl-frontier" in bad.output
    none = runner.invoke(app, ["report"])
    assert none.exit_code == 2 and "tables: 1, 2, 3, 4, 5, smoke, cost" in none.output
    (tmp_path / "a-file").write_text("")
    unwritable = runner.invoke(app, ["report", "--all", "--grid", "toy", "--out",
                                     str(tmp_path / "a-file" / "r")])
    assert unwritable.exit_code == 2 and unwritable.exception is not None
    assert "cannot write the report" in unwritable.output
    assert str(tmp_path / "a-file" / "r") in unwritable.output and "Traceback" not in unwritable.output


def test_report_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, ablate.report.cli, ablate.report.build; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith("
            "('ablate.evals', 'ablate.train', 'ablate.launch', 'ablate.models'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


def test_smoke_grid_table_from_its_real_plan(tmp_path):
    """The demo's `ablate report --table smoke --grid smoke` on the real smoke plan."""
    from pathlib import Path

    from ablate.spec import load_grid
    from ablate.store import RunStore
    from report_store import write_eval

    plan = plan_of(load_grid(Path(__file__).resolve().parents[2] / "grids" / "smoke.yaml"))
    store = RunStore(tmp_path / "runs")
    # saved without the grid's words, as an older `ablate grid` did: they come from the source
    store.save_plan(plan, source=str(Path(__file__).resolve().parents[2] / "grids" / "smoke.yaml"))
    for i, cell in enumerate(plan.cells):
        for j, (bench, sid) in enumerate(cell.evals.items()):
            if cell.is_baseline or i == 1:  # the hh cell is not evaluated yet
                write_eval(store, plan.steps[sid], bench, 0.3 + 0.1 * i, seed=10 * i + j)
    out = build_report(store, "smoke", ["smoke"], [], ["md"], tmp_path / "out")
    md = (tmp_path / "out" / "tablesmoke.md").read_text()
    # two of the paper's eleven benchmarks: Reasoning is GSM8k alone and the Average is over two
    # categories, which the table must not pass off as the paper's aggregates
    assert "| GSM8k | MMLU | Factuality | Reasoning* | Average* |" in md
    assert ("* not the paper's aggregate: Reasoning = GSM8k only; Average = the mean of the 2 "
            "categories this grid has") in md
    assert "+DPO on UltraFeedback slice" in md and "SmolLM2 135M Instruct (SFT)" in md
    assert "### Every cell: SFT baseline vs DPO on two shipped preference slices" in md
    assert md.count("—") == 5  # the hh cell: 2 benchmarks, 2 categories, avg
    assert "train_dpo" in md and "(pending)" in md  # which jobs to run
    assert out.tables[0].rows[0].is_baseline


def test_results_of_another_judge_than_the_papers_are_marked(tmp_path):
    """XSTest judged by string matching under the paper protocol: the report says the number is
    not the paper's judge's; the paper's own judge, reached at another URL, is not marked."""
    from ablate.report.frame import load_results
    from ablate.spec.judges import PAPER_JUDGES
    from ablate.spec.plan import Cell, Plan, Step
    from ablate.store import RunStore

    def plan_with(judge):
        step = Step.of("eval", "eval xstest of m (SFT baseline)", {
            "benchmark": "xstest", "protocol": "paper", "seed": 42, "model": {"builtin": "m"},
            "judge": judge})
        cell = Cell("sft", {"model": "m", "data": "none", "algorithm": "sft",
                            "reward_model": "none", "prompts": "none", "seed": None},
                    None, {"xstest": step.id}, True)
        return Plan("judged", (cell,), {step.id: step})

    for judge, marked in (({"kind": "string_match"}, True),
                          ({**PAPER_JUDGES["xstest"].model_dump(),
                            "base_url": "http://127.0.0.1:8000/v1"}, False)):
        store = RunStore(tmp_path / str(marked))
        plan = plan_with(judge)
        store.save_plan(plan)
        step = next(iter(plan.steps.values()))
        folder = store.step_dir(step)
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({
            "kind": "eval", "benchmark": "xstest", "category": "safety", "protocol": "paper",
            "metric": "refusal_f1", "value": 80.0, "unit": "percent", "higher_is_better": True,
            "category_score": 80.0, "n_items": 10}))
        (folder / "DONE.json").write_text("{}")
        results = load_results(store, "judged")
        assert ("xstest" in results.other_judges) == marked
        if marked:
            assert "string match" in results.other_judges["xstest"]


def test_a_corrupt_done_marker_is_a_step_to_run_naming_its_file(toy_store):
    from ablate.report.frame import load_results

    plan = toy_store.load_plan("toy")
    step = plan.steps[plan.cells[0].evals["gsm8k"]]
    done = toy_store.step_dir(step) / "DONE.json"
    done.write_text("{cut sho")
    results = load_results(toy_store, "toy")
    assert any(f"corrupt: {done}" in line for line in results.missing_jobs), results.missing_jobs


def test_notes_give_each_difference_beyond_noise_with_its_paired_ci(toy_store, tmp_path):
    report(toy_store, tmp_path, formats=["md"])
    md = read(tmp_path / "tablesmoke.md")
    note = next(line for line in md.splitlines() if line.startswith("- beyond noise"))
    dpo = group_stats(load_results(toy_store, "toy"))["data=uf,alg=dpo"]["bench:mmlu"].test
    assert (f"+DPO on UltraF. / MMLU {fmt(dpo.delta, signed=True)} (95% CI "
            f"{fmt(dpo.ci_low, signed=True)} to {fmt(dpo.ci_high, signed=True)}, "
            f"p = {dpo.p_value:.3f})") in note
    assert "/ GSM8k" in note and "PPO on UltraF., 13B UltraF. RM, UF prompts / GSM8k" in note
    assert "DPO on UltraF. / GSM8k" not in note  # within noise (†)
    assert "Average" not in note and "Factuality" not in note  # they repeat the benchmarks


def test_report_all_on_a_grid_without_a_reasoning_benchmark(tmp_path, monkeypatch):
    """AlpacaEval 1 alone: Figure 1's first panel is that benchmark (no GSM8k, no reasoning
    category to draw), and the whole report is written without a traceback."""
    import report_store
    from typer.testing import CliRunner

    from ablate.cli import app

    monkeypatch.setattr(report_store, "BENCHMARKS", ("alpaca_eval_1",))
    monkeypatch.setattr(report_store, "CELLS", {
        name: (axes, {"alpaca_eval_1": 0.3 + 0.1 * k})
        for k, (name, (axes, _)) in enumerate(report_store.CELLS.items())})
    store = report_store.fill_store(tmp_path / "runs", report_store.build_plan())
    out = CliRunner().invoke(app, ["report", "--all", "--grid", "toy", "--store", str(store.root),
                                   "--out", str(tmp_path / "out")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "out" / "figure1.png").is_file()


def test_a_missing_per_item_scores_file_is_said_not_silently_dropped(toy_store, tmp_path):
    from ablate.report.frame import load_results

    plan = toy_store.load_plan("toy")
    cell = next(c for c in plan.cells if c.name == "data=uf,alg=dpo,seed=1")
    (toy_store.step_dir(plan.steps[cell.evals["mmlu"]]) / "scores.jsonl").unlink()
    results = load_results(toy_store, "toy")
    assert any("per-item scores missing" in p and "data=uf,alg=dpo,seed=1 / mmlu" in p
               for p in results.problems)
    row = results.frame[(results.frame.cell == cell.name) & (results.frame.benchmark == "mmlu")]
    assert row.ci_low.isna().all() and (row.status == "done").all()


def test_xstest_refusal_f1_gets_a_ci_and_a_paired_test_from_its_items(tmp_path):
    """Refusal F1 is not the mean of XSTest's item scores: the report recomputes F1 on resampled
    items (the fields `unsafe` and `refused` each item wrote) for its CI and its paired test, and
    says so only where the fields do not give the recorded value."""
    from ablate.report.frame import load_results
    from ablate.report.groups import group_stats
    from ablate.spec.metrics import refusal_f1
    from ablate.spec.plan import Cell, Plan, Step
    from ablate.store import RunStore, atomic_write_jsonl

    unsafe = [k % 2 == 0 for k in range(100)]
    runs = {"sft": [u and k % 10 == 0 for k, u in enumerate(unsafe)],  # refuses 10 of 50
            "dpo": [u and k % 5 != 4 for k, u in enumerate(unsafe)]}  # refuses 40 of 50
    steps, cells = {}, []
    for name, refused in runs.items():
        step = Step.of("eval", f"eval xstest of {name}", {
            "benchmark": "xstest", "protocol": "paper", "seed": 42, "model": {"builtin": name},
            "judge": {"kind": "string_match"}})
        steps[step.id] = step
        cells.append(Cell(name, {"model": "m", "data": "none" if name == "sft" else "hh",
                                 "algorithm": name, "reward_model": "none", "prompts": "none",
                                 "seed": None}, None, {"xstest": step.id}, name == "sft"))
    plan = Plan("xs", tuple(cells), steps)
    store = RunStore(tmp_path / "runs")
    store.save_plan(plan)
    for cell in plan.cells:
        folder = store.step_dir(plan.steps[cell.evals["xstest"]])
        folder.mkdir(parents=True)
        refused = runs[cell.name]
        atomic_write_jsonl(folder / "scores.jsonl", [
            {"item_id": str(k), "score": float(r == u), "unsafe": u, "refused": r,
             "label": "2_full_refusal" if r else "1_full_compliance"}
            for k, (u, r) in enumerate(zip(unsafe, refused))])
        value = 100 * refusal_f1(unsafe, refused)
        (folder / "result.json").write_text(json.dumps({
            "kind": "eval", "benchmark": "xstest", "category": "safety", "protocol": "paper",
            "metric": "refusal_f1", "value": value, "unit": "percent", "higher_is_better": True,
            "category_score": value, "n_items": 100, "scores_file": "scores.jsonl"}))
        (folder / "DONE.json").write_text("{}")
    results = load_results(store, "xs")
    assert results.not_resampled == {}
    stats = group_stats(results)
    sft, dpo = stats["sft"]["bench:xstest"], stats["dpo"]["bench:xstest"]
    assert sft.value == pytest.approx(100 * 20 / 60) and dpo.value == pytest.approx(100 * 80 / 90)
    assert sft.ci[0] < sft.value < sft.ci[1] and dpo.ci[0] < dpo.value < dpo.ci[1]
    assert dpo.test.delta == pytest.approx(dpo.value - sft.value) and dpo.test.n_pairs == 100
    assert dpo.test.ci_low > 20 and not dpo.test.within_noise and dpo.test.p_value < 0.01
    assert stats["dpo"]["safety"].test is not None
    # a scores file that does not give the recorded F1 is not resampled, and the report says so
    folder = store.step_dir(plan.steps[plan.cells[1].evals["xstest"]])
    data = json.loads((folder / "result.json").read_text())
    (folder / "result.json").write_text(json.dumps({**data, "value": 50.0,
                                                    "category_score": 50.0}))
    results = load_results(store, "xs")
    assert results.not_resampled == {"xstest": "refusal_f1"}
    assert group_stats(results)["dpo"]["bench:xstest"].test is None
