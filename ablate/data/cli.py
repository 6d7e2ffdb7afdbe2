"""``ablate data``: list, inspect and export the named preference datasets and prompt sets."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from ablate.data.load import DataUnavailable, load_preferences, load_prompts
from ablate.data.registry import (
    MIXTURES, PROMPT_SETS, SOURCES, dataset_names, origin, prompt_set_names,
)
from ablate.data.rows import PromptData, SchemaError, render_messages
from ablate.spec.schema import DataRef
from ablate.spec.steps import PromptsRef
from ablate.store import atomic_write_jsonl

app = typer.Typer(no_args_is_help=True, help="Preference datasets and prompt sets.")
console = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _own(path: str, fmt: Optional[str], columns: list[str], prompts: bool, max_rows, seed):
    """A file of the user's own, read as a grid would read it (``path:``, ``format:``)."""
    from ablate.data.own import resolve_source
    from ablate.spec.load import SpecError
    from ablate.spec.schema import PromptSetRef

    try:
        mapping = dict(c.split("=", 1) for c in columns)
    except ValueError:
        _fail(f"--column takes ablate's name=the file's name, got {columns}")
    try:
        ref = (PromptSetRef if prompts else DataRef)(path=path, format=fmt, columns=mapping,
                                                     max_rows=max_rows, sample_seed=seed)
        ref = resolve_source(ref)
        if prompts:
            return ref, load_prompts(PromptsRef(source="prompt_set", **ref.model_dump()))
        return ref, load_preferences(ref)
    except ValidationError as err:
        _fail(f"{path}: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors()))
    except (SpecError, DataUnavailable, ValueError) as exc:
        _fail(str(exc))


def _load(name: str, split: str, max_rows: Optional[int], seed: int):
    """A prompt set (``PromptData``) or a preference dataset (``PreferenceData``), by name."""
    try:
        if name in PROMPT_SETS:
            return load_prompts(PromptsRef(source="prompt_set", name=name, max_rows=max_rows,
                                           sample_seed=seed))
        if name in SOURCES or name in MIXTURES:
            return load_preferences(DataRef(name=name, max_rows=max_rows, sample_seed=seed), split)
    except (DataUnavailable, SchemaError, ValueError) as exc:
        _fail(str(exc))
    _fail(f"unknown dataset or prompt set {name!r}; datasets: {', '.join(dataset_names())}; "
          f"prompt sets: {', '.join(prompt_set_names())}")


def _length_row(label: str, lengths: list[int]) -> list[str]:
    if not lengths:
        return [label, "-", "-", "-", "-"]
    return [label, f"{statistics.mean(lengths):.0f}", f"{statistics.median(lengths):.0f}",
            str(min(lengths)), str(max(lengths))]


@app.command("list")
def list_names() -> None:
    """Every dataset and prompt set, with its source and the paper's size."""
    table = Table(title="preference datasets")
    for column in ("name", "group", "source", "paper rows", "licence"):
        table.add_column(column)
    for name, s in sorted(SOURCES.items()):
        table.add_row(name, s.group, origin(name),
                      f"{s.paper_rows:,}" if s.paper_rows else "-", s.licence)
    for name, m in sorted(MIXTURES.items()):
        table.add_row(name, "mixture", " + ".join(n for n, _ in m.components), "-", "per component")
    console.print(table)
    prompts = Table(title="prompt sets")
    for column in ("name", "source", "note"):
        prompts.add_column(column)
    for name, p in sorted(PROMPT_SETS.items()):
        prompts.add_row(name, p.from_preferences and f"prompts of {p.from_preferences}"
                        or f"{p.hub_id}:{p.split}", p.note)
    console.print(prompts)


@app.command()
def show(name: str = typer.Argument(..., help="dataset or prompt-set name"),
         split: str = typer.Option("train", "--split", help="train or test (held out)"),
         n_examples: int = typer.Option(2, "--n-examples", help="examples to print"),
         max_rows: Optional[int] = typer.Option(None, "--max-rows"),
         seed: int = typer.Option(0, "--seed"),
         fmt: Optional[str] = typer.Option(None, "--format", help="read NAME as a file of your "
                                           "own in this format (chat, messages, text)"),
         column: list[str] = typer.Option([], "--column", help="NAME=COLUMN: the file's column "
                                          "for ablate's NAME (repeatable)"),
         prompts: bool = typer.Option(False, "--prompts", help="the file is a prompt set")) -> None:
    """Counts, length statistics (characters), skipped rows per reason and a few examples; for a
    file of your own (``--format``), also where it is and its digest, as a grid records them."""
    if fmt is not None:
        ref, data = _own(name, fmt, column, prompts, max_rows, seed)
        console.print(f"file {ref.path}\ndigest {ref.digest}", highlight=False)
    else:
        data = _load(name, split, max_rows, seed)
        from ablate.data.own import override_path, resolve_source

        if override_path(name) is not None and name in SOURCES:
            ref = resolve_source(DataRef(name=name))
            console.print(f"read from $ABLATE_DATA_{name.upper().replace('-', '_')}: "
                          f"{override_path(name)} ({ref.digest})", highlight=False)
    rows, skipped, is_prompt_set = data.rows, data.skipped, isinstance(data, PromptData)
    what = "prompt set" if is_prompt_set else f"dataset, split {split}"
    console.print(f"[bold]{name}[/] ({what}): {len(rows):,} rows", highlight=False)
    source = SOURCES.get(name)
    if source and source.paper_rows:
        console.print(f"the paper's size: {source.paper_rows:,} rows; source {source.hub_id}")
    lengths = Table(title="length in characters")
    for column in ("field", "mean", "median", "min", "max"):
        lengths.add_column(column)
    lengths.add_row(*_length_row("prompt", [len(render_messages(r["prompt"])) for r in rows]))
    if not is_prompt_set:
        for key in ("chosen", "rejected"):
            lengths.add_row(*_length_row(key, [len(render_messages(r[key])) for r in rows]))
        turns = [sum(m["role"] == "user" for m in r["prompt"]) for r in rows]
        if turns:
            console.print(f"user turns per prompt: mean {statistics.mean(turns):.2f}, max {max(turns)}")
        if data.tied_pairs:  # kept as the source publishes them (H4's overall binarization)
            console.print(f"pairs rated equal by the source (margin 0, kept): {data.tied_pairs:,}",
                          highlight=False)
    console.print(lengths)
    table = Table(title="skipped rows")
    table.add_column("reason")
    table.add_column("count", justify="right")
    for reason, count in sorted(skipped.items(), key=lambda kv: -kv[1]):
        table.add_row(reason, f"{count:,}")
    if not skipped:
        table.add_row("(none)", "0")
    console.print(table)
    for i, row in enumerate(rows[:n_examples]):
        body = f"[bold]prompt[/]\n{escape(render_messages(row['prompt']))}"
        if is_prompt_set:
            body += f"\n\n[bold]reference[/] {escape(str(row.get('reference')))}"
        else:
            body += (f"\n\n[bold green]chosen[/]\n{escape(render_messages(row['chosen']))}"
                     f"\n\n[bold red]rejected[/]\n{escape(render_messages(row['rejected']))}")
            if row.get("margin") is not None:
                body += f"\n\nmargin {row['margin']}"
        console.print(Panel(body, title=f"example {i}", expand=False), highlight=False, markup=True)


@app.command()
def export(name: str = typer.Argument(..., help="dataset or prompt-set name"),
           file: Path = typer.Argument(..., help="output .jsonl"),
           split: str = typer.Option("train", "--split"),
           max_rows: Optional[int] = typer.Option(None, "--max-rows"),
           seed: int = typer.Option(0, "--seed")) -> None:
    """Write the converted rows, one JSON object per line."""
    rows = _load(name, split, max_rows, seed).rows
    atomic_write_jsonl(file, rows)
    console.print(f"wrote {len(rows):,} rows to {file}", highlight=False)


if __name__ == "__main__":
    app()
