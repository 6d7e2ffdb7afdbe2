"""The planner (ablate/launch/planner.py): its formulas by hand, its estimates against measured
peaks (the H200 DPO run of perf/RESULTS.md, CPU runs of a small model), resources per step kind
and size, and the dry run of the paper's Table 3 on the example GPU profile."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from ablate.cli import app
from ablate.launch.planner import (
    GIB, LOGIT_CHUNK, activation_bytes_per_token, attention_scores_bytes, frozen_model_bytes,
    kv_cache_bytes, optimiser_step_bytes, output_layer_bytes, trained_model_bytes, trained_model_phases,
)
from ablate.launch.profile import ClusterProfile, load_profile, parse_params
from ablate.launch.slurm import _dry_run_script, sbatch_parameters
from ablate.spec.model_shapes import KNOWN_SHAPES, ModelShape

from test_slurm import REPO

TINY = ModelShape(hidden=8, layers=2, heads=2, kv_heads=1, intermediate=16, vocab=10)


def test_parameter_counts_by_hand():
    # embeddings 2·10·8 = 160; a layer: q,o 2·8·8 = 128, k,v 2·8·4 = 64, MLP 3·8·16 = 384,
    # norms 16 -> 592; final norm 8
    assert TINY.kv_dim == 4 and TINY.layer_params == 592
    assert TINY.params == 160 + 2 * 592 + 8
    # Llama 2's published sizes: 13.0B and 69.0B
    assert 13.0e9 < KNOWN_SHAPES["allenai/tulu-2-13b"].params < 13.1e9
    assert 68.9e9 < KNOWN_SHAPES["allenai/tulu-2-70b"].params < 69.1e9


def test_memory_formulas_by_hand():
    # a layer under bf16 autocast over fp32: norms 4·4·8 = 128, casts 5·2·8 = 80, attention
    # 2·4·8 = 64 (the one key/value head repeated to both), MLP 2·4·16 = 128 -> 400; two layers
    # and the final norm 2·4·8 = 64
    assert activation_bytes_per_token(TINY, False) == 2 * 400 + 64
    # checkpointed: each layer's fp32 input (2·4·8) plus one layer recomputed
    assert activation_bytes_per_token(TINY, True) == 64 + 400 + 64
    # fp32 throughout: no casts, 4-byte tensors
    assert activation_bytes_per_token(TINY, False, 4, 4) == 2 * (128 + 4 * 32 + 4 * 64) + 64
    assert attention_scores_bytes(TINY, rows=3, width=5, checkpointing=False) == 2 * 3 * 2 * 25 * 4
    assert kv_cache_bytes(TINY, sequences=3, tokens=7) == 2 * 2 * 4 * 2 * 3 * 7
    assert trained_model_bytes(100, 4, accumulating=True, offload=False) == {
        "weights": 100.0, "gradients": 100.0, "optimiser": 200.0}
    assert trained_model_bytes(100, 4, accumulating=False, offload=False)["gradients"] == 0
    assert set(trained_model_bytes(100, 4, True, offload=True).values()) == {0}
    # frozen models as the trainers hold them: bf16 shards over several GPUs, fp32 on one
    assert frozen_model_bytes(100, 4) == 50 and frozen_model_bytes(100, 1) == 400
    assert optimiser_step_bytes(100, 4, offload=False, fused=True) == 400
    assert optimiser_step_bytes(100, 4, offload=False, fused=False) == 500  # a foreach temporary
    # two chunks' worth of answers: one chunk's fp32 logits and softmax, and the head's gradient
    assert output_layer_bytes(TINY, 2 * LOGIT_CHUNK) == 2 * LOGIT_CHUNK * 10 * 4 + 10 * 8 * 4
    assert output_layer_bytes(TINY, 3) == 2 * 3 * 10 * 4 + 10 * 8 * 4


def test_logit_chunk_is_the_trainers():
    import inspect

    from ablate.train.logps import CompletionLogps

    assert inspect.signature(CompletionLogps).parameters["chunk"].default == LOGIT_CHUNK


def test_h200_dpo_peak_within_15_percent():
    """perf/RESULTS.md (GPU check of 2026-11-27, call 2): ablate's DPO on the 1.7B shape, bf16
    autocast over fp32 weights, batch = micro-batch = 8 pairs, one GPU: 58.6 GiB peak allocated.
    Its longest shared-prompt row is 1,742 tokens (the 168 shipped UltraFeedback-slice pairs
    that fit 1,024 / 512, with SmolLM2's tokenizer), so the largest micro-batch is 8 × 1,742."""
    shape = ModelShape(hidden=2048, layers=24, heads=32, kv_heads=32, intermediate=8192,
                       vocab=49152, tied=True)  # perf/random_model.py's smollm2-1.7b
    assert abs(shape.params - 1.71e9) < 0.01e9
    phases = trained_model_phases(shape, world=1, rows=8, width=1742, answer_tokens=8 * 1742,
                                  checkpointing=False, accumulating=False, fused=True)
    estimate = max(sum(parts.values()) for parts in phases.values())
    assert abs(estimate / GIB / 58.6 - 1) < 0.15, estimate / GIB


CPU_SHAPES = {
    "4-layer": dict(hidden=256, intermediate=1024, layers=4, heads=4, kv_heads=4, vocab=4096,
                    micro_batch=4, prompt=128, answer=384),
    # grouped keys and values, a wider model, a shorter batch: the weights' share is larger
    "grouped-kv": dict(hidden=512, intermediate=1024, layers=2, heads=8, kv_heads=2, vocab=8192,
                       micro_batch=2, prompt=64, answer=192),
}


@pytest.fixture(scope="module")
def cpu_peaks():
    """One process measures every shape (one import of torch and transformers)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "perf.checks.training_memory", "--shapes",
                          json.dumps(list(CPU_SHAPES.values()))], env=env, capture_output=True,
                         text=True, check=True, cwd=REPO, timeout=600)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return dict(zip(CPU_SHAPES, lines))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CPU_SHAPES))
def test_cpu_dpo_peak_within_15_percent(cpu_peaks, name):
    """Peak resident memory of DPO steps of small random models on the CPU (fp32, the math
    attention kernel, unfused AdamW) against the same formulas."""
    shape, measured = CPU_SHAPES[name], cpu_peaks[name]
    model = ModelShape(**{k: shape[k] for k in ("hidden", "intermediate", "layers", "heads",
                                                 "kv_heads", "vocab")})
    assert measured["params"] == model.params
    rows, width = shape["micro_batch"], shape["prompt"] + 2 * shape["answer"]
    assert measured["tokens"] == rows * width
    phases = trained_model_phases(model, world=1, rows=rows, width=width,
                                  answer_tokens=rows * 2 * shape["answer"], checkpointing=False,
                                  accumulating=False, compute_bytes=4, residual_bytes=4,
                                  attention_scores=True, fused=False)
    estimate = max(sum(parts.values()) for parts in phases.values())
    assert abs(estimate / measured["peak_bytes"] - 1) < 0.15, (estimate, measured)


def test_resources_by_step_kind_and_size():
    profile = ClusterProfile.model_validate({
        "train": {"nodes": 1, "gpus_per_node": 8, "cpus_per_task": 32},
        "steps": {"rm": [{"min_params": "30B", "nodes": 4}, {"min_params": "100B", "nodes": 8}],
                  "best_of_n": [{"gpus_per_node": 2}]}})
    assert profile.resources_for("rm", 13e9).nodes == 1
    assert profile.resources_for("rm", 69e9).nodes == 4
    assert profile.resources_for("rm", 69e9).cpus_per_task == 32  # the class's, unchanged
    assert profile.resources_for("rm", 200e9).nodes == 8
    assert profile.resources_for("dpo", 69e9).nodes == 1
    assert profile.resources_for("best_of_n", None).gpus_per_node == 2
    assert profile.resources_for("eval", None).gpus_per_node == 0
    assert parse_params("1.5b") == 1.5e9 and parse_params(7e9) == 7e9
    with pytest.raises(ValueError, match="not a parameter count"):
        parse_params("70Q")
    with pytest.raises(ValueError, match="evaluation jobs run on one node"):
        ClusterProfile.model_validate({"steps": {"eval": [{"nodes": 2}]}})
    with pytest.raises(ValueError, match=r"steps.rm\[0\].gpus_per_node: 16 GPUs, but a node has 8"):
        ClusterProfile.model_validate({"node_gpus": 8, "steps": {"rm": [{"gpus_per_node": 16}]}})


def test_srun_gets_the_cpus_per_task():
    profile = load_profile(REPO / "slurm" / "example-gpu.yaml")
    params = sbatch_parameters(profile, "train", "job")
    script = _dry_run_script(REPO / "logs", params, 1)
    srun = [line for line in script.splitlines() if line.startswith("srun")]
    assert srun and "--cpus-per-task=64" in srun[0]


def test_table3_dry_run_refuses_70b_rms_on_one_node_and_accepts_them_on_four(tmp_path):
    example = (REPO / "slurm" / "example-gpu.yaml").read_text()
    one_node = tmp_path / "one-node.yaml"
    one_node.write_text(example.split("# --- resources by step kind")[0]
                        + "gpu: {memory_gib: 80, bf16_tflops: 989}\n")
    runner = CliRunner()
    env = {"COLUMNS": "250"}
    base = ["grid", str(REPO / "grids" / "table3.yaml"), "--dry-run",
            "--store", str(tmp_path / "store"), "--cluster"]
    refused = runner.invoke(app, [*base, str(one_node)], env=env)
    assert refused.exit_code == 2, refused.output
    lines = " ".join(refused.output.split())
    for rm in ("uf-70b", "mix-70b"):
        assert f"refused: train_rm rm={rm} needs" in lines
    # what to change: enough nodes (the example gives 4); offload would need > 900 GB per node
    assert "or 3 nodes of 8 GPUs (steps.rm: [{min_params: 68B, nodes: 3}] in the profile)" in lines
    assert ("to make it fit: cpu_offload: true (reward_models.<name>.train) on nodes with "
            "1104 GB for the job (mem_gb, now 900)") in lines
    assert "refused: train_rm rm=uf-13b" not in lines  # 13B fits one node
    assert "nothing was submitted" in lines

    accepted = runner.invoke(app, [*base, str(REPO / "slurm" / "example-gpu.yaml")], env=env)
    lines = " ".join(accepted.output.split())
    assert accepted.exit_code == 0 and "refused" not in lines, lines
    assert "peak memory per GPU" in lines and "GPU-hours" in lines


def test_best_of_n_scoring_formulas_by_hand():
    from ablate.launch.planner import scoring_phase
    from ablate.spec.model_shapes import scoring_batch_bytes, scoring_weight_bytes

    assert TINY.params == 1352
    assert scoring_weight_bytes(TINY, "float32") == 4 * 1352
    assert scoring_weight_bytes(TINY, "bfloat16") == 2 * 1352
    # int8: the layers' linear weights (2 · (592 - 16 norm weights)) one byte each, the rest fp16
    assert scoring_weight_bytes(TINY, "int8") == 1152 + 2 * (1352 - 1152)
    # a token: the residual and its normed copy 2·2·8, the bf16 input 2·8, the MLP's three live
    # tensors 3·2·16 (larger than attention's 4·2·8); plus the 3·5·5 boolean mask
    assert scoring_batch_bytes(TINY, rows=3, width=5, dtype="bfloat16") == \
        15 * (32 + 16 + 96) + 75
    # float32 weights under autocast: an fp32 residual stream, bf16 matmul outputs
    assert scoring_batch_bytes(TINY, rows=3, width=5, dtype="float32") == \
        15 * (64 + 16 + 96) + 75
    # one GPU holds the model; two hold half each, and one may hold a whole layer (592 of the
    # 1352 parameters) more
    assert scoring_phase(TINY, "bfloat16", 1)["reward model"] == 2704
    assert scoring_phase(TINY, "bfloat16", 2)["reward model"] == 1352 + 2704 * 592 / 1352


def test_best_of_n_with_a_70b_reward_model_fits_its_gpus_or_says_how_many(tmp_path):
    """Best-of-N releases the generator and spreads the reward model over the job's GPUs: the
    paper protocol's int8 70B RM fits the example's 4 GPUs; in bfloat16 on one GPU it is refused,
    naming the GPUs that would hold it and the smaller reward_dtype."""
    from ablate.launch.planner import plan_resources
    from ablate.spec import expand, load_grid

    def bon70(grid_spec, profile):
        grid = tmp_path / "table3.yaml"
        grid.write_text(yaml.safe_dump(grid_spec))
        plans = plan_resources(expand(load_grid(grid)), profile)
        return next(sp for sp in plans if sp.step.name.startswith("eval gsm8k")
                    and "rm=uf-70b" in sp.step.name and "alg=bon" in sp.step.name)

    spec = yaml.safe_load((REPO / "grids" / "table3.yaml").read_text())
    example = load_profile(REPO / "slurm" / "example-gpu.yaml").config
    paper = bon70(spec, example)
    assert paper.step.config.sampler.reward_dtype == "int8" and paper.fits
    assert paper.resources.gpus_per_node == 4 and paper.estimate.peak_phase == "scoring"
    scoring = paper.estimate.phases["scoring"]
    assert 16 * GIB < scoring["reward model"] < 18 * GIB  # 69B in ~1 byte each, over 4 GPUs

    spec["algorithms"] = {"bon": {"kind": "bon", "reward_dtype": "bfloat16"}}
    one_gpu = ClusterProfile.model_validate(yaml.safe_load(
        (REPO / "slurm" / "example-gpu.yaml").read_text().split("# --- resources by step")[0]
        + "gpu: {memory_gib: 80}\n"))
    refused = bon70(spec, one_gpu)
    assert refused.step.config.sampler.reward_dtype == "bfloat16"
    assert not refused.fits and refused.resources.gpus_per_node == 1
    assert refused.options[0] == ("2 GPUs (steps.best_of_n: [{min_params: 68B, "
                                  "gpus_per_node: 2}] in the profile)")
    assert refused.options[1].startswith("a smaller reward_dtype (the bon algorithm's: int8;")
    assert bon70(spec, example).fits  # bfloat16 over 4 GPUs


def test_planned_settings_keep_every_step_id(tmp_path):
    """What the planner turns on (checkpointing, a smaller micro-batch) reaches the submitted
    plan without changing a step id."""
    from ablate.cli import load_checked
    from ablate.launch.planner import plan_resources, with_planned_settings

    _, plan = load_checked(REPO / "grids" / "table3.yaml")
    profile = load_profile(REPO / "slurm" / "example-gpu.yaml").config
    plans = plan_resources(plan, profile)
    planned = with_planned_settings(plan, plans)
    assert set(planned.steps) == set(plan.steps)
    rm70 = next(sp for sp in plans if sp.step.name == "train_rm rm=uf-70b")
    assert rm70.fits and rm70.resources.nodes == 4 and rm70.settings.checkpointing
    config = planned.steps[rm70.step.id].config.train
    assert config.gradient_checkpointing and config.micro_batch_size == rm70.settings.micro_batch
    assert plan.steps[rm70.step.id].config.train.gradient_checkpointing is False


def test_70b_reward_model_on_one_node_fits_with_offload_and_the_host_memory_it_names(tmp_path):
    from ablate.launch.planner import plan_resources
    from ablate.spec import expand, load_grid

    spec = yaml.safe_load((REPO / "grids" / "table3.yaml").read_text())
    spec["reward_models"]["uf-70b"]["train"] = {"cpu_offload": True}
    grid = tmp_path / "table3.yaml"
    grid.write_text(yaml.safe_dump(spec))
    plan = expand(load_grid(grid))
    example = (REPO / "slurm" / "example-gpu.yaml").read_text().split("# --- resources by step")[0]
    gpu = "gpu: {memory_gib: 80}\n"
    small = ClusterProfile.model_validate(yaml.safe_load(example + gpu))

    def rm70(profile):
        return next(sp for sp in plan_resources(plan, profile)
                    if sp.step.name == "train_rm rm=uf-70b")

    refused = rm70(small)  # 16 bytes a parameter in host memory: 1.1 TB on one node
    assert not refused.fits and refused.estimate.host_bytes > 900e9
    big = ClusterProfile.model_validate(yaml.safe_load(
        example.replace("mem_gb: 900", "mem_gb: 1200") + gpu))
    accepted = rm70(big)
    assert accepted.fits and accepted.resources.nodes == 1 and accepted.settings.offload
    assert accepted.estimate.peak_bytes < 0.95 * 80 * GIB
    # the mix-70b RM, not offloaded, still needs more nodes and says how many
    mix = next(sp for sp in plan_resources(plan, big) if sp.step.name == "train_rm rm=mix-70b")
    assert not mix.fits and any("3 nodes of 8 GPUs" in o for o in mix.options)


def test_submit_refuses_what_cannot_fit_before_any_script(tmp_path):
    profile = tmp_path / "one-gpu.yaml"
    profile.write_text("partition: gpu\nnode_gpus: 1\ngpu: {memory_gib: 24}\n"
                       "train: {gpus_per_node: 1, mem_gb: 64}\neval: {gpus_per_node: 1}\n"
                       "judge: {gpus_per_node: 1}\n")
    result = CliRunner().invoke(app, ["grid", str(REPO / "grids" / "table3.yaml"), "--submit",
                                      "--dry-run", "--cluster", str(profile), "--store",
                                      str(tmp_path / "store")], env={"COLUMNS": "250"})
    lines = " ".join(result.output.split())
    assert result.exit_code == 2, lines
    assert "refused: train_rm rm=uf-13b" in lines and "#SBATCH" not in lines
    assert not (tmp_path / "store" / "grids").exists()


def test_a_profile_without_gpu_sizes_nothing(tmp_path):
    result = CliRunner().invoke(app, ["grid", str(REPO / "grids" / "table3.yaml"), "--dry-run",
                                      "--cluster", str(REPO / "slurm" / "local.yaml"), "--store",
                                      str(tmp_path / "store")], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "no gpu: {memory_gib: ...} in the profile, so no step was sized" in \
        " ".join(result.output.split())


def test_counted_tokens_by_hand():
    from ablate.launch.planner import counted_tokens
    from ablate.spec.plan import Step
    from ablate.spec.schema import DataRef, DPOConfig, ModelSpec, PPOConfig
    from ablate.spec.steps import DPOStep, PPOStep, PromptsRef
    from ablate.train.common import TokenizedPair
    from ablate.train.rollout import PromptItem

    dpo = Step("d", DPOStep(model=ModelSpec(builtin="tiny-llama"), seed=1,
                            data=DataRef(name="x"), algorithm=DPOConfig()), {})
    pairs = [TokenizedPair(0, (1, 2), (3,), (4, 5, 6)), TokenizedPair(1, (1,), (2, 3), (4,))]
    tokens = counted_tokens(dpo, pairs)
    # shared-prompt rows: 2 + 1 + 3 = 6 and 1 + 2 + 1 = 4; real tokens 2·2 + 1 + 3 = 8, 2 + 3 = 5
    assert (tokens.examples, tokens.longest, tokens.tokens_per_example) == (2, 6, 6.5)
    plain = Step("d", dpo.config.model_copy(update={"algorithm": DPOConfig(shared_prompt=False)}),
                 {})
    assert counted_tokens(plain, pairs).longest == 2 * 5  # two rows of prompt + longer answer
    ppo = Step("p", PPOStep(model=ModelSpec(builtin="tiny-llama"), seed=1,
                            prompts=PromptsRef(name="x", source="prompt_set"),
                            algorithm=PPOConfig(max_response_length=10), reward="m:f"), {})
    items = [PromptItem(0, (), (1, 2, 3), None), PromptItem(1, (), (1,), None)]
    assert counted_tokens(ppo, items) == type(tokens)(2, 13, 12.0, counted=True)


def test_count_tokens_sizes_a_step_at_its_data(tmp_path):
    """--count-tokens: the shipped slice tokenized as DPO will, on the built-in tiny model."""
    grid = tmp_path / "tiny.yaml"
    grid.write_text("name: tiny\nmodels: {m: {builtin: tiny-llama}}\n"
                    "datasets: {uf: {name: ultrafeedback-slice, max_rows: 16}}\n"
                    "algorithms: {dpo: {kind: dpo, max_length: 512, max_prompt_length: 256}}\n"
                    "axes: {model: [m], data: [uf], algorithm: [dpo]}\n"
                    "baseline: false\neval: {benchmarks: [gsm8k]}\n")
    base = ["grid", str(grid), "--dry-run", "--cluster", str(REPO / "slurm" / "example-gpu.yaml"),
            "--store", str(tmp_path / "store")]
    counted = CliRunner().invoke(app, [*base, "--count-tokens"], env={"COLUMNS": "250"})
    bounded = CliRunner().invoke(app, base, env={"COLUMNS": "250"})
    assert counted.exit_code == 0 and bounded.exit_code == 0, counted.output + bounded.output
    assert "16 rows, ≤ limits" in bounded.output
    longest = int(re.search(r"16 rows, longest ([\d,]+)", counted.output).group(1).replace(",", ""))
    assert 0 < longest <= 2 * 512


def test_gpu_hours_by_hand():
    from ablate.launch.planner import USEFUL_FLOP_UTILISATION, Tokens, gpu_hours, plan_step
    from ablate.launch.profile import GPUSpec, Resources
    from ablate.spec.plan import Step
    from ablate.spec.schema import DataRef, ModelSpec, RMConfig
    from ablate.spec.steps import RMStep

    gpu = GPUSpec(memory_gib=80, bf16_tflops=1000)
    # an hour of a 1,000 TFLOP/s GPU at the calibrated utilisation
    assert gpu_hours(3.6e18 * USEFUL_FLOP_UTILISATION, gpu) == pytest.approx(1.0)
    rm = Step("r", RMStep(model=ModelSpec(builtin="tiny-llama"), seed=1, data=DataRef(name="x"),
                          train=RMConfig(epochs=2)), {})
    shapes = {"policy": TINY}
    tokens = Tokens(examples=100, longest=50, tokens_per_example=30.0, counted=True)
    sized = plan_step(rm, shapes, Resources(gpus_per_node=1), gpu, tokens)
    assert sized.fits and not sized.settings.checkpointing
    # 6·P·T over 2 epochs of 100 pairs of 30 tokens
    flops = 6 * TINY.params * 2 * 100 * 30
    assert sized.estimate.flops == flops
    assert sized.gpu_hours == pytest.approx(flops / (USEFUL_FLOP_UTILISATION * 1e15) / 3600)
    # a GPU too small for the activations: checkpointing on, and its recomputed forward counted
    small = GPUSpec(memory_gib=(sized.estimate.peak_bytes - 1) / GIB / 0.95)
    checkpointed = plan_step(rm, shapes, Resources(gpus_per_node=1), small, tokens)
    assert checkpointed.settings.checkpointing and checkpointed.checkpointing_by_rule
    assert checkpointed.estimate.flops == 8 * TINY.params * 2 * 100 * 30


def test_each_job_asks_sbatch_for_its_step_kind_and_size(tmp_path):
    from ablate.cli import load_checked
    from ablate.launch.slurm import submit_plan
    from ablate.store import RunStore

    _, plan = load_checked(REPO / "grids" / "table3.yaml")
    rows = submit_plan(plan, RunStore(tmp_path / "store"),
                       load_profile(REPO / "slurm" / "example-gpu.yaml"), dry_run=True)
    script = {row["name"]: row["sbatch"] for row in rows}
    assert "#SBATCH --nodes=4" in script["train_rm rm=uf-70b"]
    assert "#SBATCH --nodes=1" in script["train_rm rm=uf-13b"]
    assert "#SBATCH --nodes=2" in script["train_ppo data=uf-fg,alg=ppo,rm=uf-13b,prompts=uf,seed=1"]
    bon70 = next(name for name in script if name.startswith("eval gsm8k") and "alg=bon,rm=uf-70b"
                 in name)
    assert "#SBATCH --gpus-per-node=4" in script[bon70]
    baseline = next(name for name in script if name.startswith("eval gsm8k") and "SFT" in name)
    assert "#SBATCH --gpus-per-node=1" in script[baseline]


def test_a_step_whose_data_is_not_here_is_sized_at_the_papers_row_count():
    """Before a download, a paper split's training step is sized at the paper's count (Table 2's
    60,908-pair downsample; Table 4's 60K prompts), and a grid's own max_rows wins."""
    import dataclasses

    from ablate.cli import plan_of
    from ablate.launch.planner import limit_tokens
    from ablate.spec import load_grid

    plan = plan_of(load_grid(REPO / "grids" / "table2.yaml"))
    counts = {step.config.data.name: limit_tokens(step).examples
              for step in plan.steps.values() if step.kind == "train_dpo"}
    assert counts["tulu25-hh-rlhf-60k"] == 60_908
    assert counts["tulu25-chatbot-arena-2023"] == 20_465
    ppo = [limit_tokens(step).examples for step in plan.steps.values()
           if step.kind == "train_ppo"]
    assert ppo and all(n is not None and n > 0 for n in ppo)
    capped = next(s for s in plan.steps.values() if s.kind == "train_dpo")
    capped = dataclasses.replace(capped, config=capped.config.model_copy(update={
        "data": capped.config.data.model_copy(update={"max_rows": 100})}))
    assert limit_tokens(capped).examples == 100
