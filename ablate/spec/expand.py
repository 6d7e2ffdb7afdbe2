"""Expand a grid into a plan: a pure function from a ``GridSpec`` to cells and shared steps."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Mapping, TypeVar

from pydantic import ValidationError

from ablate.spec.benchmarks import BENCHMARKS, BenchmarkFacts
from ablate.spec.judges import STRING_MATCH, settle_judge
from ablate.spec.load import SpecError
from ablate.spec.plan import Cell, Plan, Step
from ablate.spec.schema import (
    BestOfN, BoNConfig, CellRule, DataRef, DataSource, DPOConfig, EvalConfig, Greedy, GridSpec, JudgeSpec,
    ModelSpec, PAPER_BEST_OF_N_REWARD_DTYPE, PPOConfig, PromptSetRef, RewardModelSpec, Sampler,
)
from ablate.spec.steps import STEP_KINDS, DPOStep, EvalStep, PPOStep, PromptsRef, RMStep

BUILTIN_ALGORITHMS = {"dpo": DPOConfig(), "ppo": PPOConfig(), "bon": BoNConfig()}
AXIS_NAMES = ("model", "data", "algorithm", "reward_model", "prompts", "seed")
SHORT = {"model": "model", "data": "data", "algorithm": "alg", "reward_model": "rm",
         "prompts": "prompts", "seed": "seed"}

D = TypeVar("D", bound=DataSource)
# A data source with its ``digest`` filled in (what the rows are); computed in the data layer and
# passed in, as the registries are, so that expansion stays a pure function of its arguments.
Resolver = Callable[[DataSource], DataSource]


def _unresolved(ref: D) -> D:
    if ref.path is not None or ref.hub is not None:
        raise SpecError(f"data {ref.describe()}: its digest was not resolved; expand the grid "
                        "with the data layer's resolver (ablate.data.resolve_source)")
    return ref


def _matches(rule: CellRule, cell: dict[str, Any]) -> bool:
    for axis in AXIS_NAMES:
        want = getattr(rule, axis)
        if want is None or want == "*":
            continue
        options = want if isinstance(want, list) else [want]
        if cell[axis] not in options:
            return False
    return True


def _algorithm(grid: GridSpec, name: str):
    if name in grid.algorithms:
        return grid.algorithms[name]
    if name in BUILTIN_ALGORITHMS:
        return BUILTIN_ALGORITHMS[name]
    valid = sorted(set(grid.algorithms) | set(BUILTIN_ALGORITHMS))
    raise SpecError(f"grid {grid.name!r}: unknown algorithm {name!r}; valid: {', '.join(valid)}")


def _apply_overrides(grid: GridSpec, cell: dict[str, Any], algo):
    applied = []
    for override in grid.overrides:
        if not _matches(override.match, cell):
            continue
        # the fields the grid set, so that a default that depends on the protocol stays unset
        data = algo.model_dump(exclude_unset=True)
        valid = type(algo).model_fields
        for key, value in override.set.items():
            if key not in valid:
                raise SpecError(f"grid {grid.name!r}: override {override.name!r} sets unknown key "
                                f"{key!r} of {type(algo).__name__}; valid: {', '.join(sorted(valid))}")
            data[key] = value
        try:
            algo = type(algo).model_validate(data)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the config'}: {e['msg']}"
                                 for e in err.errors())
            raise SpecError(f"grid {grid.name!r}: override {override.name!r} (set "
                            f"{dict(override.set)}) makes an invalid {type(algo).__name__}: "
                            f"{problems}") from None
        applied.append(override.name)
    return algo, applied


def _data(grid: GridSpec, name: str, needed_by: str | None = None,
          resolve: Resolver = _unresolved) -> DataRef:
    """The dataset ``name`` stands for, resolved; ``needed_by`` names what trains on it, for which
    the axis value "none" (no data axis) is an error rather than a dataset called "none"."""
    if needed_by and name == "none":
        raise SpecError(f"grid {grid.name!r}: {needed_by} trains on the cell's preference data, "
                        "but axes.data is not set (its value is 'none'): add a data axis or "
                        "name the data explicitly")
    return resolve(grid.datasets.get(name) or DataRef(name=name))


def _model(grid: GridSpec, name: str):
    if name not in grid.models:
        raise SpecError(f"grid {grid.name!r}: unknown model {name!r}; "
                        f"valid: {', '.join(sorted(grid.models))}")
    return grid.models[name]


def _reward_model(grid: GridSpec, rm_name: str) -> RewardModelSpec:
    if rm_name not in grid.reward_models:
        raise SpecError(f"grid {grid.name!r}: unknown reward model {rm_name!r}; "
                        f"valid: {', '.join(sorted(grid.reward_models)) or '(none defined)'}")
    return grid.reward_models[rm_name]


def _rm_step(grid: GridSpec, rm_name: str, cell: dict[str, Any], resolve: Resolver) -> Step:
    rm = _reward_model(grid, rm_name)
    data = _data(grid, cell["data"], f"reward model {rm_name!r} (data: cell)", resolve) \
        if rm.data == "cell" else resolve(rm.data)
    base = _model(grid, rm.base or cell["model"])
    label = f"rm={rm_name}" + (f",data={cell['data']}" if rm.data == "cell" else "")
    return Step(name=f"train_rm {label}",
                config=RMStep(version=STEP_KINDS["train_rm"].version, model=base, data=data,
                              train=rm.train, seed=rm.seed))


def _prompts(grid: GridSpec, name: str, cell: dict[str, Any], resolve: Resolver) -> PromptsRef:
    if name in ("cell", "none"):
        data = _data(grid, cell["data"], f"PPO (prompts: {name})", resolve)
        return PromptsRef(source="preference_data", **data.model_dump(exclude_defaults=True))
    ref = resolve(grid.prompt_sets.get(name) or PromptSetRef(name=name))
    return PromptsRef(source="prompt_set", **ref.model_dump(exclude_defaults=True))


def judge_for(grid: GridSpec, benchmark: str,
              facts: Mapping[str, BenchmarkFacts] = BENCHMARKS) -> JudgeSpec | None:
    """The full definition of the judge a judged benchmark uses: the one the grid names (its
    ``judges``, or ``string_match``), else the paper's under ``protocol: paper``."""
    if not facts[benchmark].judged_under(grid.eval.protocol):
        return None
    name = grid.eval.judges.get(benchmark) or grid.eval.judge
    if name is None or name == "string_match":
        named = None if name is None else STRING_MATCH
    elif name in grid.judges:
        named = grid.judges[name]
    else:
        raise SpecError(f"grid {grid.name!r}: {benchmark}'s judge {name!r} is not defined; "
                        f"define it under `judges:` in the grid or in $ABLATE_JUDGES "
                        f"(known: {', '.join(sorted(grid.judges)) or 'none'}), or use "
                        "string_match (XSTest)")
    try:
        return settle_judge(benchmark, grid.eval.protocol, named, facts[benchmark])
    except ValueError as exc:
        raise SpecError(f"grid {grid.name!r}: {benchmark}'s judge {name!r}: {exc}") from None


