"""Scoring outputs made elsewhere (``ablate eval --outputs``) and exporting the items they answer
(``ablate eval --export-items``).

A file of outputs is scored through the path an eval step takes: the benchmark's own ``evaluate``
runs with an environment whose ``generate`` returns the file's outputs item by item (by position
in the item list, never by prompt text) and whose log-likelihoods are the file's, so extraction,
metric and judge are the benchmark's, and ``result.json``, ``scores.jsonl`` and ``outputs.jsonl``
are an eval step's. The protocol's stop strings cut each output as a generation backend cuts its
own; ``outputs.jsonl``'s prompt is the user turn and the assistant prefix without a chat template
(the engine's is not known here).

One JSON object per line: ``{"benchmark": "gsm8k", "item_id": "test-1", "output": "..."}``.

- ``output``: the reply, i.e. the text the model wrote after the item's ``assistant_prefix`` (see
  the export); a list of replies for pass@k (humaneval_plus, mbpp_plus), the same number for every
  item of a benchmark, which is the ``n`` of pass@k. Other benchmarks take one.
- Log-likelihood benchmarks (mmlu, truthfulqa's MC2) take ``"loglikelihoods"``: one number per
  choice, in the export's ``choices`` order; or ``"output"``: the chosen choice (mmlu ``"B"``,
  truthfulqa the answer's text), which stands for log-likelihood 0 for it and ``NOT_CHOSEN`` for
  the others (MMLU's accuracy is then that choice's; MC2 is 1 for a true answer, 0 for a false).

An item of the protocol that the file does not answer is missing: counted, named in result.json
(``given_outputs``) and left out of the score, never scored as wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ablate.evals.base import EvalEnv, EvalError
from ablate.spec.benchmarks import BENCHMARKS
from ablate.spec.steps import EvalStep

NOT_CHOSEN = -1e9  # the log-likelihood of a choice an "output" did not choose (finite for JSON)
MAX_PROBLEMS = 10  # problems a bad file's message lists
MAX_NAMED_MISSING = 50  # missing item ids result.json names


@dataclass(frozen=True)
class GivenOutput:
    line: int
    outputs: list[str] | None = None
    loglikelihoods: list[float] | None = None


@dataclass
class GivenOutputs:
    """One benchmark's outputs from a file: item id -> the line that answers it."""

    path: Path
    benchmark: str
    rows: dict[str, GivenOutput]
    sha256: str = ""

    def where(self, row: GivenOutput) -> str:
        return f"{self.path}:{row.line}"

    def select(self, items: list[dict], config: EvalStep) -> tuple[list[dict], list[str]]:
        """The items the file answers, in the protocol's order, and the ids of those it does not."""
        ids = {i["item_id"] for i in items}
        unknown = [(item_id, row) for item_id, row in self.rows.items() if item_id not in ids]
        if unknown:
            among = f"the {len(items)} items of {self.benchmark} ({config.protocol} protocol" + (
                f", limit {config.limit})" if config.limit else ")")
            raise EvalError("\n".join(
                [f"{self.where(row)}: unknown item id {item_id!r}: not among {among}"
                 for item_id, row in unknown[:MAX_PROBLEMS]]
                + ([f"... and {len(unknown) - MAX_PROBLEMS} more"]
                   if len(unknown) > MAX_PROBLEMS else [])))
        present = [i for i in items if i["item_id"] in self.rows]
        return present, [i["item_id"] for i in items if i["item_id"] not in self.rows]

    def check(self, items: list[dict], scoring: str, n: int) -> None:
        """That each line holds what its benchmark scores (before anything is scored): ``n``
        outputs per item, or a choice or log-likelihoods of each of the item's choices."""
        backend = GivenBackend(self, items)
        if scoring != "loglik":
            backend.replies(len(items), n, ())
        elif self.benchmark in CHOICES:  # a log-likelihood benchmark
            backend.loglikelihood([("", CHOICES[self.benchmark](i)) for i in items])

    def sample_count(self) -> int:
        """The number of outputs every item has (pass@k's n); an error where they differ."""
        counts = {len(r.outputs) for r in self.rows.values() if r.outputs is not None}
        if len(counts) > 1:
            first = {}
            for row in self.rows.values():
                first.setdefault(len(row.outputs or ()), row)
            raise EvalError(f"{self.path}: {self.benchmark} items need the same number of outputs "
                            "(pass@k's n); " + ", ".join(f"line {r.line} has {n}"
                                                         for n, r in sorted(first.items())))
        return counts.pop() if counts else 1

    def provenance(self, missing: list[str]) -> dict[str, Any]:
        return {"file": str(self.path), "sha256": self.sha256, "n_missing": len(missing),
                "missing": missing[:MAX_NAMED_MISSING]}


