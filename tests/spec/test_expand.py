"""Expansion is a pure function: cells, shared steps, stable ids, readable names."""

from pathlib import Path

import pytest

from ablate.spec import SpecError, check_names, expand, load_grid
from ablate.spec.schema import GridSpec

REPO = Path(__file__).resolve().parents[2]


def grid(**overrides) -> GridSpec:
    data = {
        "name": "t",
        "models": {"m": {"builtin": "tiny-llama"}},
        "reward_models": {"same": {"data": "cell"}},
        "axes": {"model": ["m"], "data": ["a", "b"], "algorithm": ["dpo", "ppo"],
                 "reward_model": ["none", "same"], "seed": [1, 2]},
        "eval": {"benchmarks": ["gsm8k", "mmlu"]},
    }
    data.update(overrides)
    return GridSpec.model_validate(data)


def test_dpo_and_ppo_cells_collapse_unused_axes():
    plan = expand(grid())
    names = [c.name for c in plan.cells]
    # baseline + data(2) x seeds(2) x {dpo, ppo with rm=same}
    assert len(names) == 1 + 2 * 2 * 2
    assert "data=a,alg=dpo,rm=none,prompts=none,seed=1" in names
    assert "data=a,alg=ppo,rm=same,prompts=cell,seed=2" in names
    assert len(set(names)) == len(names)


def test_shared_steps_appear_once():
    plan = expand(grid())
    kinds = [s.kind for s in plan.steps.values()]
    assert kinds.count("train_rm") == 2  # one RM per data set, shared by both seeds of PPO
    assert kinds.count("train_dpo") == 4 and kinds.count("train_ppo") == 4
    # the baseline evals: one per benchmark, not one per cell
    baseline = plan.cells[0]
    assert baseline.is_baseline and baseline.model_step is None
    assert kinds.count("eval") == 2 + 8 * 2
    rm_inputs = {s.inputs["reward_model"] for s in plan.steps.values() if s.kind == "train_ppo"}
    assert len(rm_inputs) == 2


def test_ids_are_hashes_of_resolved_config():
    first, second = expand(grid()), expand(grid())
    assert list(first.steps) == list(second.steps)
    changed = expand(grid(algorithms={"dpo": {"kind": "dpo", "beta": 0.2}}))
    dpo_ids = {sid for sid, s in first.steps.items() if s.kind == "train_dpo"}
    changed_ids = {sid for sid, s in changed.steps.items() if s.kind == "train_dpo"}
    assert not dpo_ids & changed_ids
    # PPO steps did not change, so their ids did not either
    assert {s for s, st in first.steps.items() if st.kind == "train_ppo"} == \
           {s for s, st in changed.steps.items() if st.kind == "train_ppo"}


def test_a_default_spelled_out_keeps_the_step_ids():
    """``epochs: 3`` validates to 3.0 while the unspelled default stays the int 3; the same
    settings must give the same steps, or a grid edited only for clarity reruns everything."""
    implicit = expand(grid(algorithms={"dpo": {"kind": "dpo"}}))
    explicit = expand(grid(algorithms={"dpo": {"kind": "dpo", "epochs": 3, "beta": 0.1}}))
    assert list(implicit.steps) == list(explicit.steps)
    assert list(expand(grid(algorithms={"dpo": {"kind": "dpo", "epochs": 2}})).steps) != \
        list(implicit.steps)


def test_stored_plans_keep_their_ids():
    """Ids are hashes of the stored configs: a plan saved earlier loads with the same ids."""
    from ablate.spec.plan import Plan

    plan = expand(grid())
    again = Plan.from_json(plan.to_json())
    assert list(again.steps) == list(plan.steps)


def test_order_puts_inputs_first():
    plan = expand(grid())
    position = {s.id: i for i, s in enumerate(plan.order())}
    for step in plan.steps.values():
        for dep in step.inputs.values():
            assert position[dep] < position[step.id]


def test_include_exclude_and_overrides():
    plan = expand(grid(exclude=[{"algorithm": "ppo", "data": "b"}],
                       overrides=[{"name": "small-beta", "match": {"data": "a", "algorithm": "ppo"},
                                   "set": {"beta": 0.0325}}]))
    assert not any("data=b,alg=ppo" in c.name for c in plan.cells)
    ppo = [s for s in plan.steps.values() if s.kind == "train_ppo"]
    assert ppo and all(s.config.algorithm.beta == 0.0325 for s in ppo)
    cell = next(c for c in plan.cells if "alg=ppo" in c.name)
    assert cell.axes["overrides"] == ["small-beta"]