def eval_config(settings: EvalConfig, benchmark: str, *, judge: JudgeSpec | None = None,
                model: ModelSpec | None = None, best_of_n: BestOfN | None = None,
                facts: BenchmarkFacts | None = None) -> EvalStep:
    """The eval step config of one benchmark under a grid's (or the command line's) settings.
    Best-of-N reranks greedy generations only; code benchmarks sample for pass@k. ``facts``: a
    benchmark of the user's own (``settings.custom``), as its class declares them."""
    custom = settings.custom.get(benchmark)
    facts = facts or BENCHMARKS[benchmark]
    sampler: Sampler = Greedy()
    scoring = facts.scoring_under(settings.protocol)
    if scoring == "pass_at_k":
        sampler = settings.pass_at_k
        if settings.protocol == "paper" and facts.paper_top_p is not None \
                and "top_p" not in sampler.model_fields_set:
            sampler = sampler.model_copy(update={"top_p": facts.paper_top_p})
    elif best_of_n is not None and scoring == "generate":
        sampler = best_of_n
    return EvalStep(
        benchmark=benchmark, protocol=settings.protocol, version=facts.version(settings.protocol),
        limit=settings.limit.get(benchmark), seed=settings.seed,
        max_new_tokens=settings.max_new_tokens.get(benchmark), sampler=sampler, judge=judge,
        shots=settings.mmlu_shots if benchmark == "mmlu" else 0,
        classifier=settings.toxigen_classifier if benchmark == "toxigen" else None, model=model,
        module=custom.module if custom else None, category=facts.category if custom else None)


