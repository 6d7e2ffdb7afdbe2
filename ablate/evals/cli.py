"""``ablate eval MODEL --benchmarks gsm8k,ifeval --protocol paper``: the suite outside a grid.

``ablate eval --outputs FILE.jsonl`` scores outputs made by any engine as an eval step scores a
model's, and ``ablate eval --export-items BENCHMARK FILE.jsonl`` writes the items such a file
answers (``ablate.evals.outputs`` says what the lines hold).

``ablate.cli`` mounts ``eval_command`` on the main app (``app.command("eval")(eval_command)``); ``app``
here also runs on its own (``python -m ablate.evals.cli``).
"""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path
from typing import Callable, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from ablate.spec.benchmarks import BENCHMARKS, aggregate, paper_aggregate
from ablate.spec.expand import eval_config
from ablate.spec.judges import missing_credentials, settle_judge
from ablate.spec.load import SpecError, judges_file, shared_judges
from ablate.spec.schema import EvalConfig, JudgeSpec, ModelSpec, PassAtK

console = Console()
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def model_spec_for(model: str) -> ModelSpec:
    """A built-in name, a local folder (one that exists, or a name no hub id looks like: absolute,
    relative with ./ or ../, ~, or more than one /), or else a hub id (``id@revision`` allowed)."""
    from ablate.models import BUILTIN_MODELS

    if model in BUILTIN_MODELS:
        return ModelSpec(builtin=model)
    if Path(model).expanduser().exists() or model.startswith(("/", ".", "~")) \
            or model.count("/") > 1:
        return ModelSpec(path=str(Path(model).expanduser()))
    hub, _, revision = model.partition("@")
    return ModelSpec(hub=hub, revision=revision or None)


def suite_settings(benchmarks: list[str], protocol: str, limit: int | None,
                   max_new_tokens: int | None, seed: int | None) -> EvalConfig:
    """The command line's settings as a grid's ``eval`` section; what is not given keeps the
    grid's default."""
    given = {"protocol": protocol, "benchmarks": tuple(benchmarks),
             "limit": {b: limit for b in benchmarks} if limit else {},
             "max_new_tokens": {b: max_new_tokens for b in benchmarks} if max_new_tokens else {}}
    if seed is not None:
        given["seed"] = seed
    try:
        return EvalConfig.model_validate(given)
    except ValidationError as err:
        raise SpecError("; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}"
                                  for e in err.errors())) from None


def cli_judge(name: str | None) -> JudgeSpec | None:
    """``--judge NAME``: a judge defined in $ABLATE_JUDGES or ./judges.yaml, or string_match."""
    if name is None:
        return None
    if name == "string_match":
        return JudgeSpec(kind="string_match")
    judges = shared_judges()
    if name not in judges:
        raise SpecError(f"--judge {name!r} is not defined in {judges_file()} (known: "
                        f"{', '.join(sorted(judges)) or 'none'}); or use string_match")
    return judges[name]


def judges_for(names: list[str], protocol: str, judge: str | None) -> dict[str, JudgeSpec | None]:
    """Each benchmark's judge, as a grid's would be: ``--judge`` for every judged benchmark, else
    the paper's under protocol paper; an API judge without its key stops here, before any model
    is loaded."""
    named = cli_judge(judge)
    judges = {}
    for name in names:
        try:
            judges[name] = settle_judge(name, protocol, named)
        except ValueError as exc:
            raise SpecError(f"{name}'s judge {judge!r}: {exc}") from None
    problems = missing_credentials(
        {n: j for n, j in judges.items() if j}, os.environ,
        other="name another with --judge (defined in $ABLATE_JUDGES or ./judges.yaml"
              "{or_string_match})")
    if problems:
        raise SpecError("no usable judge, so nothing was run:\n  " + "\n  ".join(problems))
    return judges


def check_local_judges(judges: dict[str, JudgeSpec | None], protocol: str) -> None:
    """TruthfulQA's local judges are found (fetched where need be) before any model is loaded;
    without them nothing runs, and the message names them and how to provide them."""
    if judges.get("truthfulqa") is None:
        return
    from ablate.evals.base import EvalError
    from ablate.evals.truthfulqa import judge_folders

    try:
        judge_folders(judges["truthfulqa"], protocol)
    except EvalError as exc:
        raise SpecError(f"no usable judge, so nothing was run: {exc}") from None


