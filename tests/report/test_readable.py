"""What a reader sees: captions and names from the grid, rows told apart, the best of a column in
bold, numbers with their Δ and CI, model outputs, and the paper's numbers beside a grid's."""

import json
import re

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from ablate.report.build import build_report
from ablate.report.cli import report_command
from ablate.report.paper import PAPER_FILES, SHIPPED
from ablate.report.tables import fmt
from report_store import DESCRIPTION, build_plan, detail_json, fill_store, read

DPO = "data=uf,alg=dpo"


def cli(*args):
    app = typer.Typer()
    app.command("report")(report_command)
    app.command("other")(lambda: None)
    return CliRunner().invoke(app, ["report", *args])


def test_captions_and_names_come_from_the_grid(toy_store, tmp_path):
    out = build_report(toy_store, "toy", ["1", "2", "4"], [], ["md"], tmp_path)
    t1, t2, t4 = out.tables
    assert [t.title for t in out.tables] == [f"Table {n}: {DESCRIPTION}" for n in "124"]
    assert t1.rows[0].lead[0] == "Tulu 2 13B (SFT)"  # the grid's label for model "m"
    # "uf" is the data set's key and a prompt set's: "prompts.uf" labels the second
    assert t4.rows[1].lead == ["13B UltraF. RM", "UF"] and t1.rows[1].lead[0] == "UltraF."


def test_table_1_of_a_dpo_and_ppo_grid_tells_its_rows_apart(toy_store, tmp_path):
    out = build_report(toy_store, "toy", ["1"], [], ["md"], tmp_path)
    table = out.tables[0]
    leads = [tuple(r.lead) for r in table.rows]
    assert len(set(leads)) == len(leads)
    assert table.lead_labels == ["Source", "Alg.", "Reward model", "Prompts"]  # no empty # Samples
    assert leads[1] == ("UltraF.", "DPO", "", "")
    assert leads[2] == ("UltraF.", "PPO", "13B UltraF. RM", "UF")


def test_table_1_shows_the_pairs_a_model_was_trained_on(toy_store, tmp_path):
    plan = build_plan()
    for cell in plan.cells:
        if cell.axes["algorithm"] == "dpo":
            path = toy_store.step_dir(plan.steps[cell.model_step]) / "train_summary.json"
            path.write_text(json.dumps({"rows": 60908}))
    table = build_report(toy_store, "toy", ["1"], [], ["md"], tmp_path).tables[0]
    assert table.lead_labels[:2] == ["Source", "# Samples"]
    assert [r.lead[1] for r in table.rows] == ["", "60,908", "", ""]


def test_the_best_of_each_column_is_bold_in_its_own_direction(toy_store, tmp_path):
    out = build_report(toy_store, "toy", ["smoke"], [], ["md", "latex"], tmp_path)
    table = out.tables[0]
    column = {c.key: i for i, c in enumerate(table.columns)}
    by_row = {r.groups[0]: r for r in table.rows}

    def best(key):
        return [g for g, r in by_row.items() if r.cells[column[key]].best]

    values = {g: r.cells[column["bench:toxigen"]].stat.value for g, r in by_row.items()}
    # ToxiGen: lower is better, as its results say
    assert best("bench:toxigen") == [min(values, key=values.get)] == [DPO]
    assert best("bench:gsm8k") == ["data=uf,alg=ppo,rm=uf-13b,prompts=uf"]
    md = read(tmp_path / "tablesmoke.md")
    assert re.search(r"\| \*\*66\.5\*\* \|", md)
    assert r"\textbf{66.5}" in read(tmp_path / "tablesmoke.tex")


def test_html_numbers_carry_delta_and_ci_and_examples_show_the_output(toy_store, tmp_path):
    build_report(toy_store, "toy", ["smoke"], [], ["html"], tmp_path)
    page = read(tmp_path / "index.html")
    details = detail_json(page)
    # the DPO row's GSM8k cell: number, then Δ over SFT and the CI without a click
    cell = re.search(r"data-id='t0r1c0'><span class='v'>([^<]*)</span><span class='sub'>([^<]*)<",
                     page)
    assert cell and cell.group(1).startswith("43.0")
    assert re.fullmatch(r"Δ \+\d+\.\d · CI \d+\.\d–\d+\.\d", cell.group(2))
    assert "class='num better best'" in page
    detail = details["t0r1c0"]
    assert detail["title"] == "+DPO on UltraF.: GSM8k"  # words, not bench:gsm8k
    example = detail["examples"][0]
    assert example["name"].startswith("GSM8k, item gsm8k-0")  # the clicked benchmark first
    assert example["output"] == "The answer to item 0 is 40."
    # a few-shot prompt is cut at its start, so the item's own question stays
    assert example["prompt"].startswith("…") and example["prompt"].endswith(
        "Question: item 0 of gsm8k?\nAnswer:")