def best_of_n_reward_dtype(algo: BoNConfig, protocol: str) -> str:
    """The precision a best-of-N cell's reward model scores in: the algorithm's where set, else
    the paper's under protocol paper."""
    if protocol == "paper" and "reward_dtype" not in algo.model_fields_set:
        return PAPER_BEST_OF_N_REWARD_DTYPE
    return algo.reward_dtype


def _eval_steps(grid: GridSpec, label: str, model: ModelSpec | None,
                inputs: dict[str, str], facts: Mapping[str, BenchmarkFacts],
                best_of_n: BestOfN | None = None) -> dict[str, Step]:
    """One eval step per benchmark. ``model`` is the base model when no training step made the
    model. Where best-of-N does not apply, a best-of-N cell's eval is the base model's own step
    (no reward model input): the same work, one step."""
    steps = {}
    for bench in grid.eval.benchmarks:
        judge = judge_for(grid, bench, facts)
        config = eval_config(grid.eval, bench, judge=judge, model=model, best_of_n=best_of_n,
                             facts=facts[bench])
        step_inputs = {k: v for k, v in inputs.items() if k != "reward_model"}
        cell_rm = judge is not None and judge.kind == "reward_model" and judge.path is None
        if isinstance(config.sampler, BestOfN) or cell_rm:
            if "reward_model" not in inputs:
                raise SpecError(f"grid {grid.name!r}: {bench}'s judge is the cell's reward model "
                                f"(kind reward_model, no path), but {label} has none")
            step_inputs["reward_model"] = inputs["reward_model"]
        steps[bench] = Step(name=f"eval {bench} of {label}", config=config, inputs=step_inputs)
    return steps


def cell_name(cell: dict[str, Any], show_model: bool) -> str:
    axes = [a for a in AXIS_NAMES if a != "model" or show_model]
    return ",".join(f"{SHORT[a]}={cell[a]}" for a in axes)