def read_outputs(path: Path, known: Iterable[str]) -> dict[str, GivenOutputs]:
    """Every benchmark's outputs in ``path``; an error listing each bad line (file:line) first."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"--outputs: {path} does not exist")
    known = list(known)
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    found: dict[str, GivenOutputs] = {}
    problems: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvalError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            benchmark, item_id, row = _parse_line(line, number, known)
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
            continue
        given = found.setdefault(benchmark, GivenOutputs(path, benchmark, {}, sha256))
        if item_id in given.rows:
            problems.append(f"{path}:{number}: {benchmark} item {item_id!r} again (first on line "
                            f"{given.rows[item_id].line})")
            continue
        given.rows[item_id] = row
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise EvalError(f"{path}: {len(problems)} bad line(s); nothing was scored\n"
                        + "\n".join(problems[:MAX_PROBLEMS])
                        + (f"\n... and {more} more" if more > 0 else ""))
    if not found:
        raise EvalError(f"{path}: no outputs (expected one JSON object a line: "
                        '{"benchmark": ..., "item_id": ..., "output": ...})')
    return found


def _parse_line(line: str, number: int, known: list[str]) -> tuple[str, str, GivenOutput]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object with benchmark, item_id and output")
    benchmark = row.get("benchmark")
    if not isinstance(benchmark, str):
        raise ValueError("field 'benchmark' must be a benchmark's name")
    if benchmark not in known:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid: {', '.join(known)}")
    item_id = row.get("item_id")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)  # IFEval's keys and XSTest's ids are numbers
    if not isinstance(item_id, str) or not item_id:
        raise ValueError("field 'item_id' must be the item's id (see --export-items)")
    has_output, has_lls = "output" in row, "loglikelihoods" in row
    if has_output == has_lls:
        raise ValueError("give exactly one of 'output' and 'loglikelihoods'")
    if has_lls:
        lls = row["loglikelihoods"]
        if not (isinstance(lls, list) and lls and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                for x in lls)):
            raise ValueError("'loglikelihoods' must be a list of finite numbers, one per choice")
        return benchmark, item_id, GivenOutput(number, loglikelihoods=[float(x) for x in lls])
    output = row["output"]
    outputs = [output] if isinstance(output, str) else output
    if not (isinstance(outputs, list) and outputs and all(isinstance(o, str) for o in outputs)):
        raise ValueError("'output' must be a string, or a non-empty list of strings for pass@k")
    return benchmark, item_id, GivenOutput(number, outputs=outputs)


class GivenBackend:
    """A backend whose generations and log-likelihoods are a file's, aligned with the items."""

    def __init__(self, given: GivenOutputs, items: list[dict]):
        self.given = given
        self.rows = [given.rows[i["item_id"]] for i in items]
        self.truncated = 0  # outputs a stop string cut

    @property
    def tokenizer(self):
        raise EvalError(f"{self.given.benchmark} needs the model's tokenizer, which scoring "
                        "outputs from a file does not have")

    def _aligned(self, count: int) -> list[GivenOutput]:
        if count != len(self.rows):  # a benchmark asks once for all its items, in their order
            raise EvalError(f"{self.given.benchmark}: asked for {count} outputs of "
                            f"{len(self.rows)} items; it cannot be scored from a file")
        return self.rows

    def replies(self, count: int, n: int, stop: Sequence[str]) -> list[list[str]]:
        from ablate.generate import truncate_at_stop

        replies = []
        for row in self._aligned(count):
            if row.outputs is None:
                raise EvalError(f"{self.given.where(row)}: {self.given.benchmark} scores generated "
                                "text: give 'output', not 'loglikelihoods'")
            if len(row.outputs) != n:
                raise EvalError(f"{self.given.where(row)}: {self.given.benchmark} scores {n} "
                                f"output(s) per item, the line has {len(row.outputs)}")
            cut = [truncate_at_stop(o, stop) for o in row.outputs]
            self.truncated += sum(c != o for c, o in zip(cut, row.outputs))
            replies.append(cut)
        return replies

    def loglikelihood(self, requests: Sequence[tuple[str, Sequence[str]]],
                      progress: Callable[[int, int], None] | None = None) -> list[list[float]]:
        scores = []
        for row, (_, continuations) in zip(self._aligned(len(requests)), requests):
            choices = [c.strip() for c in continuations]
            if row.loglikelihoods is not None:
                if len(row.loglikelihoods) != len(choices):
                    raise EvalError(f"{self.given.where(row)}: {len(row.loglikelihoods)} "
                                    f"log-likelihoods for {len(choices)} choices")
                scores.append(list(row.loglikelihoods))
                continue
            if len(row.outputs) != 1 or row.outputs[0].strip() not in choices:
                shown = ", ".join(repr(c) for c in choices[:6]) + (", ..." if len(choices) > 6
                                                                   else "")
                raise EvalError(f"{self.given.where(row)}: {self.given.benchmark} takes the chosen "
                                f"choice ({shown}) or 'loglikelihoods', got {row.outputs!r:.80}")
            chosen = choices.index(row.outputs[0].strip())
            scores.append([0.0 if k == chosen else NOT_CHOSEN for k in range(len(choices))])
        return scores

    def close(self) -> None:
        pass