def run_suite(model: str, benchmarks: list[str], protocol: str, out: Path, limit: int | None = None,
              data_dir: Path | None = None, judge: str | None = None,
              max_new_tokens: int | None = None, seed: int | None = None,
              engine: str = "auto") -> dict:
    """Run each benchmark; one that fails is recorded with its error and the others still run.
    ``engine``: the generation engine (``ablate.generate.load_backend``)."""
    from ablate.evals import get_benchmark
    from ablate.evals.runner import evaluate_benchmark
    from ablate.models import resolve_model

    for name in benchmarks:
        get_benchmark(name)  # unknown names fail before any model is loaded
    settings = suite_settings(benchmarks, protocol, limit, max_new_tokens, seed)
    judges = judges_for(benchmarks, protocol, judge)
    check_local_judges(judges, protocol)
    model_spec = model_spec_for(model)
    model_dir = resolve_model(model_spec, fetch=True)  # downloaded here: steps read the cache
    from ablate.generate import load_backend

    # loaded once, shared by every benchmark; before any runs, so that an engine that cannot
    # load the model is one error, not one per benchmark
    backend = load_backend(model_dir, engine)

    def evaluate(name: str):
        config = eval_config(settings, name, model=model_spec, judge=judges[name])
        return evaluate_benchmark(config, model_dir, out / name, data_dir=data_dir,
                                  cache_dir=out / ".cache", backend=backend,
                                  log=logging.getLogger("ablate.evals"))

    return run_each(benchmarks, out, evaluate, {"model": model, "protocol": protocol,
                                                "limit": limit})


def score_outputs(path: Path, benchmarks: list[str] | None, protocol: str, out: Path,
                  limit: int | None = None, data_dir: Path | None = None,
                  judge: str | None = None, seed: int | None = None) -> dict:
    """Score a file of outputs (``ablate.evals.outputs``), each benchmark it answers as an eval
    step would. Every line is checked against its benchmark's items before anything is written."""
    from ablate.evals import EvalError, benchmark_names, get_benchmark
    from ablate.evals.data import load_items
    from ablate.evals.outputs import read_outputs
    from ablate.evals.runner import evaluate_benchmark

    given = read_outputs(path, benchmark_names())
    names = [n for n in benchmark_names() if n in given]
    if benchmarks:
        for name in benchmarks:
            get_benchmark(name)
        skipped = [n for n in names if n not in benchmarks]
        names = [n for n in names if n in benchmarks]
        if skipped:
            console.print(f"[yellow]note:[/] {path} also answers {', '.join(skipped)}, "
                          "not among --benchmarks: not scored", highlight=False)
        if not names:
            raise EvalError(f"{path} answers none of --benchmarks {', '.join(benchmarks)}")
    settings = suite_settings(names, protocol, limit, None, seed)
    judges = judges_for(names, protocol, judge)
    check_local_judges(judges, protocol)
    configs = {}
    for name in names:
        config = eval_config(settings, name, judge=judges[name])
        if isinstance(config.sampler, PassAtK):  # n is the number of outputs each item has
            config = config.model_copy(update={"sampler": config.sampler.model_copy(
                update={"n": given[name].sample_count()})})
        items, _ = load_items(get_benchmark(name), protocol, config.limit, data_dir)
        present, _ = given[name].select(items, config)
        given[name].check(present, BENCHMARKS[name].scoring_under(protocol),
                          config.sampler.n if isinstance(config.sampler, PassAtK) else 1)
        configs[name] = config
    return run_each(names, out, lambda name: evaluate_benchmark(
        configs[name], path, out / name, data_dir=data_dir, cache_dir=out / ".cache",
        log=logging.getLogger("ablate.evals"), given=given[name]),
        {"outputs": str(path), "protocol": protocol, "limit": limit})


def export_items(benchmark: str, path: Path, protocol: str, limit: int | None = None,
                 data_dir: Path | None = None, max_new_tokens: int | None = None) -> int:
    """Write ``benchmark``'s items as they are scored (``ablate.evals.outputs.export_rows``);
    returns how many."""
    from ablate.evals import EvalEnv, get_benchmark
    from ablate.evals.data import load_items
    from ablate.evals.outputs import export_rows
    from ablate.store import atomic_write_jsonl

    bench = get_benchmark(benchmark)
    settings = suite_settings([benchmark], protocol, limit, max_new_tokens, None)
    config = eval_config(settings, benchmark)
    items, data_root = load_items(bench, protocol, config.limit, data_dir)
    env = EvalEnv(model_dir=Path("."), config=config, data_root=data_root)
    rows = export_rows(bench, items, env)
    atomic_write_jsonl(path, rows)
    return len(rows)