def expand(grid: GridSpec, *, resolve: Resolver = _unresolved,
           custom_facts: Mapping[str, BenchmarkFacts] | None = None) -> Plan:
    """Every combination of the axes, normalised, filtered by include/exclude, steps shared.

    ``resolve`` fills in each data source's digest (``ablate.data.resolve_source``); without it,
    only registry data without a ``$ABLATE_DATA_<NAME>`` file expands. ``custom_facts`` are the
    facts of the grid's own benchmarks (``eval.custom``), as their classes declare them."""
    missing = sorted(set(grid.eval.custom) - set(custom_facts or {}))
    if missing:
        raise SpecError(f"grid {grid.name!r}: the facts of benchmark(s) {', '.join(missing)} "
                        "(eval.custom) were not resolved from their modules")
    facts = {**BENCHMARKS, **(custom_facts or {})}
    axes = grid.axes
    show_model = len(axes.model) > 1
    steps: dict[str, Step] = {}
    cells: list[Cell] = []
    seen_cells: set[str] = set()

    def add(step: Step) -> str:
        steps.setdefault(step.id, step)
        return step.id

    if grid.baseline:
        for model_name in axes.model:
            model = _model(grid, model_name)
            label = f"{model_name} (SFT baseline)"
            evals = _eval_steps(grid, label, model, {}, facts)
            cells.append(Cell(name=f"sft={model_name}" if show_model else "sft", axes={
                "model": model_name, "data": "none", "algorithm": "sft", "reward_model": "none",
                "prompts": "none", "seed": None}, model_step=None,
                evals={b: add(s) for b, s in evals.items()}, is_baseline=True))

    for values in itertools.product(axes.model, axes.data, axes.algorithm, axes.reward_model,
                                     axes.prompts, axes.seed):
        cell = dict(zip(AXIS_NAMES, values))
        if cell["algorithm"] == "none":
            continue
        algo = _algorithm(grid, cell["algorithm"])
        # Axes an algorithm does not use collapse to "none", so the product does not repeat it.
        if isinstance(algo, DPOConfig):
            cell.update(reward_model="none", prompts="none")
        elif isinstance(algo, BoNConfig):
            cell.update(prompts="none")
        if isinstance(algo, (PPOConfig, BoNConfig)) and cell["reward_model"] == "none":
            continue  # PPO and best-of-N need a reward model; "none" on that axis is for DPO
        if isinstance(algo, PPOConfig) and cell["prompts"] == "none":
            cell["prompts"] = "cell"
        if grid.include and not any(_matches(r, cell) for r in grid.include):
            continue
        if any(_matches(r, cell) for r in grid.exclude):
            continue
        name = cell_name(cell, show_model)
        if name in seen_cells:
            continue
        seen_cells.add(name)
        algo, applied = _apply_overrides(grid, cell, algo)
        model = _model(grid, cell["model"])

        if isinstance(algo, DPOConfig):
            data = _data(grid, cell["data"], f"algorithm {cell['algorithm']!r}", resolve)
            train = Step(name=f"train_dpo {name}", config=DPOStep(
                version=STEP_KINDS["train_dpo"].version, model=model, data=data, algorithm=algo,
                seed=cell["seed"]))
            model_step = add(train)
            evals = _eval_steps(grid, name, None, {"model": model_step}, facts)
        elif isinstance(algo, PPOConfig):
            programmatic = _reward_model(grid, cell["reward_model"]).programmatic
            inputs = {} if programmatic is not None else {  # a checkable reward: no RM to train
                "reward_model": add(_rm_step(grid, cell["reward_model"], cell, resolve))}
            train = Step(name=f"train_ppo {name}", config=PPOStep(
                version=STEP_KINDS["train_ppo"].version, model=model,
                prompts=_prompts(grid, cell["prompts"], cell, resolve), algorithm=algo, seed=cell["seed"],
                reward=programmatic), inputs=inputs)
            model_step = add(train)
            evals = _eval_steps(grid, name, None, {"model": model_step}, facts)
        else:  # best-of-N over the base model: no training, a different sampler at eval time
            programmatic = _reward_model(grid, cell["reward_model"]).programmatic
            if programmatic is not None:
                raise SpecError(f"grid {grid.name!r}: best-of-N cell {name!r} uses reward model "
                                f"{cell['reward_model']!r}, a programmatic reward "
                                f"({programmatic!r}); best-of-N ranks its samples with a trained "
                                "reward model, so give it one that is trained (no "
                                "`programmatic`), or exclude the cell")
            rm_id = add(_rm_step(grid, cell["reward_model"], cell, resolve))
            model_step = None
            sampler = BestOfN(n=algo.n, temperature=algo.temperature, seed=cell["seed"],
                              reward_dtype=best_of_n_reward_dtype(algo, grid.eval.protocol))
            evals = _eval_steps(grid, name, model, {"reward_model": rm_id}, facts, sampler)
        cells.append(Cell(name=name, axes={**cell, "overrides": applied}, model_step=model_step,
                          evals={b: add(s) for b, s in evals.items()}))

    if not cells:
        raise SpecError(_why_empty(grid))
    if not any(s.kind == "eval" for s in steps.values()) and not any(
            s.kind.startswith("train") for s in steps.values()):
        raise SpecError(f"grid {grid.name!r} expands to cells with no steps: "
                        "eval.benchmarks is empty and nothing is trained")
    return Plan(grid=grid.name, cells=tuple(cells), steps=steps)


def _why_empty(grid: GridSpec) -> str:
    reasons = []
    if not grid.baseline:
        reasons.append("baseline is false")
    if set(grid.axes.algorithm) <= {"none"}:
        reasons.append("axes.algorithm has no algorithm")
    if grid.include:
        reasons.append(f"{len(grid.include)} include rule(s) match no cell")
    if grid.exclude:
        reasons.append(f"{len(grid.exclude)} exclude rule(s) may remove every cell")
    if any(a in ("ppo", "bon") for a in grid.axes.algorithm) and set(grid.axes.reward_model) <= {"none"}:
        reasons.append("PPO and best-of-N need a reward model but axes.reward_model is only 'none'")
    return f"grid {grid.name!r} expands to zero jobs: " + ("; ".join(reasons) or "no cells")


