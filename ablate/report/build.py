"""Assemble a report: results -> tables and figures -> files in the requested formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ablate.report.cost import cost_table
from ablate.report.figures import FIGURES, make_figure, save_figure
from ablate.report.frame import load_results
from ablate.report.groups import group_stats
from ablate.report.html import html_report
from ablate.report.paper import PAPER_FILES, VS_PAPER, compare_with_paper, load_paper_table
from ablate.report.render import csv_text, latex, latex_document, markdown
from ablate.report.tables import TABLES, TableResult, build_table
from ablate.store import RunStore, atomic_write_text

TABLE_NAMES = (*TABLES, "cost")
FORMATS = ("md", "csv", "latex", "html")


class ReportError(ValueError):
    pass


@dataclass
class Report:
    out_dir: Path
    tables: list[TableResult] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_names(tables: list[str], figures: list[str], formats: list[str]) -> None:
    for name in tables:
        if name not in TABLE_NAMES:
            raise ReportError(f"unknown table {name!r}; valid tables: {', '.join(TABLE_NAMES)}")
    for name in figures:
        if name not in FIGURES:
            raise ReportError(f"unknown figure {name!r}; valid figures: {', '.join(FIGURES)}")
    for name in formats:
        if name not in (*FORMATS, "all"):
            raise ReportError(f"unknown format {name!r}; valid: {', '.join(FORMATS)}, all")


def _write(report: Report, path: Path, text: str) -> None:
    atomic_write_text(path, text)
    report.files.append(path)


def write_tables(report: Report, tables: list[TableResult], formats: set[str]) -> None:
    fragments = []
    for table in tables:
        stem = report.out_dir / f"table{table.spec.name}"
        if "md" in formats:
            _write(report, stem.with_suffix(".md"), markdown(table))
        if "csv" in formats:
            _write(report, stem.with_suffix(".csv"), csv_text(table))
        if "latex" in formats:
            fragment = latex(table)
            fragments.append(fragment)
            _write(report, stem.with_suffix(".tex"), fragment)
    if fragments:
        _write(report, report.out_dir / "tables.tex", latex_document(fragments))


def build_report(store: RunStore | Path | str | None, grid: str | None, tables: list[str],
                 figures: list[str], formats: list[str], out_dir: Path | None = None,
                 everything: bool = False, paper_dir: Path | None = None,
                 vs_paper: bool = False) -> Report:
    """Build the requested tables/figures of one grid (or of the paper's CSVs) into ``out_dir``;
    ``vs_paper``: each cell of Tables 1-5 beside the paper's."""
    check_names(tables, figures, formats)
    wanted = set(FORMATS) if not formats or "all" in formats else set(formats)
    if paper_dir is not None:
        if vs_paper:
            raise ReportError("--vs-paper puts a grid's cells beside the paper's; --paper shows "
                              "the paper's tables alone: give one of them")
        return _paper_report(Path(paper_dir), tables or list(PAPER_FILES), wanted,
                             out_dir or Path("reports") / "paper")
    if grid is None:
        specs = {TABLES[t].grid for t in tables if t in TABLES}
        if len(specs) != 1 or figures or everything or "cost" in tables:
            raise ReportError("say which grid to report on: --grid NAME (a grid run into the store)")
        grid = specs.pop()
    store = store if isinstance(store, RunStore) else RunStore(store)
    if not store.plan_path(grid).is_file():
        raise ReportError(missing_grid(store, grid))
    results = load_results(store, grid)
    stats = group_stats(results)
    if everything:
        own = [name for name, spec in TABLES.items() if spec.grid == grid] or ["smoke"]
        tables = list(dict.fromkeys([*own, *tables, "cost"]))
        figures = list(dict.fromkeys([*figures, "1", "2", "3"]))
    report = Report(out_dir or Path("reports") / grid)
    report.notes += results.problems
    built = [cost_table(results) if name == "cost" else build_table(TABLES[name], results, stats)
             for name in tables]
    if vs_paper:
        comparable = [t for t in built if t.spec.name in VS_PAPER]
        if not comparable:
            raise ReportError(f"--vs-paper: the paper's rows match a grid's cells in tables "
                              f"{', '.join(VS_PAPER)} (by data set and algorithm; Tables 3 "
                              "and 4 by reward model and prompts, Table 5 by recipe); ask for "
                              "one of them ("
                              + " or ".join(f"--table {t}" for t in VS_PAPER) + ")")
        for table in comparable:
            compare_with_paper(table, results)
    report.tables = built
    write_tables(report, built, wanted)
    pngs = []
    for name in figures:
        fig = make_figure(name, results, stats)
        if fig is None:
            report.notes.append(f"figure {name}: no data for it in grid {grid!r} "
                                + ("(needs training metrics.jsonl with kl and reward)" if name in ("2", "kl-frontier")
                                   else "(needs the cells this figure compares)"))
            continue
        paths = save_figure(fig, report.out_dir / f"figure{name}")
        report.files += paths
        pngs.append((name, paths[0]))
    if "html" in wanted:
        page = html_report(f"ablate report: grid {grid}", built, pngs, results, stats, report.out_dir)
        _write(report, report.out_dir / "index.html", page)
    return report


def missing_grid(store: RunStore, grid: str) -> str:
    """No plan for ``grid`` in the store: the command that would make one, and the grids it has."""
    known = sorted(p.stem for p in (store.root / "grids").glob("*.json"))
    spec = Path("grids") / f"{grid}.yaml"
    where = "" if spec.is_file() else f" (the grid's YAML file; the ablate repository has {spec})"
    return (f"no results for grid {grid!r} in the store {store.root}: run `ablate grid {spec}`"
            f"{where} to produce them, or point --store at the store that has them; grids in "
            f"this store: {', '.join(known) or 'none'}")


def _paper_report(paper_dir: Path, tables: list[str], wanted: set[str], out_dir: Path) -> Report:
    report = Report(out_dir)
    sections = []
    for name in tables:
        if name not in PAPER_FILES:
            raise ReportError(f"the paper's CSVs give tables {', '.join(PAPER_FILES)}, not {name!r}")
        results = load_paper_table(paper_dir, name)
        stats = group_stats(results)
        table = build_table(TABLES[name], results, stats)
        report.tables.append(table)
        sections.append((table, results, stats))
    write_tables(report, report.tables, wanted)
    if "html" in wanted and sections:
        # One page per paper table (they come from different "grids"), concatenated.
        pages = [html_report(f"the paper's Table {t.spec.name}", [t], [], r, s, out_dir)
                 for t, r, s in sections]
        _write(report, out_dir / "index.html", pages[0] if len(pages) == 1 else
               _join_pages(pages))
    return report


def _join_pages(pages: list[str]) -> str:
    """Paper tables come from separate result sets: keep each page's script scoped in an iframe."""
    import html as html_mod

    frames = "".join(f"<iframe style='width:100%;height:720px;border:0' srcdoc=\"{html_mod.escape(p)}\">"
                     "</iframe>" for p in pages)
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>the paper's tables"
            f"</title></head><body>{frames}</body></html>\n")
