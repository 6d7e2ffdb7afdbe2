"""ablate's PPO iteration against TRL's RLOOTrainer (TRL 1.16 has no PPO), in one process.

Both sides get the same model, the same prompts, the same number of rollouts per iteration (TRL's
RLOO needs two samples per prompt, so it gets half as many prompts, each sampled twice), the same
response-length cap, temperature 0.7, a reference model, one optimiser pass over the rollouts,
float32, transformers ``generate``, and the same programmatic reward (share of capital letters), so
that reward cost does not differ. ablate's PPO does more work per rollout than RLOO (a value model,
trained alongside), as the paper's PPO does. The first iteration of each side is a warm-up and is
not timed.

Figures: per iteration the generation and training seconds, rollout tokens/s during generation,
and rollout+update throughput = response tokens / (generation + training seconds); ``ratio`` =
ablate's rollout+update throughput over TRL's (> 1: ablate is faster).

    python -m perf.ppo_step --quick --json /tmp/ppo.json   # CPU, tiny Llama, < 5 minutes
    python -m perf.ppo_step --json /tmp/ppo.json           # SmolLM2-135M, 64 rollouts x 256 (GPU)
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from perf.common import benchmark_parser, emit, resolve_model, run_context, shared_data_dir


def prompt_rows(n: int) -> list[dict]:
    """GSM8k train questions from the shared data, or a built-in list when it is absent."""
    path = shared_data_dir() / "gsm8k" / "train.jsonl"
    if path.is_file():
        with open(path) as handle:
            questions = [json.loads(line)["question"] for _, line in zip(range(n), handle)]
    else:
        questions = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?"
                     for i in range(n)]
    return [{"prompt": [{"role": "user", "content": q}], "reference": None} for q in questions]


def uppercase_reward(completions, **kwargs) -> list[float]:
    from perf.ppo_rewards import uppercase_share

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [uppercase_share(None, t) for t in texts]


def run_ablate(model_dir: Path, rows: list[dict], rollouts: int, length: int, iterations: int,
               device: torch.device) -> dict:
    from ablate.spec.schema import PPOConfig
    from ablate.train.ppo import train_ppo

    cfg = PPOConfig(lr=1e-6, prompts_per_batch=rollouts, minibatch_size=rollouts,
                    micro_batch_size=rollouts, ppo_epochs=1,
                    epochs=iterations * rollouts / len(rows), max_prompt_length=512,
                    max_response_length=length, temperature=0.7, value_init="policy",
                    save_every_steps=10_000)
    with tempfile.TemporaryDirectory() as out:
        train_ppo(model_dir, rows, cfg, 1, Path(out), reward="perf.ppo_rewards:uppercase_share",
                  device=device)
        metrics = [json.loads(line) for line in
                   (Path(out) / "metrics.jsonl").read_text().splitlines()]
    timed = metrics[1:]
    generation = sum(m["generation_seconds"] for m in timed)
    training = sum(m["training_seconds"] for m in timed)
    tokens = sum(m["response_tokens"] for m in timed)
    return {"iterations_timed": len(timed), "rollouts_per_iteration": rollouts,
            "response_tokens": tokens, "mean_response_length": tokens / (len(timed) * rollouts),
            "generation_seconds_per_iteration": generation / len(timed),
            "training_seconds_per_iteration": training / len(timed),
            "generation_tokens_per_second": tokens / generation,
            "rollout_update_tokens_per_second": tokens / (generation + training)}


def run_trl(model_dir: Path, rows: list[dict], rollouts: int, length: int, iterations: int,
            device: torch.device) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = RLOOConfig(output_dir=out, use_cpu=device.type == "cpu", bf16=False,
                          per_device_train_batch_size=rollouts, generation_batch_size=rollouts,
                          num_generations=2, max_completion_length=length, temperature=0.7,
                          learning_rate=1e-6, beta=0.05, max_steps=iterations, logging_steps=1,
                          gradient_checkpointing=False, report_to=[], save_strategy="no",
                          seed=1, disable_tqdm=True)
        kwargs = {"ref_model": ref} if "ref_model" in RLOOTrainer.__init__.__code__.co_varnames \
            else {}
        trainer = RLOOTrainer(model=model, reward_funcs=uppercase_reward, args=args,
                              train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[timer], **kwargs)
        trainer.train()
    logs = [entry for entry in trainer.state.log_history if "completions/mean_length" in entry]
    timed_logs, timed_seconds = logs[1:], timer.seconds[1:]
    tokens = sum(e["completions/mean_length"] * rollouts for e in timed_logs)
    seconds = sum(timed_seconds)
    return {"iterations_timed": len(timed_seconds), "rollouts_per_iteration": rollouts,
            "response_tokens": tokens, "mean_response_length": tokens / (len(timed_logs) * rollouts),
            "seconds_per_iteration": seconds / len(timed_seconds),
            "rollout_update_tokens_per_second": tokens / seconds,
            "note": "RLOO: two samples per prompt; TRL times generation and update as one step"}


def main(argv: list[str] | None = None) -> dict:
    parser = benchmark_parser(__doc__, quick_help="CPU, small batch, < 5 minutes", model=None,
                              model_help="a built-in model name or a transformers folder "
                              "(default: tiny-llama with --quick, else smollm2-135m-instruct)")
    parser.add_argument("--rollouts", type=int, default=None)
    parser.add_argument("--response-length", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=None)
    args = parser.parse_args(argv)

    # SmolLM2 on a shared 2-core CPU takes minutes per PPO iteration: --quick uses the tiny model
    args.model = args.model or ("tiny-llama" if args.quick else "smollm2-135m-instruct")
    model_dir = resolve_model(args.model)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    rollouts = args.rollouts or (8 if args.quick else 64)
    length = args.response_length or (32 if args.quick else 256)
    iterations = args.iterations or (3 if args.quick else 4)
    rows = prompt_rows(rollouts * iterations)
    ablate = run_ablate(model_dir, rows, rollouts, length, iterations, device)
    trl = run_trl(model_dir, rows[: len(rows) // 2], rollouts, length, iterations, device)
    result = emit({
        "benchmark": "ppo_step", "model": args.model, **run_context(), "device": str(device),
        "rollouts_per_iteration": rollouts, "max_response_length": length,
        "ablate": ablate, "trl_rloo": trl,
        "ratio": ablate["rollout_update_tokens_per_second"]
        / trl["rollout_update_tokens_per_second"],
    }, args.json)
    print(f"ratio (ablate PPO rollout+update tokens/s over TRL RLOO): {result['ratio']:.2f}")
    return result


if __name__ == "__main__":
    main()