def check_names(grid: GridSpec, *, datasets: Iterable[str], prompt_sets: Iterable[str],
                benchmarks: Iterable[str], builtin_models: Iterable[str],
                load_reward: Callable[[str], object] | None = None) -> None:
    """Names the registries know. The registries live in upper layers, so they are passed in;
    programmatic rewards are checked only when ``load_reward`` (import path -> function, a
    ValueError saying why not) is given."""
    datasets, prompt_sets = sorted(datasets), sorted(prompt_sets)
    benchmarks, builtin_models = sorted(benchmarks), sorted(builtin_models)

    def fail(what: str, name: str, where: str, valid: list[str]) -> None:
        raise SpecError(f"grid {grid.name!r}: unknown {what} {name!r} in {where}; "
                        f"valid: {', '.join(valid)}")

    for name, model in grid.models.items():
        if sum(x is not None for x in (model.builtin, model.path, model.hub)) != 1:
            raise SpecError(f"grid {grid.name!r}: models.{name} needs exactly one of "
                            "builtin, path, hub")
        if model.builtin and model.builtin not in builtin_models:
            fail("built-in model", model.builtin, f"models.{name}", builtin_models)
    for name in grid.axes.model:
        if name not in grid.models:
            fail("model", name, "axes.model", sorted(grid.models))
    refs = [(f"datasets.{k}", v.name) for k, v in grid.datasets.items() if v.name is not None]
    refs += [("axes.data", n) for n in grid.axes.data if n != "none" and n not in grid.datasets]
    refs += [(f"reward_models.{k}.data", v.data.name) for k, v in grid.reward_models.items()
             if isinstance(v.data, DataRef) and v.data.name is not None]
    for where, name in refs:
        if name not in datasets:
            fail("dataset", name, where, datasets)
    for name in grid.axes.prompts:
        if name in ("none", "cell"):
            continue
        ref = grid.prompt_sets.get(name)
        if ref and ref.name is None:
            continue  # a file or hub dataset of prompts, opened by the data layer's checks
        if (ref.name if ref else name) not in prompt_sets:
            fail("prompt set", ref.name if ref else name, "axes.prompts", prompt_sets)
    for name in grid.axes.algorithm:
        if name != "none":
            _algorithm(grid, name)
    for name in grid.axes.reward_model:
        if name != "none" and name not in grid.reward_models:
            fail("reward model", name, "axes.reward_model", sorted(grid.reward_models))
    if load_reward is not None:
        for name, rm in grid.reward_models.items():
            if rm.programmatic is None:
                continue
            try:
                load_reward(rm.programmatic)
            except ValueError as exc:
                raise SpecError(f"grid {grid.name!r}: reward_models.{name}.programmatic: "
                                f"{exc}") from None
    for name in grid.eval.custom:
        if name in benchmarks:
            raise SpecError(f"grid {grid.name!r}: eval.custom.{name}: {name!r} is a built-in "
                            "benchmark; give your own benchmark another name")
        if name not in grid.eval.benchmarks:
            raise SpecError(f"grid {grid.name!r}: eval.custom.{name} is defined but not listed "
                            "in eval.benchmarks")
    for name in grid.eval.benchmarks:
        if name not in benchmarks and name not in grid.eval.custom:
            fail("benchmark", name, "eval.benchmarks (or define it under eval.custom)",
                 benchmarks + sorted(grid.eval.custom))
    for field in ("limit", "max_new_tokens", "judges"):
        for name in getattr(grid.eval, field):
            if name not in grid.eval.benchmarks:
                fail("benchmark", name, f"eval.{field}", list(grid.eval.benchmarks))
    judged = [b for b in grid.eval.benchmarks
              if b in BENCHMARKS and BENCHMARKS[b].judged_under(grid.eval.protocol)]
    for name in grid.eval.judges:
        if name not in judged:
            fail("judged benchmark", name, "eval.judges", judged)
    for where, name in [("eval.judge", grid.eval.judge),
                        *((f"eval.judges.{b}", n) for b, n in grid.eval.judges.items())]:
        if name is not None and name != "string_match" and name not in grid.judges:
            fail("judge", name, f"{where} (define it under `judges:` or in $ABLATE_JUDGES)",
                 sorted(grid.judges))
    # a rule value that is on no axis matches no cell, so the rule silently does nothing
    rules = [(f"include[{k}]", r) for k, r in enumerate(grid.include)]
    rules += [(f"exclude[{k}]", r) for k, r in enumerate(grid.exclude)]
    rules += [(f"overrides.{o.name}.match", o.match) for o in grid.overrides]
    for where, rule in rules:
        for axis in AXIS_NAMES:
            wanted = getattr(rule, axis)
            values = wanted if isinstance(wanted, list) else [wanted]
            on_axis = list(getattr(grid.axes, axis))
            for value in values:
                if value is not None and value != "*" and value not in on_axis:
                    fail(f"{axis} value", value, f"{where}.{axis} (it matches no cell)",
                         [str(v) for v in on_axis])
