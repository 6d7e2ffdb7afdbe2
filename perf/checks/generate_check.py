"""ablate's transformers generation backend on one device: greedy GSM8k-style 8-shot prompts.

Loads the model through ``ablate.generate.load_backend(..., "hf")`` (bf16 on CUDA, float32 on the
CPU), runs a short untimed warm-up, then times greedy generation of ``--new-tokens`` tokens for
``--prompts`` GSM8k-train questions (the eval's 8-shot user turn and "Answer:" prefix) and reports
generated tokens/s. As a correctness check it also compares, for the first prompt, the backend's
greedy text with ``model.generate``'s (exact on float32; on bf16 a random model's near-tied
logits can legitimately part ways after a few tokens, so that is reported, not failed).

    python -m perf.checks.generate_check --model /tmp/smollm2-1.7b-random --json /tmp/generate.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from perf.common import Clock, emit, resolve_model, run_context


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a transformers folder or a built-in name")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--compare-tokens", type=int, default=16,
                        help="greedy tokens compared with model.generate (0: skip)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from ablate.data import load_prompts
    from ablate.evals.data import read_jsonl
    from ablate.evals.gsm8k import EXEMPLARS, build_user_turn
    from ablate.generate import hf
    from ablate.generate.base import SamplingParams, chat_prompt, load_backend

    model_dir = resolve_model(args.model)
    rows = load_prompts({"source": "prompt_set", "name": "gsm8k-train-slice"})[:args.prompts]
    if len(rows) < args.prompts:
        print(f"WARNING: only {len(rows)} GSM8k prompts available", flush=True)
    exemplars = read_jsonl(EXEMPLARS["paper"])

    with Clock() as load:
        backend = load_backend(model_dir, "hf")
    prompts = [chat_prompt(backend.tokenizer,
                           build_user_turn(exemplars, r["prompt"][-1]["content"]), "Answer:")
               for r in rows]
    prompt_tokens = [len(backend.encode(p)) for p in prompts]

    # Count the tokens each completion chose (drafted tokens accepted in one step count each).
    picked = [0]
    original_run = hf._DecodeBatch.run

    def counting_run(batch, rows, progress):
        original_run(batch, rows, progress)
        picked[0] += sum(row.picks for row in rows)

    hf._DecodeBatch.run = counting_run

    with Clock() as warmup:
        backend.generate(prompts[:2], SamplingParams(max_new_tokens=4))

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    picked[0] = 0
    with Clock() as clock:
        replies = backend.generate(prompts, SamplingParams(max_new_tokens=args.new_tokens))
    seconds = clock.seconds
    generated = picked[0]  # tokens chosen, EOS included; a finished row stops choosing

    comparison = None
    if args.compare_tokens:
        ours = backend.generate(prompts[:1], SamplingParams(max_new_tokens=args.compare_tokens))
        ours = ours[0][0]
        ids = torch.tensor([backend.encode(prompts[0])], device=backend.device)
        with torch.inference_mode():
            out = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         max_new_tokens=args.compare_tokens, do_sample=False,
                                         pad_token_id=backend.pad_id)
        theirs = backend.tokenizer.decode(out[0, ids.shape[1]:].tolist(),
                                          skip_special_tokens=True)
        common = 0
        while common < min(len(ours), len(theirs)) and ours[common] == theirs[common]:
            common += 1
        comparison = {"tokens": args.compare_tokens, "identical": ours == theirs,
                      "common_prefix_chars": common, "ablate": ours[:200],
                      "hf_generate": theirs[:200]}

    cuda = torch.cuda.is_available()
    result = {
        "benchmark": "generate_check", "backend": backend.name, "model": str(args.model),
        **run_context(), "dtype": str(next(backend.model.parameters()).dtype),
        "prompts": len(prompts), "mean_prompt_tokens": round(sum(prompt_tokens) / len(prompts), 1),
        "max_new_tokens": args.new_tokens, "generated_tokens": generated,
        "seconds": round(seconds, 3), "tokens_per_second": round(generated / seconds, 1),
        "load_seconds": round(load.seconds, 2), "warmup_seconds": round(warmup.seconds, 2),
        "reply_chars": [len(r[0]) for r in replies],
        "peak_gpu_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if cuda else None,
        "compare_with_hf_generate": comparison,
    }
    return emit(result, args.json)


if __name__ == "__main__":
    main()
