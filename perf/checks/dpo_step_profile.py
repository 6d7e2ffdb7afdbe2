"""Where one DPO optimiser step of ablate spends its GPU time, and what compiling parts would save.

Runs ablate's own pieces (shared-prompt batches, ``CompletionLogps``, the DPO loss, the fused
AdamW of ``make_optimizer``, clipping) on length-grouped batches of the shipped UltraFeedback
slice, in modes run one after another on one loaded model:

- ``eager``: as ``train_dpo`` runs today; ``torch.profiler`` records ``--profile-steps`` steps
  and the kernels with the most GPU time are printed, grouped as matrix products, attention,
  the output layer's log-probs, the optimiser and the rest (element-wise work);
- ``regions``: the trainer's ``compile_regions`` option (each layer's MLP and norms compiled,
  per module instance);
- ``pointwise``: RMSNorm, the MLP and rotary embedding compiled as small regions by patching
  transformers' Llama classes (the patch stays for later modes: list it last);
- ``layers``: each decoder layer's forward compiled (``torch.compile(layer.forward,
  dynamic=True)``), with ``TORCH_LOGS=recompiles`` worth setting to see why it is slow where it
  is (perf/RESULTS.md: inductor's size guards recompile it as lengths change);
- ``bf16``: weights, gradients and AdamW state in bf16, no autocast (no fp32 master copy, as
  torchtune's default recipes train): not what ``train_dpo`` does (bf16 autocast over fp32
  weights, TRL's setting too), but it shows how much the fp32 residual stream, the weight casts
  and autocast's dispatch cost: the ceiling of the next mode;
- ``master``: the trainer's ``precision: bf16_weights`` (``ablate.train.precision``): bf16
  weights without autocast, fp32 master copies that AdamW updates.

Each mode first runs ``--warmup`` passes over the steps it then times (so every shape's cuDNN
attention plan is built and every compiled shape is compiled: the state of a long run), then
reports seconds per step (CUDA-synchronised) and the useful-FLOP utilisation 6·params·real
tokens / time / peak, as ``perf/dpo_vs_trl.py`` counts it. Modes run in one process; the patches
of ``pointwise`` stay in place for later modes, so list it last.

    python -m perf.checks.dpo_step_profile --model DIR --modes eager pointwise --json OUT.json
    python -m perf.checks.dpo_step_profile --quick      # CPU, tiny model: checks the script runs
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

from perf.common import (
    Clock, count_parameters, cuda_sync, emit, fitting_pairs, on_cuda, peak_bf16_flops,
    resolve_model, run_context,
)


def kernel_group(name: str) -> str:
    lowered = name.lower()
    if any(k in lowered for k in ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "matmul")):
        return "matrix products"
    if any(k in lowered for k in ("fmha", "attention", "flash", "efficient_attention")):
        return "attention"
    if "adam" in lowered or "multi_tensor" in lowered:
        return "optimiser"
    return "element-wise and other"


def compile_layers(hf_model) -> None:
    from ablate.train.fsdp import decoder_layers

    for layer in decoder_layers(hf_model):
        layer.forward = torch.compile(layer.forward, dynamic=True)


def compile_pointwise() -> None:
    """RMSNorm, MLP and the rotary embedding of transformers' Llama compiled as small regions."""
    from transformers.models.llama import modeling_llama as llama

    llama.LlamaRMSNorm.forward = torch.compile(llama.LlamaRMSNorm.forward, dynamic=True)
    llama.LlamaMLP.forward = torch.compile(llama.LlamaMLP.forward, dynamic=True)
    llama.apply_rotary_pos_emb = torch.compile(llama.apply_rotary_pos_emb, dynamic=True)