def test_override_of_unknown_key_is_an_error():
    with pytest.raises(SpecError, match="unknown key 'betta'"):
        expand(grid(overrides=[{"name": "x", "match": {"algorithm": "dpo"}, "set": {"betta": 1}}]))


def test_override_with_an_invalid_value_names_the_override():
    with pytest.raises(SpecError, match=r"override 'small' \(set \{'beta': -0.1\}\) makes an "
                                        r"invalid DPOConfig: beta: Input should be greater than 0"):
        expand(grid(overrides=[{"name": "small", "match": {"algorithm": "dpo"},
                                "set": {"beta": -0.1}}]))


def test_zero_jobs_says_why():
    with pytest.raises(SpecError, match="zero jobs.*exclude"):
        expand(grid(baseline=False, exclude=[{"algorithm": "*"}]))
    with pytest.raises(SpecError, match="need a reward model"):
        expand(grid(baseline=False, axes={"model": ["m"], "data": ["a"], "algorithm": ["ppo"]}))


GSM8K_EXACT = "perf.ppo_rewards:gsm8k_exact"


def test_programmatic_reward_trains_no_rm_and_names_the_reward():
    rms = {"same": {"data": "cell"}, "exact": {"programmatic": GSM8K_EXACT}}
    plan = expand(grid(reward_models=rms, axes={
        "model": ["m"], "data": ["a"], "algorithm": ["ppo"], "reward_model": ["same", "exact"],
        "seed": [1]}))
    ppo = {c.axes["reward_model"]: plan.steps[c.model_step] for c in plan.cells
           if not c.is_baseline}
    assert set(ppo) == {"same", "exact"}
    assert ppo["exact"].config.reward == GSM8K_EXACT
    assert ppo["exact"].inputs == {}
    assert "reward" not in ppo["same"].config and set(ppo["same"].inputs) == {"reward_model"}
    assert ppo["exact"].id != ppo["same"].id
    # the only RM trained is the one the RM-based cell reads
    assert [s.id for s in plan.steps.values() if s.kind == "train_rm"] == \
        [ppo["same"].inputs["reward_model"]]
    # a programmatic reward alone: no train_rm step at all
    alone = expand(grid(reward_models={"exact": {"programmatic": GSM8K_EXACT}}, axes={
        "model": ["m"], "data": ["a"], "algorithm": ["ppo"], "reward_model": ["exact"]}))
    assert not any(s.kind == "train_rm" for s in alone.steps.values())
    assert any(s.kind == "train_ppo" for s in alone.steps.values())
    alone.order()


def test_programmatic_reward_refused_for_best_of_n():
    with pytest.raises(SpecError, match=r"grid 't'.*'exact'.*programmatic.*best-of-N ranks"):
        expand(grid(reward_models={"exact": {"programmatic": GSM8K_EXACT}}, axes={
            "model": ["m"], "data": ["a"], "algorithm": ["bon"], "reward_model": ["exact"]}))


def test_programmatic_reward_takes_no_rm_training_fields():
    with pytest.raises(ValueError, match="trains no reward model.*base, seed"):
        grid(reward_models={"exact": {"programmatic": GSM8K_EXACT, "seed": 2, "base": "m"}})


def test_check_names_checks_programmatic_rewards_when_given():
    from ablate.train.programmatic import load_reward_function

    g = grid(reward_models={"same": {"programmatic": "perf.ppo_rewards:gsm8k_exakt"}})
    kwargs = dict(datasets=["a", "b"], prompt_sets=[], benchmarks=["gsm8k", "mmlu"],
                  builtin_models=["tiny-llama"])
    check_names(g, **kwargs)  # not checked unless the loader is passed in
    with pytest.raises(SpecError, match=r"grid 't': reward_models.same.programmatic: module "
                                        r"'perf.ppo_rewards' has no 'gsm8k_exakt'"):
        check_names(g, **kwargs, load_reward=load_reward_function)
    with pytest.raises(SpecError, match=r"reward_models.same.programmatic: 'gsm8k_exact' is not "
                                        r"an import path"):
        check_names(grid(reward_models={"same": {"programmatic": "gsm8k_exact"}}), **kwargs,
                    load_reward=load_reward_function)
    check_names(grid(reward_models={"same": {"programmatic": GSM8K_EXACT}}),
                **kwargs, load_reward=load_reward_function)


def test_check_names_lists_valid_ones():
    g = grid()
    kwargs = dict(datasets=["a", "b"], prompt_sets=[], benchmarks=["gsm8k", "mmlu"],
                  builtin_models=["tiny-llama"])
    check_names(g, **kwargs)
    with pytest.raises(SpecError, match=r"unknown dataset 'a'.*valid: b"):
        check_names(g, **{**kwargs, "datasets": ["b"]})
    with pytest.raises(SpecError, match=r"unknown benchmark 'mmlu'.*valid: gsm8k"):
        check_names(g, **{**kwargs, "benchmarks": ["gsm8k"]})
    with pytest.raises(SpecError, match="unknown algorithm 'sft'"):
        check_names(grid(axes={"model": ["m"], "algorithm": ["sft"]}), **kwargs)


