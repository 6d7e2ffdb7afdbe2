"""The proof: the paper's own per-category numbers in, the paper's Tables 1, 2 and 5 out."""

from pathlib import Path

import pandas as pd
import pytest

from ablate.report.categories import CATEGORIES
from ablate.report.groups import group_stats
from ablate.report.paper import CELL_TABLES, PAPER_FILES, load_paper_table
from ablate.report.render import csv_text, latex, markdown
from ablate.report.tables import TABLES, build_table, fmt

COLUMNS = [*CATEGORIES, "average"]
# Table 2's last row as printed in the paper.
PAPER_AVG_DELTA = ["-0.1", "+1.3", "+2.9", "-2.5", "+2.3", "+0.1", "+0.7"]


def built(paper_dir, name):
    results = load_paper_table(paper_dir, name)
    return results, build_table(TABLES[name], results, group_stats(results))


def csv_value(x) -> str:
    return "" if pd.isna(x) else f"{x:.1f}"


@pytest.mark.parametrize("name", ["1", "2", "5"])
def test_every_number_and_average_of_the_paper(paper_dir, name):
    data = pd.read_csv(paper_dir / PAPER_FILES[name])
    _, table = built(paper_dir, name)
    rows = [r for r in table.rows if not r.is_summary]
    assert len(rows) == len(data)
    for (_, expected), row in zip(data.iterrows(), rows):
        shown = [c.text for c in row.cells]
        assert shown == [csv_value(expected[c]) for c in COLUMNS], row.lead
        # missing stays missing, never zero
        for column, cell in zip(COLUMNS, row.cells):
            assert cell.missing == pd.isna(expected[column])


def test_averages_follow_from_the_categories(paper_dir):
    """Recomputed from the rounded categories alone, every average matches except where the mean
    lands exactly on .x5 (the paper rounded unrounded scores there)."""
    ties = []
    for name in PAPER_FILES:
        data = pd.read_csv(paper_dir / PAPER_FILES[name])
        for _, row in data.dropna(subset=list(CATEGORIES)).iterrows():
            mean = sum(row[c] for c in CATEGORIES) / len(CATEGORIES)
            if abs(round(mean * 100) % 10 - 5) == 0 and abs(mean * 100 - round(mean * 100)) < 1e-6:
                ties.append(fmt(mean) == f"{row['average']:.1f}")
                assert abs(mean - row["average"]) <= 0.05 + 1e-9
            else:
                assert fmt(mean) == f"{row['average']:.1f}", row.iloc[0]
    # 8 of the 30 complete rows are exact ties; rounding half up matches 5 of them, and no single
    # rule matches all 8: the paper rounded unrounded scores, so the loader keeps its Average.
    assert len(ties) == 8 and sum(ties) == 5


def test_table2_avg_delta_row(paper_dir):
    _, table = built(paper_dir, "2")
    summary = table.rows[-1]
    assert summary.is_summary and summary.lead[0].startswith("Avg. Δ")
    assert [c.text for c in summary.cells] == PAPER_AVG_DELTA
    assert [c.shade for c in summary.cells] == ["worse", "better", "better", "worse", "better",
                                                "better", "better"]
    assert "**Avg. Δ (PPO − DPO)** |  | -0.1 | +1.3 | +2.9 | -2.5 | +2.3 | +0.1 | +0.7 |" in markdown(table)


@pytest.mark.parametrize("name", ["1", "2", "5"])
def test_shading_against_the_sft_row(paper_dir, name):
    data = pd.read_csv(paper_dir / PAPER_FILES[name])
    _, table = built(paper_dir, name)
    sft = data.iloc[[r.is_baseline for r in table.rows if not r.is_summary].index(True)]
    for (_, expected), row in zip(data.iterrows(), [r for r in table.rows if not r.is_summary]):
        for column, cell in zip(COLUMNS, row.cells):
            if row.is_baseline or pd.isna(expected[column]):
                assert cell.shade is None
                continue
            diff = round(expected[column] - sft[column], 1)
            assert cell.shade == (None if diff == 0 else "better" if diff > 0 else "worse")


def test_known_cells_in_latex(paper_dir):
    _, t1 = built(paper_dir, "1")
    tex = latex(t1)
    # the best of a column is bold, ties included (StackExchange has 55.7 too)
    assert r"Chatbot Arena (2024) & 34,269 & \cellcolor{blue!15}\textbf{55.7}" in tex
    assert r"StackExchange & 500,000 & \cellcolor{blue!15}\textbf{55.7}" in tex
    assert r"\cellcolor{orange!25}58.1 & \cellcolor{blue!15}50.7 & \cellcolor{orange!25}51.5 \\" in tex
    assert r"SHP-2 & 500,000 & 55.4 &" in tex  # equal to SFT: no shade
    assert r"Llama 2 base" in tex and r"& -- & -- \\" in tex
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\cellcolor{blue!15}\textbf{61.0} \\" in tex  # UltraF. (fine-grained): best Average
    csv = csv_text(t1)
    assert "UltraF. (fine-grained),\"60,908\",Average,average,61.0,61.0," in csv


def test_inconsistent_reported_average_is_an_error(paper_dir):
    results = load_paper_table(paper_dir, "5")
    results.reported[("TULU 2 13B SFT", "average")] = 58.0
    with pytest.raises(ValueError, match="TULU 2 13B SFT.*58.0.*56.817"):
        group_stats(results)


def test_unknown_paper_table(paper_dir):
    with pytest.raises(ValueError, match="tables 1, 2, 5"):
        load_paper_table(paper_dir, "3")


@pytest.mark.parametrize("column, text", [("factuality", "55.4*"), ("average", "56.9†"),
                                          ("n_samples", "500k")])
def test_a_cell_that_is_not_a_number_names_file_row_and_column(paper_dir, tmp_path, column, text):
    data = pd.read_csv(paper_dir / PAPER_FILES["1"], dtype=str)
    row = data.index[data["source"] == "SHP-2"][0]
    data.loc[row, column] = text
    data.to_csv(tmp_path / PAPER_FILES["1"], index=False)
    with pytest.raises(ValueError) as info:
        load_paper_table(tmp_path, "1")
    message = str(info.value)
    assert str(tmp_path / PAPER_FILES["1"]) in message
    assert f"row {row + 2}, column {column!r}: {text!r} is not a number" in message


def test_shipped_tables_are_the_papers(paper_dir):
    shared = Path(__file__).resolve().parents[3] / "shared" / "paper"
    if not shared.is_dir():
        pytest.skip(f"needs the paper's CSVs in {shared} to compare with")
    for name in [*PAPER_FILES.values(), *(file for file, _ in CELL_TABLES.values())]:
        assert (paper_dir / name).read_bytes() == (shared / name).read_bytes(), name


def test_the_name_tables_name_each_paper_row_once():
    """data_sets.csv, reward_models.csv and recipes.csv key a data set by one registry name
    (``paper_data_set``), so no paper row is named twice."""
    from ablate.report.paper import SHIPPED

    names = {"data_sets.csv": ("table1", "table2"), "reward_models.csv": ("table3", "table4"),
             "recipes.csv": ("table5",)}
    for file, columns in names.items():
        assert "tulu25-" not in (SHIPPED / file).read_text(), file
        data = pd.read_csv(SHIPPED / file, dtype=str)
        for column in columns:
            named = data[column].dropna()
            assert named.is_unique and len(named) > 0, (file, column)
