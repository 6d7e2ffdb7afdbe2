"""RewardBench-style evaluation of a reward model: pair accuracy per subset, then the four
section scores (Chat, Chat Hard, Safety, Reasoning), then their mean.

As RewardBench does, a section's score is the mean of its subsets' accuracies weighted by each
subset's example count in the full benchmark; math-prm counts as 984 (not its 447 rows) so that
math weighs as much as the six code subsets together. Rows follow RewardBench's format:
``prompt`` (str), ``chosen`` (str), ``rejected`` (str), ``subset`` (str). The real set is the hub
dataset allenai/reward-bench (``load_rewardbench``); a tiny hand-made slice in the same format
ships in ``ablate/train/data/`` for tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

HUB_ID = "allenai/reward-bench"
SLICE = Path(__file__).parent / "data" / "rewardbench_slice.jsonl"

SECTIONS = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy",
             "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor",
                  "llmbar-adver-GPTInst", "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse",
               "xstest-should-respond", "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python",
                  "hep-rust"),
}
EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
    "mt-bench-med": 40, "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 154,
    "xstest-should-respond": 250, "donotanswer": 136, "math-prm": 984,  # upweighted from 447
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164,
    "hep-rust": 164,
}
SUBSET_SECTION = {subset: section for section, subsets in SECTIONS.items() for subset in subsets}


def validate_rows(rows: Sequence[dict], source: str = "rows") -> None:
    for i, row in enumerate(rows):
        for key in ("prompt", "chosen", "rejected", "subset"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f"{source} row {i}: field {key!r} must be a non-empty string")
        if row["subset"] not in SUBSET_SECTION:
            raise ValueError(f"{source} row {i}: unknown subset {row['subset']!r}; RewardBench's "
                             f"subsets: {', '.join(EXAMPLE_COUNTS)}")


def subset_accuracies(rows: Sequence[dict], chosen_scores: Sequence[float],
                      rejected_scores: Sequence[float]) -> dict[str, float]:
    """Fraction of each subset's pairs where chosen scores strictly higher (a tie is a loss)."""
    wins: dict[str, list[int]] = {}
    for row, c, r in zip(rows, chosen_scores, rejected_scores, strict=True):
        wins.setdefault(row["subset"], []).append(int(c > r))
    return {subset: sum(w) / len(w) for subset, w in sorted(wins.items())}


def section_scores(accuracies: dict[str, float]) -> dict[str, float]:
    """Count-weighted mean of the subsets present in each section (sections with none are left
    out)."""
    scores = {}
    for section, subsets in SECTIONS.items():
        present = [s for s in subsets if s in accuracies]
        if present:
            total = sum(EXAMPLE_COUNTS[s] for s in present)
            scores[section] = sum(accuracies[s] * EXAMPLE_COUNTS[s] for s in present) / total
    return scores


def rewardbench_summary(rows: Sequence[dict], chosen_scores: Sequence[float],
                        rejected_scores: Sequence[float]) -> dict:
    """Per-subset accuracy, section scores and the overall score (mean of the sections), all in
    percent as the paper reports them."""
    accuracies = subset_accuracies(rows, chosen_scores, rejected_scores)
    sections = section_scores(accuracies)
    missing = [s for s in SECTIONS if s not in sections]
    return {"subsets": {k: 100 * v for k, v in accuracies.items()},
            "sections": {k: 100 * v for k, v in sections.items()},
            "overall": 100 * sum(sections.values()) / len(sections) if sections else None,
            "missing_sections": missing, "n_items": len(rows)}


def evaluate_reward_model(scorer, rows: Sequence[dict]) -> dict:
    """Score every pair with ``scorer`` (``ablate.generate.reward_model.RewardScorer``) and
    summarise as RewardBench does."""
    validate_rows(rows)
    prompts = [[{"role": "user", "content": row["prompt"]}] for row in rows]
    chosen = scorer.score(prompts, [row["chosen"] for row in rows])
    rejected = scorer.score(prompts, [row["rejected"] for row in rows])
    return rewardbench_summary(rows, chosen, rejected)


def load_rewardbench(path: Path | None = None, revision: str | None = None) -> list[dict]:
    """A local JSONL file in RewardBench's format, or the hub set's ``filtered`` split."""
    if path is not None:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        validate_rows(rows, str(path))
        return rows
    from datasets import load_dataset

    try:
        data = load_dataset(HUB_ID, split="filtered", revision=revision)
    except Exception as exc:
        raise RuntimeError(f"could not load {HUB_ID} from the hub ({type(exc).__name__}: {exc}); "
                           "pass a local JSONL path in RewardBench's format instead") from None
    rows = [dict(row) for row in data]
    validate_rows(rows, HUB_ID)
    return rows
