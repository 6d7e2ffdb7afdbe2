"""PPO on the embedded model (issue 7): a short CPU run of ``ablate.train.ppo.train_ppo`` on
SmolLM2-135M-Instruct with a programmatic reward, at two KL coefficients.

Prompts: GSM8k train questions (the shipped ``gsm8k-train-slice``). Reward (``--reward``, default
``short_response`` from ``perf/ppo_rewards.py``): ``1 - characters/200`` of
the reply, a dense checkable reward (GSM8k correctness is too sparse for a 135M model in CPU
minutes). The run recorded in perf/RESULTS.md did not raise it in 10 iterations: every reply hit
the 32-token cap, so a length reward could not move. ``--reward digit_share`` (the share of the
reply's visible characters that are digits) is a per-character property the policy can change
within a capped reply; the second run in perf/RESULTS.md uses it with more, shorter rollouts
(it did not raise that reward either: 0.022 -> 0.011 over 12 iterations):

    OMP_NUM_THREADS=1 python -m perf.checks.ppo_smollm2_proof --reward digit_share --beta 0.05 \
        --iterations 12 --prompts 16 --response-length 20 --minibatch 16 --ppo-epochs 2 \
        --lr 5e-5 --repeat 0 --show-replies 4 --json /tmp/ppo_smollm2_digits.json

Third attempt (issue 7), registered here before its PPO run. Base rates first: ``--base-rates
4`` samples 4 replies of at most 6 tokens per prompt (the 63 prompts below, T = 0.7) from the SFT
model and counts first words. Measured with an earlier seeding of the same sampler (one seed per
repeat, not per chunk), 252 replies: "To" 89 (0.353), "Let's" 28 (0.111), "If" 11 (0.044), then
names and articles. Reward: ``opens_with_lets`` (1 when the first word is "Let's", else 0), base
rate 0.11: decided by the first one or two tokens, and a minority opener, so that sharpening the
policy towards its mode ("To") lowers it rather than raises it. Settings, fixed before the run:

    OMP_NUM_THREADS=1 python -m perf.checks.ppo_smollm2_proof --reward opens_with_lets --beta 0.05 \
        --iterations 15 --prompts 16 --response-length 10 --minibatch 8 --ppo-epochs 1 \
        --lr 5e-5 --repeat 2 --json /tmp/ppo_lets_b0.05.json     # and --beta 0.5 --repeat 0

i.e. 15 iterations x 16 prompts x at most 10 new tokens, two minibatches of 8 per iteration (30
optimiser steps, lr 5e-5 decaying linearly to 0), temperature 0.7, seed 1, no-EOS penalty 0, value
model from the policy. Success criterion: at β = 0.05 the share of "Let's" replies over iterations
13-15 (48 replies) exceeds that over iterations 1-3 by at least 0.15, with a two-proportion z of
at least 2; KL stays bounded (every iteration below 10 nats at both β); the mean KL of iterations
13-15 is smaller at β = 0.5 than at β = 0.05; the seeded repeat of the first 2 iterations is
identical. Whatever comes out is reported, as for the first two attempts.

Outcome of that run (perf/RESULTS.md, "Third attempt"): stopped after 4 of 15 iterations under a
load average of 7-9, the reward falling 0.19 -> 0.06 -> 0 -> 0 with 3-4 nats of KL, and the
random new value head's values (mean 0.8 at iteration 1, explained variance -3 to -22) swamping
the 0/1 reward in the advantages. Fourth attempt, registered before its run: ``train_ppo`` now
zeroes a value head it initialises from the policy (first advantages = discounted returns), and
the learning rate is lower to cut the drift the reward does not pay for:

    OMP_NUM_THREADS=1 python -m perf.checks.ppo_smollm2_proof --reward opens_with_lets --beta 0.05 \
        --iterations 12 --prompts 16 --response-length 10 --minibatch 8 --ppo-epochs 1 \
        --lr 3e-5 --repeat 0 --json /tmp/ppo_lets4_b0.05.json      # and --beta 0.5, in parallel

(24 optimiser steps.) Success criterion as above with iterations 10-12 for 13-15; the seeded
repeat check is that the two β runs, separate processes with the same seed, give identical
rewards, KL and entropy at iterations 1 and 2 (KL is 0 at iteration 1, so the first update does
not depend on β).

Outcome (perf/RESULTS.md): at β = 0.05 the share rose 0.458 -> 0.894 (z 5.1) with 5-7 nats of KL,
most final replies being one template ("Let's break it down step by step:"); at β = 0.5 KL stayed
at 0.5-1.9 nats and the share fell 0.167 -> 0.021; iterations 1-2 identical in both runs.

Each β gets its own run from the same SFT weights with the same seed, so both see the same prompts
in the same order. The value model is initialised from the policy (there is no reward model).

Printed and written to ``--json``: per iteration the mean reward (``rm_score``, before the KL
penalty), the sequence KL to the reference (``kl``, nats summed over the response), the mean
response length and the generation / training seconds; per β the mean reward of the first three
and the last three iterations and the final and largest KL. With ``--repeat K`` the first β is run
again for K iterations with the same seed (same schedule, stopped after K) and its metrics are
compared with the first K iterations of the full run: seeded runs must repeat exactly. Every
reply of the first and the last iteration of each run goes to ``--json`` with its reward
(``--show-replies N`` prints N of each).

    OMP_NUM_THREADS=1 python -m perf.checks.ppo_smollm2_proof --json /tmp/ppo_smollm2.json

Nothing here asserts a figure: the script reports what the runs did.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from perf.common import load_average, resolve_model, run_context


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="a built-in model name")
    p.add_argument("--prompt-set", default="gsm8k-train-slice")
    p.add_argument("--reward", default="short_response",
                   help="a reward function of perf/ppo_rewards.py, by name")
    p.add_argument("--iterations", type=int, default=10, help="PPO iterations per beta")
    p.add_argument("--beta", type=float, nargs="+", default=[0.05, 0.5])
    p.add_argument("--prompts", type=int, default=8, help="prompts (rollouts) per iteration")
    p.add_argument("--response-length", type=int, default=32, help="max new tokens")
    p.add_argument("--max-prompt-length", type=int, default=80,
                   help="keep only prompts of at most this many chat-templated tokens (CPU time "
                        "grows with the padded prompt width; 80 keeps 63 of the 200 GSM8k ones)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--ppo-epochs", type=int, default=1)
    p.add_argument("--minibatch", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--no-eos-penalty", type=float, default=0.0,
                   help="score added to replies cut at --response-length (PPOConfig default -10; "
                        "0 here: 32 tokens is too short for most GSM8k answers)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2,
                   help="rerun the first beta for this many iterations to check reproducibility "
                        "(0: skip)")
    p.add_argument("--show-replies", type=int, default=0,
                   help="print this many replies of each run's first and last iteration")
    p.add_argument("--base-rates", type=int, default=0, metavar="K",
                   help="instead of training: sample K replies per prompt from the SFT model, "
                        "print the most common first words and every programmatic reward's mean")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", type=Path, help="write the figures here")
    return p.parse_args(argv)


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "seconds" not in k and "per_second" not in k}
            for r in rows]


def pooled(rewards: list[float]) -> dict:
    """Mean of per-reply rewards with its standard error (replies taken as independent)."""
    mean = statistics.fmean(rewards)
    sd = statistics.stdev(rewards) if len(rewards) > 1 else 0.0
    return {"n": len(rewards), "mean": mean, "se": sd / math.sqrt(len(rewards))}


def reply_spread(replies: list[list[dict]], k: int = 3) -> dict:
    """First-k vs last-k iterations over the individual replies: means, standard errors and the
    z of the difference (for a 0/1 reward, a two-proportion z with unpooled variances)."""
    first = pooled([r["reward"] for it in replies[:k] for r in it])
    last = pooled([r["reward"] for it in replies[-k:] for r in it])
    se = math.hypot(first["se"], last["se"])
    return {"first": first, "last": last, "rise": last["mean"] - first["mean"],
            "z": (last["mean"] - first["mean"]) / se if se > 0 else float("nan")}


def base_rates(args, policy_dir: Path, rows: list[dict]) -> dict:
    from collections import Counter

    from ablate.train.rollout import sample_token_ids, tokenize_prompts
    from perf.ppo_rewards import REWARDS
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()
    items, _ = tokenize_prompts(rows, tokenizer, args.max_prompt_length)
    texts: list[str] = []
    for repeat in range(args.base_rates):
        _, _, ids, width = sample_token_ids(model, tokenizer, items,
                                            temperature=args.temperature,
                                            max_new_tokens=args.response_length,
                                            seed=args.seed * 1000 + repeat, batch_size=32)
        texts += tokenizer.batch_decode(ids[:, :width], skip_special_tokens=True)
    first = Counter((t.split() or [""])[0].rstrip(".,:;!?") for t in texts)
    means = {name: statistics.fmean(f(i, t) for i, t in zip(items * args.base_rates, texts))
             for name, f in REWARDS.items() if name != "gsm8k_exact"}
    print(f"{len(texts)} replies ({args.base_rates} per prompt, <= {args.response_length} "
          f"tokens, T = {args.temperature}); most common first words:")
    for word, count in first.most_common(12):
        print(f"  {word!r:14} {count:4d}  {count / len(texts):.3f}")
    print("programmatic reward means: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    return {"replies": len(texts), "first_words": first.most_common(25), "reward_means": means}


def summarise(beta: float, rows: list[dict], wall: float) -> dict:
    reward = [r["rm_score"] for r in rows]
    kl = [r["kl"] for r in rows]
    k = min(3, len(rows))
    first, last = statistics.fmean(reward[:k]), statistics.fmean(reward[-k:])
    return {"beta": beta, "iterations": len(rows), "reward_first3": first, "reward_last3": last,
            "reward_rise": last - first, "kl_final": kl[-1], "kl_last3": statistics.fmean(kl[-k:]),
            "kl_max": max(kl), "response_length_first3": statistics.fmean(
                r["response_length"] for r in rows[:k]),
            "response_length_last3": statistics.fmean(r["response_length"] for r in rows[-k:]),
            "generation_seconds": sum(r["generation_seconds"] for r in rows),
            "training_seconds": sum(r["training_seconds"] for r in rows), "wall_seconds": wall,
            "per_iteration": [{key: r[key] for key in (
                "step", "rm_score", "kl", "reward", "response_length", "no_eos_share", "entropy",
                "policy_clipfrac", "approx_kl_old", "generation_seconds", "training_seconds")}
                for r in rows]}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from ablate.data import load_prompts
    from ablate.spec.schema import PPOConfig
    from ablate.train.common import plan_batches
    from ablate.train.loop import StopRequested
    from ablate.train.ppo import train_ppo
    from ablate.train.rollout import tokenize_prompts
    from perf import ppo_rewards
    from transformers import AutoTokenizer

    if args.reward not in ppo_rewards.REWARDS:
        sys.exit(f"unknown reward {args.reward!r}; valid: {', '.join(ppo_rewards.REWARDS)}")
    reward = f"perf.ppo_rewards:{args.reward}"
    started = time.perf_counter()
    policy_dir = resolve_model(args.model)
    all_rows = load_prompts({"source": "prompt_set", "name": args.prompt_set, "max_rows": None,
                             "sample_seed": 0})
    # Drop long prompts here, not in train_ppo, so that the batch plan below counts what is used.
    items, _ = tokenize_prompts(all_rows, AutoTokenizer.from_pretrained(policy_dir),
                                args.max_prompt_length)
    rows = [all_rows[i.index] for i in items]
    # ``epochs`` such that plan_batches gives exactly --iterations batches of --prompts prompts
    per_epoch = math.ceil(len(rows) / args.prompts)
    epochs = (args.iterations - 0.5) / per_epoch

    def config(beta: float) -> PPOConfig:
        return PPOConfig(lr=args.lr, beta=beta, prompts_per_batch=args.prompts,
                         minibatch_size=args.minibatch, micro_batch_size=args.prompts,
                         ppo_epochs=args.ppo_epochs, epochs=epochs,
                         max_prompt_length=args.max_prompt_length,
                         max_response_length=args.response_length,
                         temperature=args.temperature, no_eos_penalty=args.no_eos_penalty,
                         no_eos_penalty_mode="add",
                         value_init="policy", save_every_steps=10_000)

    assert len(plan_batches(len(rows), args.prompts, epochs, args.seed)) == args.iterations
    if args.base_rates:
        found = base_rates(args, policy_dir, rows)
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "machine": run_context(), **found}, indent=1))
        return 0
    info = {"command": " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "model_dir": str(policy_dir), "prompt_rows": len(rows),
            "prompt_rows_in_set": len(all_rows), "machine": run_context(),
            "config": config(args.beta[0]).model_dump(exclude={"beta"}), "runs": []}
    print(f"{args.model} on {args.prompt_set} ({len(rows)} of {len(all_rows)} prompts, <= "
          f"{args.max_prompt_length} tokens), reward {args.reward}, "
          f"{args.iterations} iterations x {args.prompts} prompts x <= {args.response_length} "
          f"tokens, lr {args.lr}, {args.ppo_epochs} PPO epochs, torch threads "
          f"{torch.get_num_threads()}", flush=True)
    # Record the replies the reward scores: train_ppo imports its programmatic reward from
    # perf.ppo_rewards when it starts, so a recording wrapper put there sees every reply.
    reward_function = ppo_rewards.REWARDS[args.reward]
    scored: list[dict] = []

    def recording(item, response):
        value = reward_function(item, response)
        scored.append({"reply": response, "reward": value})
        return value

    with tempfile.TemporaryDirectory(prefix="ppo_smollm2_") as tmp:
        for beta in args.beta:
            out = Path(tmp) / f"beta_{beta}"
            began = time.perf_counter()
            replies: list[list[dict]] = []

            def progress(i, n, _):
                replies.append(list(scored))
                scored.clear()
                print(f"  beta={beta}: iteration {i}/{n} ({time.perf_counter() - began:.0f} s)",
                      flush=True)

            setattr(ppo_rewards, args.reward, recording)
            try:
                train_ppo(policy_dir, rows, config(beta), args.seed, out, reward=reward,
                          progress=progress)
            finally:
                setattr(ppo_rewards, args.reward, reward_function)
                scored.clear()
            result = summarise(beta, read_metrics(out), time.perf_counter() - began)
            result["replies_first"], result["replies_last"] = replies[0], replies[-1]
            result["reply_spread"] = reply_spread(replies)
            info["runs"].append(result)
            print(f"beta={beta}: iter  reward    kl      len   gen_s  train_s")
            for r in result["per_iteration"]:
                print(f"          {r['step']:4d}  {r['rm_score']:.4f}  {r['kl']:7.4f}  "
                      f"{r['response_length']:5.1f}  {r['generation_seconds']:5.1f}  "
                      f"{r['training_seconds']:6.1f}")
            print(f"beta={beta}: mean reward first 3 {result['reward_first3']:.4f} -> last 3 "
                  f"{result['reward_last3']:.4f} (rise {result['reward_rise']:+.4f}); KL final "
                  f"{result['kl_final']:.4f}, last 3 {result['kl_last3']:.4f}, max "
                  f"{result['kl_max']:.4f}; {result['wall_seconds']:.0f} s", flush=True)
            spread = result["reply_spread"]
            means = [it["rm_score"] for it in result["per_iteration"]]
            sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
            print(f"beta={beta}: per reply, first 3 iterations {spread['first']['mean']:.4f} "
                  f"+- {spread['first']['se']:.4f} (n={spread['first']['n']}), last 3 "
                  f"{spread['last']['mean']:.4f} +- {spread['last']['se']:.4f} (n="
                  f"{spread['last']['n']}); rise {spread['rise']:+.4f}, z {spread['z']:.2f}; "
                  f"iteration means sd first 3 {sd(means[:3]):.4f}, last 3 {sd(means[-3:]):.4f}",
                  flush=True)
            for label, key in (("first", "replies_first"), ("last", "replies_last")):
                for r in result[key][:args.show_replies]:
                    print(f"  {label} iteration, reward {r['reward']:.3f}: {r['reply']!r}")
        if args.repeat:
            k = min(args.repeat, args.iterations)
            out = Path(tmp) / "repeat"
            try:
                train_ppo(policy_dir, rows, config(args.beta[0]), args.seed, out,
                          reward=reward, stop_after=k)
            except StopRequested:
                pass
            original = read_metrics(Path(tmp) / f"beta_{args.beta[0]}")[:k]
            same = comparable(read_metrics(out)) == comparable(original)
            info["repeat"] = {"beta": args.beta[0], "iterations": k, "identical": same}
            print(f"repeat of beta={args.beta[0]}, first {k} iterations, same seed: metrics "
                  f"{'identical' if same else 'DIFFER'}", flush=True)
    if len(info["runs"]) > 1:
        ordered = sorted(info["runs"], key=lambda r: r["beta"])
        print("KL (last 3 iterations) by beta: " + ", ".join(
            f"{r['beta']}: {r['kl_last3']:.4f}" for r in ordered))
    info["wall_seconds"] = time.perf_counter() - started
    info["machine"]["load_average_end"] = load_average()
    print(f"wall time {info['wall_seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