@pytest.mark.parametrize("path", sorted((REPO / "grids").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_grid_expands(path):
    from ablate.data import dataset_names, prompt_set_names
    from ablate.evals import benchmark_names
    from ablate.models import BUILTIN_MODELS
    from ablate.train.programmatic import load_reward_function

    spec = load_grid(path)
    check_names(spec, datasets=dataset_names(), prompt_sets=prompt_set_names(),
                benchmarks=benchmark_names(), builtin_models=BUILTIN_MODELS,
                load_reward=load_reward_function)
    plan = expand(spec)
    assert plan.cells and plan.steps
    plan.order()


def test_rules_and_eval_keys_that_match_nothing_are_errors():
    kwargs = dict(datasets=["a", "b"], prompt_sets=[], benchmarks=["gsm8k", "mmlu"],
                  builtin_models=["tiny-llama"])
    typo = grid(overrides=[{"name": "small", "match": {"data": "a-typo"}, "set": {"beta": 0.05}}])
    with pytest.raises(SpecError, match=r"unknown data value 'a-typo' in "
                                        r"overrides.small.match.data \(it matches no cell\); "
                                        r"valid: a, b"):
        check_names(typo, **kwargs)
    with pytest.raises(SpecError, match=r"exclude\[0\].seed"):
        check_names(grid(exclude=[{"seed": [1, 7]}]), **kwargs)
    check_names(grid(exclude=[{"data": "a", "algorithm": "*"}]), **kwargs)
    with pytest.raises(SpecError, match=r"unknown benchmark 'gsm8' in eval.max_new_tokens"):
        check_names(grid(eval={"benchmarks": ["gsm8k"], "max_new_tokens": {"gsm8": 16}}),
                    **kwargs)


def test_training_without_a_data_axis_is_an_error_at_expansion():
    no_data = {"model": ["m"], "algorithm": ["dpo"]}
    with pytest.raises(SpecError, match=r"algorithm 'dpo' trains on the cell's preference data, "
                                        r"but axes.data is not set"):
        expand(grid(axes=no_data))
    with pytest.raises(SpecError, match=r"reward model 'same' \(data: cell\)"):
        expand(grid(axes={"model": ["m"], "algorithm": ["ppo"], "reward_model": ["same"],
                          "prompts": ["gsm8k-train"]}))


def test_best_of_n_reward_dtype_is_the_papers_under_protocol_paper():
    """The paper scored best-of-N in int8: the paper protocol's default; another protocol keeps
    float32 (the ids made before the field existed); a grid's own choice wins, also through an
    override that sets another field."""
    from ablate.spec.schema import BestOfN

    def dtypes(**overrides):
        plan = expand(grid(axes={"model": ["m"], "data": ["a"], "algorithm": ["bon"],
                                 "reward_model": ["same"]}, **overrides))
        return {s.config.sampler.reward_dtype for s in plan.steps.values()
                if s.kind == "eval" and isinstance(s.config.sampler, BestOfN)}

    assert dtypes() == {"int8"}  # the grid's eval protocol defaults to paper
    assert dtypes(eval={"benchmarks": ["gsm8k"], "protocol": "full"}) == {"float32"}
    own = {"algorithms": {"bon16": {"kind": "bon", "reward_dtype": "bfloat16"}},
           "axes": {"model": ["m"], "data": ["a"], "algorithm": ["bon16"],
                    "reward_model": ["same"]}}
    plan = expand(grid(**own))
    assert {s.config.sampler.reward_dtype for s in plan.steps.values()
            if s.kind == "eval" and s.inputs.get("reward_model")} == {"bfloat16"}
    n8 = [{"name": "n8", "match": {"algorithm": "bon"}, "set": {"n": 8}}]
    assert dtypes(overrides=n8) == {"int8"}
    # at its default the field leaves an id as it was; another precision is another result
    from ablate.spec.plan import Step
    from ablate.spec.steps import EvalStep

    def step_id(sampler):
        return Step("e", EvalStep(benchmark="gsm8k", protocol="paper", seed=1, sampler=sampler),
                    {"reward_model": "r"}).id

    assert step_id(BestOfN()) == step_id(BestOfN(reward_dtype="float32"))
    assert step_id(BestOfN()) != step_id(BestOfN(reward_dtype="int8"))