def run_mode(mode: str, model_dir: Path, pairs, args, params: int, peak) -> dict:
    from transformers import AutoModelForCausalLM

    from ablate.train.collate import collate_shared_prompt, width_multiple
    from ablate.spec.schema import DPOConfig
    from ablate.train.common import autocast, make_optimizer, plan_batches
    from ablate.train.logps import CompletionLogps
    from ablate.train.losses import preference_loss

    device = torch.device("cuda" if on_cuda() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    masters = None
    if mode == "bf16":
        model.to(torch.bfloat16)
    if mode == "master":
        from ablate.train.precision import MasterWeights

        masters = MasterWeights(model)
    if mode == "regions":
        from ablate.train.common import compile_regions

        compile_regions(model)
    elif mode == "pointwise":
        compile_pointwise()
    elif mode == "layers":
        compile_layers(model)
    policy = CompletionLogps(model).to(device)
    trained_module = policy if masters is None else masters.to(device)
    optimizer = make_optimizer(trained_module, 1e-7, 0.0, DPOConfig().adam_beta2)
    trained = list(trained_module.parameters())
    # bf16 weights run without autocast (it would only add dispatch work)
    precision = (lambda: contextlib.nullcontext()) if mode in ("bf16", "master") else \
        (lambda: autocast(device))
    batches = plan_batches(len(pairs), args.batch_size, 1, seed=1,
                           lengths=[p.layout_length(True) for p in pairs], length_grouping=16)
    pad = model.config.pad_token_id or 0

    def step(group) -> int:
        batch = collate_shared_prompt([pairs[i] for i in group], pad,
                                      width_multiple(args.pad_multiple, device)).to(device)
        with precision():
            logps = policy.batch_logps(batch)
        n = len(group)
        # a fixed reference (zeros) keeps the step's work that of a precomputed-reference run
        zeros = torch.zeros(n, device=device)
        losses, _, _ = preference_loss("sigmoid", logps[:n], logps[n:], zeros, zeros, beta=0.1)
        (losses.sum() / n).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trained, 1.0)
        # the trainer's one read per step (StepWork.read), before the optimiser step
        torch.stack([losses.detach().sum().float(), grad_norm.float()]).cpu()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if masters is not None:
            masters.copy_back()
        return sum(pairs[i].real_tokens for i in group)

    timed = batches[:args.steps]
    with Clock() as warmup:
        for _ in range(args.warmup):
            for group in timed:
                step(group)
    warmup_seconds = warmup.seconds
    tokens = 0
    with Clock() as clock:
        for group in timed:
            tokens += step(group)
    seconds = clock.seconds
    result = {"mode": mode, "warmup_passes": args.warmup, "warmup_seconds": round(warmup_seconds, 2),
              "steps": len(timed), "seconds": round(seconds, 3),
              "seconds_per_step": round(seconds / max(1, len(timed)), 4),
              "real_tokens": tokens, "real_tokens_per_second": round(tokens / seconds, 1)}
    if peak:
        result["train_flop_utilisation"] = round(6 * params * tokens / seconds / peak, 4)
    if on_cuda():
        result["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if mode == "eager" and args.profile_steps:
        result["profile"] = profile(step, timed[:args.profile_steps])
    del policy, model, optimizer
    if on_cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def profile(step, groups) -> dict:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda() else [])
    with Clock() as clock, torch_profile(activities=activities) as prof:
        for group in groups:
            step(group)
        cuda_sync()
    wall = clock.seconds
    # kernels only: operator rows (aten::mm) repeat their kernels' time, and "Command Buffer
    # Full" is the launch queue waiting on the GPU, not GPU work
    events = [e for e in prof.key_averages()
              if on_cuda() and e.device_type == torch.autograd.DeviceType.CUDA
              and e.self_device_time_total > 0 and e.key != "Command Buffer Full"]
    total = sum(e.self_device_time_total for e in events)
    groups_us: dict[str, float] = {}
    for e in events:
        groups_us[kernel_group(e.key)] = groups_us.get(kernel_group(e.key), 0) + \
            e.self_device_time_total
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:25]
    if on_cuda():
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25,
                                        max_name_column_width=70), flush=True)
    return {"steps": len(groups), "wall_seconds": round(wall, 3),
            "gpu_busy_seconds": round(total / 1e6, 3),
            # kernel time over wall time: how much of the step the GPU had work queued
            "gpu_busy_fraction": round(total / 1e6 / wall, 3) if wall else None,
            "groups_seconds": {k: round(v / 1e6, 3) for k, v in
                               sorted(groups_us.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": e.key[:120], "seconds": round(e.self_device_time_total / 1e6, 4),
                             "calls": e.count} for e in top]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--quick", action="store_true", help="CPU, tiny model, few steps")
    parser.add_argument("--modes", nargs="+", default=["eager", "regions"],
                        choices=["eager", "regions", "pointwise", "layers", "bf16", "master"])
    parser.add_argument("--pairs", type=int, default=168)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-prompt-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1, help="passes over the timed steps "
                        "before timing")
    parser.add_argument("--pad-multiple", type=int, default=0,
                        help="as DPOConfig.pad_multiple (0: 64 on a GPU, none on CPU)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.max_length, args.max_prompt_length = 24, 256, 128
        args.steps, args.profile_steps = 2, 1

    model_dir = resolve_model(args.model)
    _, pairs, _ = fitting_pairs(model_dir, args.pairs, args.max_length, args.max_prompt_length,
                                allow_fewer=True)
    params = count_parameters(model_dir)
    peak = peak_bf16_flops()[0] if on_cuda() else None
    modes = []
    for mode in args.modes:
        try:
            modes.append(run_mode(mode, model_dir, pairs, args, params, peak))
        except Exception as error:  # report the other modes even if one breaks
            modes.append({"mode": mode, "error": f"{type(error).__name__}: {error}"[:2000]})
        print(modes[-1] if "profile" not in modes[-1] else
              {k: v for k, v in modes[-1].items() if k != "profile"}, flush=True)
    return emit({"benchmark": "dpo_step_profile", "model": str(args.model), "pairs": len(pairs),
                 "params": params, "peak_bf16_flops": peak, **run_context(),
                 "modes": modes}, args.json)


if __name__ == "__main__":
    main()
