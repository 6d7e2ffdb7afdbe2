"""vLLM against lm-eval's ``hf`` backend and ablate's transformers backend: same model, items,
prompts, greedy, in one run (in the vLLM environment, ``make setup-vllm``).

    .venv-vllm/bin/python -m perf.vllm_vs_lmeval [--quick] [--json PATH] [--model NAME]

The items, prompts, lm-eval tasks and scorers are those of ``perf.eval_vs_lmeval``; vLLM runs
through ablate's vLLM backend (``ablate.generate.vllm_backend``: the same prompt ids, stops and
decoding as the transformers backend). The run fails unless all three give the same GSM8k scores
and MMLU predictions; the JSON counts identical outputs. Timings exclude model loading and the
engine's start (reported apart).
``ratio`` = lm-eval's GSM8k time over vLLM's (> 1: vLLM is faster); ``ratio_mmlu`` likewise;
``ratio_vllm_over_ablate`` = ablate's transformers backend's GSM8k time over vLLM's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

# first: perf.common sets the offline environment before transformers is imported
from perf.common import Clock, emit, load_average, resolve_model, run_context
from perf.eval_vs_lmeval import (
    MAX_NEW_TOKENS, STOP, items_and_prompts, parse_args, run_lm_eval, write_lm_eval_tasks,
)

from ablate.evals.gsm8k import is_correct
from ablate.evals.mmlu import LETTERS
from ablate.generate import SamplingParams
from ablate.generate.hf import HFBackend


def timed_engines(engines: dict, gsm_prompts, mmlu_prompts) -> dict:
    """Each engine's GSM8k replies and MMLU log-likelihoods, with their seconds."""
    runs = {}
    for name, engine in engines.items():
        engine.generate(gsm_prompts[:1], SamplingParams(max_new_tokens=2, stop=STOP))  # warm
        with Clock() as gsm:
            replies = engine.generate(gsm_prompts, SamplingParams(max_new_tokens=MAX_NEW_TOKENS,
                                                                  stop=STOP))
        with Clock() as mmlu:
            lls = engine.loglikelihood([(p, [f" {x}" for x in LETTERS]) for p in mmlu_prompts])
        runs[name] = {"gsm8k": [r[0] for r in replies], "gsm8k_s": gsm.seconds,
                      "mmlu": [max(range(4), key=ll.__getitem__) for ll in lls],
                      "mmlu_s": mmlu.seconds}
    return runs


def main(argv=None) -> dict:
    from ablate.generate.vllm_backend import VLLMBackend

    args = parse_args(__doc__, argv)
    n_gsm8k, n_mmlu = args.gsm8k_items, args.mmlu_items

    model_dir = resolve_model(args.model)
    with Clock() as start:
        vllm = VLLMBackend(model_dir, max_model_len=4096)
    hf = HFBackend(model_dir)
    tokenizer, model = hf.tokenizer, hf.model
    gsm_items, gsm_prompts, mmlu_items, mmlu_prompts = items_and_prompts(
        hf, model_dir, n_gsm8k, n_mmlu)
    report: dict = {"benchmark": "vllm_vs_lmeval", "model": str(args.model), **run_context(),
                    "quick": args.quick, "vllm_engine_start_s": start.seconds}
    runs = timed_engines({"vllm": vllm, "ablate": hf}, gsm_prompts, mmlu_prompts)
    vllm.close()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_lm_eval_tasks(folder, gsm_items, gsm_prompts, mmlu_items, mmlu_prompts)
        run_lm_eval(model, tokenizer, folder, "ablate_mmlu", args.lm_eval_batch_size, 1)  # warm
        gsm_s, samples = run_lm_eval(model, tokenizer, folder, "ablate_gsm8k",
                                     args.lm_eval_batch_size, n_gsm8k)
        mmlu_s, mmlu_samples = run_lm_eval(model, tokenizer, folder, "ablate_mmlu",
                                           args.lm_eval_batch_size, n_mmlu)
    runs["lm_eval"] = {"gsm8k": [s["resps"][0][0] for s in samples], "gsm8k_s": gsm_s,
                       "mmlu": [max(range(4), key=lambda k: s["resps"][k][0][0])
                                for s in mmlu_samples], "mmlu_s": mmlu_s}

    scores = {name: [is_correct(o, i["target"], "paper") for o, i in zip(run["gsm8k"], gsm_items)]
              for name, run in runs.items()}
    gold = [i["answer"] for i in mmlu_items]
    for name, run in runs.items():
        report[name] = {
            "gsm8k_s": run["gsm8k_s"], "mmlu_s": run["mmlu_s"],
            "gsm8k_exact_match": 100 * sum(scores[name]) / n_gsm8k,
            "mmlu_accuracy": 100 * sum(p == g for p, g in zip(run["mmlu"], gold)) / n_mmlu,
            "gsm8k_outputs_identical_to_vllm": sum(
                a == b for a, b in zip(run["gsm8k"], runs["vllm"]["gsm8k"])),
            "mmlu_predictions_equal_to_vllm": sum(
                a == b for a, b in zip(run["mmlu"], runs["vllm"]["mmlu"]))}
    report.update(gsm8k_items=n_gsm8k, mmlu_items=n_mmlu, load_average_end=load_average(),
                  ratio=runs["lm_eval"]["gsm8k_s"] / runs["vllm"]["gsm8k_s"],
                  ratio_mmlu=runs["lm_eval"]["mmlu_s"] / runs["vllm"]["mmlu_s"],
                  ratio_vllm_over_ablate=runs["ablate"]["gsm8k_s"] / runs["vllm"]["gsm8k_s"])
    same = (len({tuple(s) for s in scores.values()}) == 1
            and len({tuple(r["mmlu"]) for r in runs.values()}) == 1)
    report["same_scores"] = same
    emit(report, args.json)
    if not same:
        raise SystemExit("the engines' GSM8k scores or MMLU predictions differ (see the JSON)")
    return report


if __name__ == "__main__":
    main()
