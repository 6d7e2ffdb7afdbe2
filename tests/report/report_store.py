"""Run stores built in code for the report tests: a plan, fake eval results with per-item scores,
training logs. (A plain module, not conftest, so test files can import it by a unique name.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ablate.spec.benchmarks import CATEGORY_OF
from ablate.spec.plan import Cell, Plan, Step
from ablate.store import RunStore, atomic_write_json, atomic_write_jsonl

BENCHMARKS = ("gsm8k", "mmlu", "toxigen")
# cell -> (axes, per-benchmark probability that an item scores 1)
CELLS = {
    "sft": ({"model": "m", "data": "none", "algorithm": "sft", "reward_model": "none",
             "prompts": "none", "seed": None}, {"gsm8k": 0.40, "mmlu": 0.50, "toxigen": 0.20}),
    "data=uf,alg=dpo,seed=1": ({"model": "m", "data": "uf", "algorithm": "dpo",
                                "reward_model": "none", "prompts": "none", "seed": 1},
                               {"gsm8k": 0.41, "mmlu": 0.70, "toxigen": 0.10}),
    "data=uf,alg=dpo,seed=2": ({"model": "m", "data": "uf", "algorithm": "dpo",
                                "reward_model": "none", "prompts": "none", "seed": 2},
                               {"gsm8k": 0.42, "mmlu": 0.72, "toxigen": 0.12}),
    "data=uf,alg=ppo,rm=uf-13b,prompts=uf,seed=1": (
        {"model": "m", "data": "uf", "algorithm": "ppo", "reward_model": "uf-13b", "prompts": "uf",
         "seed": 1}, {"gsm8k": 0.60, "mmlu": 0.50, "toxigen": 0.30}),
    "data=uf,alg=ppo,rm=uf-13b,prompts=mixed,seed=1": (
        {"model": "m", "data": "uf", "algorithm": "ppo", "reward_model": "uf-13b",
         "prompts": "mixed", "seed": 1}, {"gsm8k": 0.65, "mmlu": 0.50, "toxigen": 0.30}),
}
N_ITEMS = 200
# what `ablate grid` saves beside the plan from the grid's `description:` and `labels:`
DESCRIPTION = "SFT vs DPO and PPO on made-up scores"
LABELS = {"m": "Tulu 2 13B", "uf": "UltraF.", "prompts.uf": "UF", "mixed": "Mixed",
          "uf-13b": "13B UltraF. RM"}


def build_plan(grid: str = "toy", data_name: str = "ultrafeedback-fg") -> Plan:
    steps: dict[str, Step] = {}
    # data as expand writes it: the data set's name in ablate.data (how --vs-paper finds its row)
    data = {"name": data_name, "max_rows": None, "sample_seed": 0}
    rm = Step.of("train_rm", "rm uf-13b", {"model": {"builtin": "m"}, "data": data,
                                           "train": {}, "seed": 1})
    steps[rm.id] = rm
    cells = []
    for name, (axes, _) in CELLS.items():
        model_step, model_spec = None, {"builtin": axes["model"]}
        if axes["algorithm"] == "dpo":
            model = Step.of("train_dpo", f"dpo {name}", {
                "model": model_spec, "data": data, "algorithm": {}, "seed": axes["seed"]})
        elif axes["algorithm"] == "ppo":
            model = Step.of("train_ppo", f"ppo {name}", {
                "model": model_spec, "algorithm": {}, "seed": 1,
                "prompts": {"source": "prompt_set", "name": axes["prompts"]}},
                {"reward_model": rm.id})
        else:
            model = None
        inputs = {}
        if model is not None:
            steps[model.id] = model
            model_step = model.id
            inputs = {"model": model.id}
        evals = {}
        for bench in BENCHMARKS:
            step = Step.of("eval", f"eval {bench} of {name}",
                           {"benchmark": bench, "protocol": "paper", "seed": 42,
                            "limit": N_ITEMS, **({} if inputs else {"model": model_spec})},
                           inputs)
            steps[step.id] = step
            evals[bench] = step.id
        cells.append(Cell(name, {**axes, "overrides": []}, model_step, evals,
                          axes["algorithm"] == "sft"))
    return Plan(grid, tuple(cells), steps)


def write_eval(store: RunStore, step: Step, bench: str, prob: float, seed: int) -> None:
    folder = store.step_dir(step)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    scores = [1.0 if rng.random() < prob else 0.0 for _ in range(N_ITEMS)]
    value = 100 * sum(scores) / len(scores)
    higher = bench != "toxigen"
    atomic_write_jsonl(folder / "scores.jsonl",
                       [{"item_id": f"{bench}-{i}", "score": s} for i, s in enumerate(scores)])
    # as the evals write it: a few-shot prompt (the item's question last) and a list of outputs
    shots = "Question: what is 1 + 1?\nAnswer: 2\n\n" * 40
    atomic_write_jsonl(folder / "outputs.jsonl",
                       [{"item_id": f"{bench}-{i}", "prompt": f"{shots}Question: item {i} of {bench}?"
                         "\nAnswer:", "outputs": [f"The answer to item {i} is {40 + i}."]}
                        for i in range(3)])
    atomic_write_json(folder / "result.json", {
        "benchmark": bench, "category": CATEGORY_OF[bench],
        "kind": "eval", "protocol": "paper", "metric": "exact_match", "value": value,
        "unit": "percent", "higher_is_better": higher,
        "category_score": value if higher else 100 - value, "n_items": N_ITEMS,
        "scores_file": "scores.jsonl"})
    atomic_write_json(folder / "DONE.json", {"step": step.id, "seconds": 60.0})


def fill_store(root: Path, plan: Plan, skip: tuple[str, ...] = ()) -> RunStore:
    """Write every step's outputs; ``skip``: 'cell/bench' pairs left unrun."""
    store = RunStore(root)
    store.save_plan(plan, source="grids/toy.yaml",
                    about={"description": DESCRIPTION, "labels": LABELS})
    for step in plan.steps.values():
        if step.kind == "eval":
            continue
        folder = store.step_dir(step)
        folder.mkdir(parents=True, exist_ok=True)
        if step.kind == "train_ppo":
            atomic_write_jsonl(folder / "metrics.jsonl", [
                {"step": i, "kl": 0.5 * i, "reward": 1.0 + i * (0.3 if "mixed" in step.name else 0.2)}
                for i in range(6)])
        if step.kind == "train_rm":
            atomic_write_json(folder / "result.json", {"kind": "reward_model", "unit": "fraction",
                                                       "metric": "heldout_pair_accuracy",
                                                       "value": 0.71})
        atomic_write_json(folder / "DONE.json", {"step": step.id, "seconds": 3600.0, "gpus": 2})
    for index, cell in enumerate(plan.cells):
        probs = CELLS[cell.name][1]
        for b_index, (bench, sid) in enumerate(cell.evals.items()):
            if f"{cell.name}/{bench}" in skip:
                continue
            write_eval(store, plan.steps[sid], bench, probs[bench], seed=100 * index + b_index)
    return store


@pytest.fixture
def toy_store(tmp_path) -> RunStore:
    return fill_store(tmp_path / "runs", build_plan())


@pytest.fixture(scope="session")
def paper_dir() -> Path:
    from ablate.report.paper import SHIPPED

    return SHIPPED


def read(path: Path) -> str:
    return Path(path).read_text()


def detail_json(html: str) -> dict:
    start = html.index("const DETAILS = ") + len("const DETAILS = ")
    return json.loads(html[start:html.index(";\n", start)].replace("<\\/", "</"))
