"""MMLU: 0-shot (or 5-shot) next-token choice over A/B/C/D, accuracy over all questions (open-
instruct's ``average_acc`` and lm-eval's size-weighted group; the mean over subjects is reported
beside it as ``accuracy_macro``).

The question goes in one user turn, the chat template is applied and the assistant's turn opens
with "The answer is:"; the prediction is the most likely of " A", " B", " C", " D" there (lm-eval's
``multiple_choice`` ``acc`` on the same prompt). Items interleave the subjects (the first item of
every subject, then the second, ...), so a ``limit`` still samples many subjects.

Paper protocol: the prompt text byte for byte as open-instruct@959cbbc9d:eval/mmlu/run_eval.py
builds it: ``format_subject`` puts a space before every word of the subject ("about  abstract
algebra."), the question is not stripped, and cells are as ``pandas.read_csv`` reads them, so a
choice written "None" (one of pandas' missing-value markers) reads "nan". The full protocol strips
the question, writes the subject with single spaces and keeps every cell's text.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ablate.evals.base import Benchmark, EvalEnv, EvalError, ItemResult, Summary
from ablate.evals.data import read_csv

LETTERS = ("A", "B", "C", "D")
COLUMNS = ("question", "choice0", "choice1", "choice2", "choice3", "answer")


def format_question(row: dict, with_answer: bool = False, protocol: str = "full") -> str:
    text = (row["question"] if protocol == "paper" else row["question"].strip()) + "".join(
        f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"]))
    text += "\nAnswer:"
    return text + (f" {LETTERS[row['answer']]}\n\n" if with_answer else "")


def subject_title(subject: str, protocol: str = "full") -> str:
    words = subject.split("_")
    return "".join(" " + w for w in words) if protocol == "paper" else " ".join(words)


def build_user_turn(item: dict, shots: list[dict], protocol: str = "full") -> str:
    header = ("The following are multiple choice questions (with answers) about "
              f"{subject_title(item['subject'], protocol)}.\n\n")
    return (header + "".join(format_question(s, True, protocol) for s in shots)
            + format_question(item, protocol=protocol))


def read_cells(path: Path, protocol: str) -> list[dict]:
    """A subject file's rows; under the paper protocol each cell as open-instruct's pandas reads
    and formats it."""
    if protocol != "paper":
        return read_csv(path, COLUMNS)
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: not a readable CSV ({str(exc)[:200]})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise EvalError(f"{path}: missing column(s) {missing}; has {list(frame.columns)}")
    return [{c: "{}".format(v) for c, v in zip(COLUMNS, row)}
            for row in frame[list(COLUMNS)].itertuples(index=False)]


def macro_accuracy(results: list[ItemResult]) -> tuple[float, float, dict[str, float]]:
    """(mean over subjects, mean over questions, per-subject accuracy), all in percent."""
    by_subject: dict[str, list[float]] = defaultdict(list)
    for r in results:
        by_subject[r.extra["subject"]].append(r.score)
    per_subject = {s: 100.0 * sum(v) / len(v) for s, v in sorted(by_subject.items())}
    macro = sum(per_subject.values()) / len(per_subject)
    micro = 100.0 * sum(r.score for r in results) / len(results)
    return macro, micro, per_subject


class MMLU(Benchmark):
    name, metric = "mmlu", "accuracy"
    hub_id = "cais/mmlu"
    data_revision = "github:hendrycks/test (final release; re-formatted copy HaeChan0305/MLILAB-FedLLM@d92730e8)"
    required_files = ("mmlu/test",)
    paper_settings = {
        "items": "all 14042 test questions", "shots": 0,
        "prompt": "question in one user turn; assistant opens with 'The answer is:'",
        "answer": "most likely of ' A'..' D'", "metric": "accuracy over questions"}

    def _read(self, folder: Path, split: str, protocol: str) -> dict[str, list[dict]]:
        files = sorted(folder.glob(f"*_{split}.csv"))
        if not files:
            raise EvalError(f"no *_{split}.csv files in {folder}")
        subjects = {}
        for path in files:
            rows = []
            for n, row in enumerate(read_cells(path, protocol), 1):
                try:
                    answer = int(row["answer"])
                    assert 0 <= answer < 4
                except (ValueError, AssertionError):
                    raise EvalError(f"{path} row {n}: answer must be 0-3, got "
                                    f"{row['answer']!r}") from None
                rows.append({"question": row["question"], "answer": answer,
                             "choices": [row[f"choice{k}"] for k in range(4)]})
            subjects[path.name[: -len(f"_{split}.csv")]] = rows
        return subjects

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        test = self._read(data_dir / "mmlu" / "test", "test", protocol)
        items, depth = [], max(len(rows) for rows in test.values())
        for k in range(depth):
            for subject, rows in test.items():
                if k < len(rows):
                    items.append({"item_id": f"{subject}/{k}", "subject": subject, **rows[k]})
        return items

    def turns(self, items: list[dict], env: EvalEnv) -> list[tuple[str, str]]:
        shots = env.config.shots
        if shots not in (0, 5):
            raise EvalError(f"mmlu: shots must be 0 or 5, got {shots}")
        dev: dict[str, list[dict]] = {}
        if shots:
            if env.data_root is None:
                raise EvalError("mmlu 5-shot needs the dev split: set ABLATE_DATA_DIR to the full "
                                "data (the shipped slice has the test items only)")
            dev = self._read(env.data_root / "mmlu" / "dev", "dev", env.protocol)
        return [(build_user_turn(item, dev.get(item["subject"], [])[:shots], env.protocol),
                 "The answer is:") for item in items]

    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        prompts = self.prompts(items, env)
        scores = env.backend.loglikelihood([(p, [f" {x}" for x in LETTERS]) for p in prompts],
                                           progress=env.progress)
        results = []
        for item, prompt, lls in zip(items, prompts, scores):
            predicted = max(range(4), key=lambda k: lls[k])
            results.append(ItemResult(item["item_id"], float(predicted == item["answer"]), prompt,
                                      [f" {LETTERS[predicted]}"],
                                      {"subject": item["subject"], "prediction": predicted,
                                       "target": item["answer"], "loglikelihoods": lls}))
        return results

    def summarize(self, results: list[ItemResult]) -> Summary:
        macro, micro, per_subject = macro_accuracy(results)
        return Summary(micro, {"accuracy_macro": macro, "n_subjects": float(len(per_subject))})