def run_each(names: list[str], out: Path, evaluate: Callable[[str], object],
             about: dict) -> dict:
    """Evaluate each benchmark and write OUT/summary.json; one that fails is recorded with its
    error and the others still run."""
    from ablate.store import atomic_write_json

    results, failures = {}, {}
    for name in names:
        console.print(f"[bold]{name}[/] ...")
        try:
            results[name] = evaluate(name)
        except Exception as exc:  # recorded, reported, and the next benchmark runs
            failures[name] = f"{type(exc).__name__}: {exc}"
            (out / name).mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / name / "error.json", {"benchmark": name, "error": failures[name],
                                                          "traceback": traceback.format_exc()})
    rolled = aggregate({n: r.category_score for n, r in results.items()}, names)
    average = rolled.pop("average")
    summary = {**about, "results": {n: r.value for n, r in results.items()},
               "categories": {c: v for c, v in rolled.items() if v is not None},
               "average": average, "partial": not paper_aggregate(names), "failed": failures}
    atomic_write_json(out / "summary.json", summary)
    return summary


def eval_command(
        model: Optional[str] = typer.Argument(
            None, help="Built-in name, local folder or hub id[@revision]"),
        benchmarks: Optional[str] = typer.Option(
            None, "--benchmarks", "-b", help="Comma-separated benchmark names, or 'all' "
            "[default: gsm8k,mmlu; with --outputs: those the file answers]"),
        protocol: str = typer.Option("paper", "--protocol", help="paper or full"),
        limit: Optional[int] = typer.Option(None, "--limit", help="First N items of each"),
        out: Path = typer.Option(Path("eval-results"), "--out", help="Output folder"),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir",
                                                help="Benchmark data [default: $ABLATE_DATA_DIR]"),
        judge: Optional[str] = typer.Option(None, "--judge", help="A judge defined in "
                                            "$ABLATE_JUDGES or ./judges.yaml, or string_match"),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens"),
        seed: Optional[int] = typer.Option(None, "--seed", help="[default: a grid's eval seed]"),
        engine: str = typer.Option("auto", "--engine", help="hf (transformers), vllm, or auto: "
                                   "$ABLATE_ENGINE, else vLLM on a GPU where installed, else hf"),
        outputs: Optional[Path] = typer.Option(
            None, "--outputs", help="Score this JSONL file of outputs made elsewhere instead of "
            "a model (lines: benchmark, item_id, output)"),
        export: Optional[tuple[str, Path]] = typer.Option(
            None, "--export-items", metavar="BENCHMARK FILE",
            help="Write BENCHMARK's items as scored (item_id, input, reference) to FILE (JSONL)")
        ) -> None:
    """Evaluate one model on benchmarks of the paper's suite; writes OUT/<benchmark>/result.json.
    Or score a file of outputs (--outputs), or export a benchmark's items (--export-items)."""
    from ablate.evals import EvalError, benchmark_names
    from ablate.generate import GenerationError
    from ablate.models import ModelError

    modes = [m for m, on in (("MODEL", model), ("--outputs", outputs),
                             ("--export-items", export)) if on is not None]
    if len(modes) != 1:
        given = f" (got {' and '.join(modes)})" if modes else ""
        console.print("[red]error:[/] give one of MODEL, --outputs FILE and --export-items "
                      f"BENCHMARK FILE{given}", highlight=False)
        raise typer.Exit(2)
    if benchmarks is None:
        names = None if outputs else ["gsm8k", "mmlu"]
    else:
        names = benchmark_names() if benchmarks == "all" else [
            b.strip() for b in benchmarks.split(",") if b.strip()]
    try:
        if export:
            count = export_items(export[0], export[1], protocol, limit, data_dir, max_new_tokens)
            console.print(f"{count} {export[0]} items ({protocol} protocol) in {export[1]}")
            return
        if outputs:
            summary = score_outputs(outputs, names, protocol, out, limit, data_dir, judge, seed)
            names = [n for n in benchmark_names() if n in summary["results"] or n in summary["failed"]]
        else:
            summary = run_suite(model, names, protocol, out, limit, data_dir, judge,
                                max_new_tokens, seed, engine)
    except (EvalError, ModelError, SpecError, GenerationError) as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2)
    label = model or str(outputs)
    table = Table(title=f"{label} ({protocol}{f', limit {limit}' if limit else ''})")
    table.add_column("benchmark")
    table.add_column("value", justify="right")
    for name in names:
        value = summary["results"].get(name)
        table.add_row(name, f"{value:.1f}" if value is not None else
                      f"[red]failed[/]: {summary['failed'].get(name, '')[:80]}")
    for category, value in summary["categories"].items():
        table.add_row(f"[dim]{category}[/]", f"{value:.1f}")
    if summary["average"] is not None:
        mark = "*" if summary["partial"] else ""
        table.add_row(f"[bold]average{mark}[/]", f"{summary['average']:.1f}")
    console.print(table)
    if summary["partial"]:
        console.print("* over the benchmarks run, not the paper's 11 in 6 categories")
    console.print(f"results in {out}")
    if summary["failed"]:
        raise typer.Exit(1)


app.command("eval")(eval_command)

if __name__ == "__main__":
    app()
