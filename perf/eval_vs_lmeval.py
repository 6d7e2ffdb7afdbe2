"""ablate's transformers backend against lm-eval's ``hf`` backend: same model, items, prompts, greedy.

    python -m perf.eval_vs_lmeval [--quick] [--json PATH] [--model smollm2-135m-instruct]

Both sides get the prompts ablate builds (chat template applied, rendered to text) through an
lm-eval task defined on a local JSON file, share one loaded model object, and are scored by the
same function; the run fails if the scores differ. Timings exclude model loading.
- GSM8k 8-shot CoT on the paper protocol's items, prompts and scorer (≤ 512 new tokens), with the
  full protocol's stop at "Question:" so that a rambling small model ends early on both sides.
- MMLU 0-shot: a fixed subset (the first N of ablate's interleaved item list), " A".." D".
``ratio`` = lm-eval's GSM8k time over ablate's (> 1: ablate is faster), ``ratio_mmlu`` likewise.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

# first: perf.common sets the offline environment before transformers is imported
from perf.common import Clock, benchmark_parser, emit, load_average, resolve_model, run_context

from ablate.evals import get_benchmark
from ablate.evals.base import EvalEnv
from ablate.evals.data import load_items
from ablate.evals.gsm8k import STOP as GSM8K_STOP
from ablate.evals.gsm8k import is_correct
from ablate.evals.mmlu import LETTERS, build_user_turn
from ablate.generate import SamplingParams, chat_prompt
from ablate.generate.hf import HFBackend
from ablate.spec.steps import EvalStep

STOP = GSM8K_STOP["full"]
MAX_NEW_TOKENS = 512


def lm_eval_task_yaml(folder: Path, name: str, data: Path, body: str) -> None:
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"test_split: test\ndoc_to_text: \"{{{{prompt}}}}\"\n{body}")


def run_lm_eval(model, tokenizer, folder: Path, task: str, batch_size: int, limit: int):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    # lm-eval gets the attention a model it loads itself would have (transformers' sdpa), not
    # ablate's (which reads grouped KV heads in place and would speed up lm-eval's padded batches).
    ours = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        with Clock() as clock:
            out = simple_evaluate(model=lm, tasks=[task],
                                  task_manager=TaskManager(include_path=str(folder)),
                                  log_samples=True, limit=limit)
    finally:
        model.set_attn_implementation(ours)
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return clock.seconds, samples


def parse_args(doc: str, argv=None):
    parser = benchmark_parser(doc, quick_help="fewer items (CPU, < 5 min)")
    parser.add_argument("--gsm8k-items", type=int)
    parser.add_argument("--mmlu-items", type=int)
    parser.add_argument("--lm-eval-batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    args.gsm8k_items = args.gsm8k_items or (8 if args.quick else 40)
    args.mmlu_items = args.mmlu_items or (100 if args.quick else 500)
    return args


def items_and_prompts(backend, model_dir: Path, n_gsm8k: int, n_mmlu: int):
    """The first GSM8k and MMLU items of the paper protocol, and their prompts as ablate builds
    them (``backend`` gives the tokenizer)."""
    env = EvalEnv(model_dir=model_dir, _backend=backend,
                  config=EvalStep(benchmark="gsm8k", protocol="paper", seed=1))
    gsm8k, mmlu = get_benchmark("gsm8k"), get_benchmark("mmlu")
    gsm_items, _ = load_items(gsm8k, "paper", n_gsm8k)
    mmlu_items, _ = load_items(mmlu, "paper", n_mmlu)
    mmlu_prompts = [chat_prompt(backend.tokenizer, build_user_turn(i, [], "paper"),
                                "The answer is:") for i in mmlu_items]
    return gsm_items, gsm8k.prompts(gsm_items, env), mmlu_items, mmlu_prompts


def write_lm_eval_tasks(folder: Path, gsm_items, gsm_prompts, mmlu_items, mmlu_prompts) -> None:
    """lm-eval tasks ``ablate_gsm8k`` and ``ablate_mmlu`` on these prompts, in ``folder``."""
    gsm_data, mmlu_data = folder / "gsm8k.jsonl", folder / "mmlu.jsonl"
    gsm_data.write_text("".join(json.dumps({"prompt": p, "target": i["target"]}) + "\n"
                                for p, i in zip(gsm_prompts, gsm_items)))
    mmlu_data.write_text("".join(json.dumps({"prompt": p, "answer": i["answer"]}) + "\n"
                                 for p, i in zip(mmlu_prompts, mmlu_items)))
    until = json.dumps(list(STOP))
    lm_eval_task_yaml(folder, "ablate_gsm8k", gsm_data,
                      "output_type: generate_until\ndoc_to_target: \"{{target}}\"\n"
                      f"generation_kwargs:\n  until: {until}\n  do_sample: false\n"
                      f"  max_gen_toks: {MAX_NEW_TOKENS}\nmetric_list:\n  - metric: exact_match\n")
    lm_eval_task_yaml(folder, "ablate_mmlu", mmlu_data,
                      "output_type: multiple_choice\ndoc_to_target: answer\n"
                      "doc_to_choice: [\"A\", \"B\", \"C\", \"D\"]\ntarget_delimiter: \" \"\n"
                      "metric_list:\n  - metric: acc\n")


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv)
    n_gsm8k, n_mmlu = args.gsm8k_items, args.mmlu_items

    model_dir = resolve_model(args.model)
    backend = HFBackend(model_dir)
    tokenizer, model = backend.tokenizer, backend.model
    gsm_items, gsm_prompts, mmlu_items, mmlu_prompts = items_and_prompts(
        backend, model_dir, n_gsm8k, n_mmlu)
    report: dict = {"benchmark": "eval_vs_lmeval", "model": str(args.model), **run_context(),
                    "quick": args.quick}

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_lm_eval_tasks(folder, gsm_items, gsm_prompts, mmlu_items, mmlu_prompts)

        # Warm both code paths (first calls pay one-time allocation and dispatch costs).
        backend.generate(gsm_prompts[:1], SamplingParams(max_new_tokens=2, stop=STOP))
        run_lm_eval(model, tokenizer, folder, "ablate_mmlu", args.lm_eval_batch_size, 1)

        # ---- GSM8k
        with Clock() as clock:
            ours = backend.generate(gsm_prompts, SamplingParams(max_new_tokens=MAX_NEW_TOKENS,
                                                                stop=STOP))
        ours_s = clock.seconds
        theirs_s, samples = run_lm_eval(model, tokenizer, folder, "ablate_gsm8k",
                                        args.lm_eval_batch_size, n_gsm8k)
        theirs = [s["resps"][0][0] for s in samples]
        our_scores = [is_correct(o[0], i["target"], "paper") for o, i in zip(ours, gsm_items)]
        their_scores = [is_correct(t, i["target"], "paper") for t, i in zip(theirs, gsm_items)]
        report["gsm8k"] = {
            "items": n_gsm8k, "ablate_s": ours_s, "lm_eval_s": theirs_s,
            "ablate_exact_match": 100 * sum(our_scores) / n_gsm8k,
            "lm_eval_exact_match": 100 * sum(their_scores) / n_gsm8k,
            "identical_outputs": sum(o[0] == t for o, t in zip(ours, theirs)),
            "same_scores": our_scores == their_scores,
            "prompt_tokens_mean": sum(len(backend.encode(p)) for p in gsm_prompts) / n_gsm8k,
            "output_tokens_mean": sum(len(backend.encode(o[0])) for o in ours) / n_gsm8k}

        # ---- MMLU
        with Clock() as clock:
            lls = backend.loglikelihood([(p, [f" {x}" for x in LETTERS]) for p in mmlu_prompts])
        ours_s = clock.seconds
        our_pred = [max(range(4), key=lambda k: ll[k]) for ll in lls]
        theirs_s, samples = run_lm_eval(model, tokenizer, folder, "ablate_mmlu",
                                        args.lm_eval_batch_size, n_mmlu)
        their_pred = [max(range(4), key=lambda k: s["resps"][k][0][0]) for s in samples]
        gold = [i["answer"] for i in mmlu_items]
        report["mmlu"] = {
            "items": n_mmlu, "ablate_s": ours_s, "lm_eval_s": theirs_s,
            "ablate_accuracy": 100 * sum(p == g for p, g in zip(our_pred, gold)) / n_mmlu,
            "lm_eval_accuracy": 100 * sum(p == g for p, g in zip(their_pred, gold)) / n_mmlu,
            "same_predictions": sum(a == b for a, b in zip(our_pred, their_pred)),
            "same_scores": our_pred == their_pred}

    report["load_average_end"] = load_average()
    report["ratio"] = report["gsm8k"]["lm_eval_s"] / report["gsm8k"]["ablate_s"]
    report["ratio_mmlu"] = report["mmlu"]["lm_eval_s"] / report["mmlu"]["ablate_s"]
    emit(report, args.json)
    if not (report["gsm8k"]["same_scores"] and report["mmlu"]["same_scores"]):
        raise SystemExit("the two backends' scores differ (see the JSON)")
    return report


if __name__ == "__main__":
    main()
