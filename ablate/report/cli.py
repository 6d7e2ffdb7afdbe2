"""``ablate report``: the paper's tables and figures from the run store.

``ablate.cli`` mounts ``report_command`` on the top-level app: ``app.command("report")(report_command)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ablate.report.build import ReportError, build_report
from ablate.report.figures import FIGURES
from ablate.report.paper import SHIPPED
from ablate.report.render import markdown
from ablate.report.tables import TABLES

console = Console()


def report_command(
        table: List[str] = typer.Option([], "--table", help="Table: " + ", ".join([*TABLES, "cost"])),
        figure: List[str] = typer.Option([], "--figure", help="Figure: " + ", ".join(FIGURES)),
        everything: bool = typer.Option(False, "--all", help="Every table and figure of the grid, and the cost table"),
        grid: Optional[str] = typer.Option(None, "--grid", help="Grid name in the store [default: the table's own grid]"),
        store: Optional[Path] = typer.Option(None, "--store", help="Run store [default: $ABLATE_STORE or ./runs]"),
        fmt: List[str] = typer.Option(["all"], "--format", help="md, csv, latex, html or all"),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder [default: reports/<grid>/]"),
        paper: bool = typer.Option(False, "--paper", help="The paper's Tables 1, 2, 5 from its "
                                   "per-category numbers (shipped with ablate), not the store"),
        paper_dir: Optional[Path] = typer.Option(None, "--paper-dir", help="With --paper: read the "
                                                 "paper's CSVs from this folder instead"),
        vs_paper: bool = typer.Option(False, "--vs-paper", help="Tables 1-5: the paper's "
                                      "number beside each cell, and the difference"),
) -> None:
    """Rebuild the paper's tables and figures from the run store, with 95% CIs and noise marks."""
    if not (table or figure or everything or paper or paper_dir):
        console.print("[red]error:[/] say what to build: --table NAME, --figure NAME or --all "
                      f"(tables: {', '.join([*TABLES, 'cost'])}; figures: {', '.join(FIGURES)})", soft_wrap=True)
        raise typer.Exit(2)
    root = store or Path(os.environ.get("ABLATE_STORE", "runs"))
    paper_csvs = (paper_dir or SHIPPED) if paper or paper_dir else None
    try:
        report = build_report(root, grid, list(table), list(figure), list(fmt), out, everything,
                              paper_csvs, vs_paper)
    except (ReportError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    except OSError as exc:  # an unwritable or full report folder; the error names the file
        console.print(f"[red]error:[/] cannot write the report: {exc}", highlight=False,
                      soft_wrap=True)
        raise typer.Exit(2)
    for built in report.tables:
        typer.echo(markdown(built))
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"wrote {len(report.files)} files to {report.out_dir}", highlight=False)