@dataclass
class OutputsEnv(EvalEnv):
    """An eval environment whose model is a file of outputs."""

    given_backend: GivenBackend | None = field(default=None)

    def chat(self, user: str, assistant_prefix: str = "") -> str:
        return user + (f"\n{assistant_prefix}" if assistant_prefix else "")

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (),
                 n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                 rm_prompts: Sequence[str] | None = None) -> list[list[str]]:
        return self.given_backend.replies(len(prompts), n, stop)


# What an export names as each item's reference answer, where the data is public (by benchmark).
REFERENCE: dict[str, Callable[[dict], Any]] = {
    "gsm8k": lambda i: i["target"], "bbh": lambda i: i["target"],
    "mmlu": lambda i: "ABCD"[i["answer"]], "truthfulqa": lambda i: i.get("labels"),
    "xstest": lambda i: "refuse" if i["unsafe"] else "comply",
    "alpaca_eval_1": lambda i: i["reference"], "alpaca_eval_2": lambda i: i["reference"],
    "humaneval_plus": lambda i: i["canonical_solution"],
    "mbpp_plus": lambda i: i.get("canonical_solution", i.get("code")),
    "ifeval": lambda i: {"instruction_id_list": i["instruction_id_list"], "kwargs": i["kwargs"]},
}
# The choices a log-likelihood benchmark scores, in the order "loglikelihoods" lists them.
CHOICES: dict[str, Callable[[dict], list[str]]] = {
    "mmlu": lambda i: ["A", "B", "C", "D"], "truthfulqa": lambda i: list(i["choices"]),
}


def export_rows(bench, items: list[dict], env: EvalEnv) -> list[dict]:
    """One line per item as it is scored: what the model is asked and the reference answer."""
    default_tokens = getattr(bench, "default_max_new_tokens", None)
    loglik = BENCHMARKS[bench.name].scoring_under(env.protocol) == "loglik"
    rows = []
    for item, (user, prefix) in zip(items, bench.turns(items, env)):
        row = {"benchmark": bench.name, "item_id": item["item_id"], "protocol": env.protocol,
               "input": user, "assistant_prefix": prefix,
               "chat_template": bench.uses_chat_template(env.protocol)}
        if bench.name in CHOICES and loglik:
            row["choices"] = CHOICES[bench.name](item)
        elif default_tokens:
            row["max_new_tokens"] = env.new_tokens(default_tokens)
        row["reference"] = REFERENCE[bench.name](item) if bench.name in REFERENCE else None
        rows.append(row)
    return rows
