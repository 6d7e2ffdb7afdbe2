"""``ablate eval MODEL --benchmarks gsm8k,ifeval --protocol paper``: the suite outside a grid.

The lead mounts ``eval_command`` on the main app (``app.command("eval")(eval_command)``); ``app``
here also runs on its own (``python -m ablate.evals.cli``).
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def model_spec_for(model: str) -> dict:
    """A built-in name, a local folder (one that exists, or a name no hub id looks like: absolute,
    relative with ./ or ../, ~, or more than one /), or else a hub id (``id@revision`` allowed)."""
    from ablate.models import BUILTIN_MODELS

    if model in BUILTIN_MODELS:
        return {"builtin": model}
    if Path(model).expanduser().exists() or model.startswith(("/", ".", "~")) \
            or model.count("/") > 1:
        return {"path": str(Path(model).expanduser())}
    hub, _, revision = model.partition("@")
    return {"hub": hub, "revision": revision or None}


def run_suite(model: str, benchmarks: list[str], protocol: str, out: Path, limit: int | None = None,
              data_dir: Path | None = None, judge: str | None = None,
              max_new_tokens: int | None = None, seed: int = 0) -> dict:
    """Run each benchmark; one that fails is recorded with its error and the others still run."""
    from ablate.evals import average, category_scores, get_benchmark
    from ablate.evals.runner import evaluate_benchmark
    from ablate.models import resolve_model
    from ablate.store import atomic_write_json

    for name in benchmarks:
        get_benchmark(name)  # unknown names fail before any model is loaded
    model_dir = resolve_model(model_spec_for(model))
    backend = None
    results, failures = {}, {}
    for name in benchmarks:
        console.print(f"[bold]{name}[/] ...")
        try:
            if backend is None:  # loaded once, shared by every benchmark
                from ablate.generate import load_backend
                backend = load_backend(model_dir)
            result = evaluate_benchmark(name, model_dir, out / name, protocol=protocol, limit=limit,
                                        seed=seed, max_new_tokens=max_new_tokens, judge=judge,
                                        data_dir=data_dir, cache_dir=out / ".cache",
                                        backend=backend, log=logging.getLogger("ablate.evals"))
            results[name] = result
        except Exception as exc:  # recorded, reported, and the next benchmark runs
            failures[name] = f"{type(exc).__name__}: {exc}"
            (out / name).mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / name / "error.json", {"benchmark": name, "error": failures[name],
                                                          "traceback": traceback.format_exc()})
    categories = category_scores({n: r["category_score"] for n, r in results.items()})
    summary = {"model": model, "protocol": protocol, "limit": limit,
               "results": {n: r["value"] for n, r in results.items()},
               "categories": categories, "average": average(categories), "failed": failures}
    atomic_write_json(out / "summary.json", summary)
    return summary


def eval_command(
        model: str = typer.Argument(..., help="Built-in name, local folder or hub id[@revision]"),
        benchmarks: str = typer.Option("gsm8k,mmlu", "--benchmarks", "-b",
                                       help="Comma-separated benchmark names, or 'all'"),
        protocol: str = typer.Option("paper", "--protocol", help="paper or full"),
        limit: Optional[int] = typer.Option(None, "--limit", help="First N items of each"),
        out: Path = typer.Option(Path("eval-results"), "--out", help="Output folder"),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir",
                                                help="Benchmark data [default: $ABLATE_DATA_DIR]"),
        judge: Optional[str] = typer.Option(None, "--judge", help="Judge name (see docs)"),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens"),
        seed: int = typer.Option(0, "--seed")) -> None:
    """Evaluate one model on benchmarks of the paper's suite; writes OUT/<benchmark>/result.json."""
    from ablate.evals import EvalError, benchmark_names
    from ablate.models import ModelError

    names = benchmark_names() if benchmarks == "all" else [b.strip() for b in benchmarks.split(",")
                                                           if b.strip()]
    try:
        summary = run_suite(model, names, protocol, out, limit, data_dir, judge, max_new_tokens,
                            seed)
    except (EvalError, ModelError) as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2)
    table = Table(title=f"{model} ({protocol}{f', limit {limit}' if limit else ''})")
    table.add_column("benchmark")
    table.add_column("value", justify="right")
    for name in names:
        value = summary["results"].get(name)
        table.add_row(name, f"{value:.1f}" if value is not None else
                      f"[red]failed[/]: {summary['failed'].get(name, '')[:80]}")
    for category, value in summary["categories"].items():
        table.add_row(f"[dim]{category}[/]", f"{value:.1f}")
    if summary["average"] is not None:
        table.add_row("[bold]average[/]", f"{summary['average']:.1f}")
    console.print(table)
    console.print(f"results in {out}")
    if summary["failed"]:
        raise typer.Exit(1)


app.command("eval")(eval_command)

if __name__ == "__main__":
    app()