def test_table_2_vs_paper_prints_the_papers_number_beside_each_cell(toy_store, tmp_path):
    result = cli("--table", "2", "--vs-paper", "--grid", "toy", "--store", str(toy_store.root),
                 "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    paper = pd.read_csv(SHIPPED / PAPER_FILES["2"])
    uf_dpo = paper[(paper.dataset == "UltraFeedback (FG)") & (paper.algorithm == "DPO")].iloc[0]
    sft = paper.iloc[0]
    rows = {line.split("|")[1].strip() + line.split("|")[2].strip(): line
            for line in result.output.splitlines() if line.startswith("| ")}
    out = build_report(toy_store, "toy", ["2"], [], ["md"], tmp_path / "x").tables[0]
    ours = {c.key: c.stat.value for c in out.rows[1].cells}
    for key in ("factuality", "reasoning", "safety"):
        diff = fmt(ours[key] - uf_dpo[key], signed=True)
        assert f"(paper {uf_dpo[key]:.1f}, {diff})" in rows["UltraF.DPO"], key
    assert f"(paper {sft['factuality']:.1f}," in rows["Tulu 2 13B (SFT)"]
    assert "(paper -0.1, " in rows["**Avg. Δ (PPO − DPO)**"]  # the paper's own Avg. Δ row
    assert "rows matched by data set and algorithm" in result.output
    assert "paper 55.3, +" in read(tmp_path / "r" / "index.html")
    assert r"{\scriptsize (paper 55.3, +" in read(tmp_path / "r" / "table2.tex")
    csv = read(tmp_path / "r" / "table2.csv").splitlines()
    assert csv[0].endswith(",best,paper_value,minus_paper")


def test_vs_paper_on_a_table_without_paper_cells_is_one_clear_error(toy_store):
    result = cli("--table", "smoke", "--vs-paper", "--grid", "toy", "--store",
                 str(toy_store.root))
    assert result.exit_code == 2 and "tables 1, 2, 3, 4, 5" in result.output
    assert "Traceback" not in result.output


def test_paper_tables_render_from_a_clean_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ../shared here: the CSVs shipped with the package
    result = cli("--paper", "--table", "2", "--format", "md")
    assert result.exit_code == 0, result.output
    assert "| UltraFeedback (FG) | PPO | 56.0 |" in result.output.replace("**", "")
    assert (tmp_path / "reports" / "paper" / "table2.md").is_file()


def test_missing_grid_names_the_command_that_makes_it(toy_store, tmp_path):
    result = cli("--table", "1", "--store", str(toy_store.root))
    assert result.exit_code == 2
    assert "run `ablate grid grids/table1.yaml`" in result.output.replace("\n", " ")


def test_a_plan_saved_without_its_words_takes_them_from_its_grid_file(toy_store, tmp_path,
                                                                       monkeypatch):
    """As an older `ablate grid` saved it: the source path as given, relative to where it ran
    (beside the store), and the report run from elsewhere."""
    toy_store.save_plan(build_plan(), source="grids/toy.yaml")
    grids = toy_store.root.parent / "grids"
    grids.mkdir()
    (grids / "toy.yaml").write_text("name: toy\ndescription: From the grid file\n"
                                    "labels: {m: Base M, uf: UF data}\n")
    monkeypatch.chdir(tmp_path / "runs" / "grids")
    table = build_report(toy_store, "toy", ["1"], [], ["md"], tmp_path / "out").tables[0]
    assert table.title == "Table 1: From the grid file"
    assert [r.lead[0] for r in table.rows[:2]] == ["Base M (SFT)", "UF data"]


def real_grid_store(tmp_path, name, renamed: dict[str, str] | None = None):
    """A store of a grid of grids/ as planned, every eval with made-up per-item scores;
    ``renamed``: data and prompt-set names replaced in the grid's text first."""
    from pathlib import Path

    from ablate.cli import plan_of
    from ablate.spec import load_grid
    from ablate.store import RunStore, atomic_write_json
    from report_store import write_eval

    grid = Path(__file__).resolve().parents[2] / "grids" / f"{name}.yaml"
    if renamed:
        text = grid.read_text()
        for old, new in renamed.items():
            text = text.replace(f"name: {old}}}", f"name: {new}}}")
        tmp_path.mkdir(parents=True, exist_ok=True)
        grid = tmp_path / grid.name
        grid.write_text(text)
    plan = plan_of(load_grid(grid))
    store = RunStore(tmp_path / "runs")
    store.save_plan(plan, source=str(grid))
    for i, cell in enumerate(plan.cells):
        for j, (bench, sid) in enumerate(cell.evals.items()):
            if not store.step_dir(plan.steps[sid]).is_dir():  # best-of-N cells share some
                write_eval(store, plan.steps[sid], bench, 0.3 + 0.05 * i, seed=10 * i + j)
    for step in plan.steps.values():
        if step.kind == "train_rm":
            store.step_dir(step).mkdir(parents=True, exist_ok=True)
            atomic_write_json(store.step_dir(step) / "result.json", {
                "kind": "reward_model", "unit": "fraction", "metric": "heldout_pair_accuracy",
                "value": 0.7})
            atomic_write_json(store.step_dir(step) / "DONE.json", {"step": step.id})
    return store


def test_tables_3_and_4_vs_paper_match_rows_by_reward_model_and_prompts(tmp_path):
    """The real Table 3 and 4 grids: each reward model's row (and Table 4's prompt set) beside
    the paper's, column by column as the paper's CSV names them."""
    t3 = pd.read_csv(SHIPPED / "table3_reward_models.csv").set_index("reward_model")
    t4 = pd.read_csv(SHIPPED / "table4_policy_prompts.csv")
    for name in ("3", "4"):
        store = real_grid_store(tmp_path / name, f"table{name}")
        result = cli("--table", name, "--vs-paper", "--grid", f"table{name}", "--store",
                     str(store.root), "--out", str(tmp_path / name / "r"))
        assert result.exit_code == 0, result.output
        assert "No paper row" not in result.output and "rows matched by reward model" in result.output
        table = build_report(store, f"table{name}", [name], [], ["md"], tmp_path / name / "x",
                             vs_paper=True).tables[0]
        for row in table.rows:
            cells = {(c.key, dict(col.where).get("algorithm")): c
                     for col, c in zip(table.columns, row.cells)}
            if name == "3":
                paper = t3.loc[row.lead[0]]
                assert cells[("bench:gsm8k", "ppo")].paper == paper["ppo_gsm_acc"]
                assert cells[("delta:average", "bon")].paper == paper["best_of_n_delta_over_sft"]
                assert not cells[("rm:accuracy", None)].has_paper
            else:
                rm = row.lead[0].replace(" RM", "")
                paper = t4[(t4.reward_model == rm) & (t4.prompts == row.lead[1])] \
                    if not row.is_baseline else t4[t4.prompts.isna()]
                assert cells[("coding", "ppo")].paper == paper.iloc[0]["coding"], row.lead
        assert r"{\scriptsize (paper " in read(tmp_path / name / "r" / f"table{name}.tex")


# the paper grids' published splits and prompts -> their raw-source rebuilds (registry names)
RAW_REBUILDS = {"tulu25-ultrafeedback-mean-aspects": "ultrafeedback-fg",
                "tulu25-preference-big-mixture": "rm-mix",
                "tulu25-ultrafeedback-prompts": "ultrafeedback-prompts"}


def paper_numbers(store, name, out):
    table = build_report(store, f"table{name}", [name], [], ["md"], out, vs_paper=True).tables[0]
    return [(tuple(row.lead), [(cell.has_paper, cell.paper) for cell in row.cells])
            for row in table.rows], table.notes[0]


@pytest.mark.parametrize("name", ["3", "4", "5"])
def test_a_published_split_and_its_raw_rebuild_find_the_same_paper_row(tmp_path, name):
    """The real Tables 3-5 grids as shipped (tulu25-* data and prompts) and with their raw-source
    rebuilds instead: every row beside the same paper row, the same numbers."""
    published = real_grid_store(tmp_path / "published", f"table{name}")
    rebuilt = real_grid_store(tmp_path / "rebuilt", f"table{name}", RAW_REBUILDS)
    assert "tulu25-" not in (tmp_path / "rebuilt" / f"table{name}.yaml").read_text()
    ours, note = paper_numbers(published, name, tmp_path / "a")
    theirs, rebuilt_note = paper_numbers(rebuilt, name, tmp_path / "b")
    assert "No paper row" not in note and "No paper row" not in rebuilt_note
    assert any(paper is not None for _, cells in ours for _, paper in cells)
    assert ours == theirs


def test_table_2_finds_the_same_row_for_a_published_split_and_its_rebuild(tmp_path):
    paper = pd.read_csv(SHIPPED / PAPER_FILES["2"])
    uf_dpo = paper[(paper.dataset == "UltraFeedback (FG)") & (paper.algorithm == "DPO")].iloc[0]
    for data in ("ultrafeedback-fg", "tulu25-ultrafeedback-mean-aspects"):
        store = fill_store(tmp_path / data, build_plan(data_name=data))
        table = build_report(store, "toy", ["2"], [], ["md"], tmp_path / data / "r",
                             vs_paper=True).tables[0]
        cells = {col.key: cell for col, cell in zip(table.columns, table.rows[1].cells)}
        assert table.rows[1].lead[:2] == ["UltraF.", "DPO"], data
        assert [cells[c].paper for c in ("factuality", "safety")] == \
            [uf_dpo.factuality, uf_dpo.safety], data


def test_table_5_vs_paper_matches_each_recipe_with_its_paper_row(tmp_path):
    """The real Table 5 grid: SFT, DPO on UltraFeedback, PPO with the 13B and 70B UltraFeedback
    RMs on UltraFeedback prompts and the 70B one on mixed prompts; each row beside its paper row,
    matched by what trained it (not by the row's position or label)."""
    from pathlib import Path

    from ablate.cli import plan_of
    from ablate.spec import load_grid
    from ablate.store import RunStore
    from report_store import write_eval

    grid = Path(__file__).resolve().parents[2] / "grids" / "table5.yaml"
    plan = plan_of(load_grid(grid))
    store = RunStore(tmp_path / "runs")
    store.save_plan(plan, source=str(grid))
    for i, cell in enumerate(plan.cells):
        for j, (bench, sid) in enumerate(cell.evals.items()):
            write_eval(store, plan.steps[sid], bench, 0.3 + 0.05 * i, seed=10 * i + j)
    result = cli("--table", "5", "--vs-paper", "--grid", "table5", "--store", str(store.root),
                 "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    paper = pd.read_csv(SHIPPED / PAPER_FILES["5"]).set_index("model")
    out = build_report(store, "table5", ["5"], [], ["md"], tmp_path / "x").tables[0]
    expected = {"Tulu 2 13B (SFT)": "TULU 2 13B SFT",
                "+DPO on UltraF. (fine-grained)": "TULU 2+DPO 13B",
                "+PPO on UltraF. (fine-grained), 13B UltraF. RM, UF prompts":
                    "TULU 2+PPO 13B (13B UFRM)",
                "+PPO on UltraF. (fine-grained), 70B UltraF. RM, UF prompts":
                    "TULU 2+PPO 13B (70B UFRM)",
                "+PPO on UltraF. (fine-grained), 70B UltraF. RM, Mixed prompts":
                    "TULU 2+PPO 13B (70B UFRM+MP)"}
    lines = {line.split("|")[1].strip(): line for line in result.output.splitlines()
             if line.startswith("| ")}
    assert len(out.rows) == len(expected)
    for row in out.rows:
        theirs = paper.loc[expected[row.lead[0]]]
        ours = {c.key: c.stat.value for c in row.cells}
        diff = fmt(ours["reasoning"] - theirs["reasoning"], signed=True)
        assert f"(paper {theirs['reasoning']:.1f}, {diff})" in lines[row.lead[0]], row.lead[0]
    assert "rows matched by recipe" in result.output and "No paper row" not in result.output
    assert r"{\scriptsize (paper 53.1, " in read(tmp_path / "r" / "table5.tex")
