"""AlpacaEval 1 and 2: the model's answers to 805 instructions against a reference model's, judged
pairwise; win rates by alpaca-eval's own ``get_winrate`` and ``get_length_controlled_winrate``.

Judges (``judge`` in the eval config): an OpenAI-compatible endpoint defined in judges.yaml, which
sees the two outputs in a seeded random order, with each version's own alpaca-eval annotator
prompt: AlpacaEval 2's ``alpaca_eval_clf_gpt4_turbo`` (the judge answers "m" or "M"; its top
log-probabilities give a weighted preference when the endpoint returns them) and AlpacaEval 1's
``alpaca_eval_gpt4`` (a ranking of the two models, read by alpaca-eval's ``ranking_parser``); or
``reward_model`` (the run's reward-model input, or a judges.yaml entry
of kind reward_model): preference = 1 + sigmoid(r_model - r_reference), no network. An output
identical to the reference is a draw (preference 1.5) that no judge is asked about, as alpaca-eval's
pairwise annotator decides it (tatsu-lab/alpaca_eval@cd543a14:
src/alpaca_eval/annotators/pairwise_evaluator.py, "deals with equality").

The length-controlled win rate needs alpaca-eval's instruction-difficulty table (``df_gamed.csv``
from the hub dataset tatsu-lab/alpaca_eval): give its path in ``$ABLATE_ALPACA_DF_GAMED``.
"""

from __future__ import annotations

import math
import numbers
import os
import random
import re
from importlib.resources import files
from pathlib import Path

from ablate.evals.base import Benchmark, EvalEnv, EvalError, ItemResult, Summary
from ablate.evals.data import read_json
from ablate.spec.judges import PAPER_JUDGES

DRAW = 1.5  # alpaca-eval's preference for a tie
MESSAGE = re.compile(r"<\|im_start\|>(\w+)\n(.*?)\n?<\|im_end\|>", re.DOTALL)


def judge_messages(instruction: str, output_1: str, output_2: str,
                   annotator: tuple[str, str] = ("alpaca_eval_clf_gpt4_turbo",
                                                 "alpaca_eval_clf.txt")) -> list[dict]:
    """An alpaca-eval annotator's prompt (its config folder and template file) as chat messages."""
    template = (files("alpaca_eval") / "evaluators_configs" / annotator[0]
                / annotator[1]).read_text()
    fill = lambda text: (text.replace("{instruction}", instruction)
                         .replace("{output_1}", output_1).replace("{output_2}", output_2))
    return [{"role": role, "content": fill(content)} for role, content in MESSAGE.findall(template)]


def parse_preference(answer: dict | None) -> float | None:
    """1 = output_1 better, 2 = output_2 better, fractional from log-probabilities; None if the
    judge's answer is neither "m" nor "M"."""
    if not answer:
        return None
    top = answer.get("top_logprobs") or []
    probs = {t["token"].strip(): math.exp(t["logprob"]) for t in top
             if isinstance(t, dict) and t.get("token", "").strip() in ("m", "M")}
    if probs:
        return 1.0 + probs.get("M", 0.0) / sum(probs.values())
    text = (answer.get("text") or "").strip()
    return {"m": 1.0, "M": 2.0}.get(text)


def parse_ranking(answer: dict | None) -> float | None:
    """AlpacaEval 1's judge ranks the two models: 1 = output_1 ranked first, 2 = output_2; None
    if alpaca-eval's ``ranking_parser`` cannot read the answer."""
    from alpaca_eval.completion_parsers import ranking_parser

    text = (answer or {}).get("text") or ""
    if not text.strip():
        return None
    rank = ranking_parser(text.strip())[0]
    return None if rank != rank else float(rank)  # NaN: unreadable


def winrates(annotations: list[dict], df_gamed: Path | None) -> dict[str, float]:
    """alpaca-eval's win rate, and its length-controlled one when the difficulty file is there."""
    import pandas as pd
    from alpaca_eval import metrics

    frame = pd.DataFrame(annotations)
    # the counts (n_wins, n_wins_base, n_draws, n_total) come as numpy integers
    result = {k: int(v) if isinstance(v, numbers.Integral) else float(v)
              for k, v in metrics.get_winrate(frame).items() if isinstance(v, numbers.Real)}
    if df_gamed is None:
        return result
    if not Path(df_gamed).is_file():
        raise EvalError(f"alpaca_eval: instruction-difficulty file {df_gamed} does not exist")
    from alpaca_eval.metrics import glm_winrate

    original = glm_winrate.hf_hub_download
    glm_winrate.hf_hub_download = lambda *a, **k: str(df_gamed)  # alpaca-eval fetches it itself
    try:
        lc = metrics.get_length_controlled_winrate(frame, save_weights_dir=None,
                                                   is_add_glm_preference_inplace=False)
    finally:
        glm_winrate.hf_hub_download = original
    result["length_controlled_winrate"] = float(lc["length_controlled_winrate"])
    return result


class _AlpacaEval(Benchmark):
    hub_id = "tatsu-lab/alpaca_eval"
    data_revision = "github:tatsu-lab/alpaca_eval@cd543a149df89434d8a54582c0151c0b945c3d20"
    libraries = ("alpaca_eval",)
    reference_file = ""
    # open-instruct's AlpacaEval generation (the paper's) allows 8192 new tokens; a model with a
    # shorter window stops at its end (the backends cap replies there)
    default_max_new_tokens = 8192
    # the judge: alpaca-eval's annotator (config folder, template), its answer length, and how
    # its answer becomes a preference (AlpacaEval 2's by default)
    annotator = ("alpaca_eval_clf_gpt4_turbo", "alpaca_eval_clf.txt")
    judge_max_tokens, judge_logprobs = 1, True

    @staticmethod
    def parse_judgement(answer: dict | None) -> float | None:
        return parse_preference(answer)

    @property
    def required_files(self):
        return (f"alpaca_eval/{self.reference_file}",)

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        rows = read_json(data_dir / "alpaca_eval" / self.reference_file)
        if not isinstance(rows, list) or not all("instruction" in r and "output" in r for r in rows):
            raise EvalError(f"{self.reference_file}: expected a list of {{instruction, output}}")
        return [{"item_id": str(k), "index": k, "instruction": r["instruction"],
                 "reference": r["output"], "reference_generator": r.get("generator", "reference"),
                 "dataset": r.get("dataset", "")} for k, r in enumerate(rows)]

    def turns(self, items: list[dict], env: EvalEnv) -> list[tuple[str, str]]:
        return [(i["instruction"], "") for i in items]

    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        if env.judge is None or env.judge.kind == "string_match":
            raise EvalError(f"{self.name} needs a judge model: name one in the grid's "
                            "eval.judge or eval.judges (defined under `judges:` or in "
                            "$ABLATE_JUDGES), e.g. an openai judge or kind reward_model")
        from ablate.evals.judges import get_judge

        judge = get_judge(env.judge, env.cache_dir, env.reward_model_dir)
        prompts = self.prompts(items, env)
        replies = env.generate(prompts, env.new_tokens(self.default_max_new_tokens),
                               rm_prompts=[i["instruction"] for i in items])
        outputs = [r[0] for r in replies]
        rng = random.Random(env.seed)
        swapped = [rng.random() < 0.5 for _ in items]  # the order a judge sees the two outputs in
        asked = [k for k, (i, o) in enumerate(zip(items, outputs)) if o != i["reference"]]
        preferences: list[float | None] = [DRAW] * len(items)
        judged = self._judge(judge, [items[k] for k in asked], [outputs[k] for k in asked],
                             [swapped[k] for k in asked])
        for k, p in zip(asked, judged):
            preferences[k] = p
        return [ItemResult(i["item_id"], 0.0 if p is None else p - 1.0, prompt, [o],
                           {"preference": p, "index": i["index"], "judge_failed": p is None,
                            "output_1": i["reference"], "generator_1": i["reference_generator"]})
                for i, prompt, o, p in zip(items, prompts, outputs, preferences)]

    def _judge(self, judge, items: list[dict], outputs: list[str],
               swapped: list[bool]) -> list[float | None]:
        """The judge's preference for each output over its reference (None: no usable answer)."""
        from ablate.evals.judges import RewardModelJudge

        if not items:
            return []
        if isinstance(judge, RewardModelJudge):
            preferences = judge.prefer([i["instruction"] for i in items],
                                       [i["reference"] for i in items], outputs)
        else:
            requests = [judge_messages(i["instruction"], *((o, i["reference"]) if s
                                                            else (i["reference"], o)),
                                       annotator=self.annotator)
                        for i, o, s in zip(items, outputs, swapped)]
            answers = judge.complete_full(requests, max_tokens=self.judge_max_tokens,
                                          logprobs=self.judge_logprobs)
            preferences = []
            for answer, s in zip(answers, swapped):
                p = self.parse_judgement(answer)
                preferences.append(None if p is None else (3.0 - p if s else p))
        return list(preferences)

    def annotations(self, results: list[ItemResult]) -> list[dict]:
        return [{"preference": r.extra["preference"], "output_1": r.extra["output_1"],
                 "output_2": r.outputs[0], "index": r.extra["index"],
                 "generator_1": r.extra["generator_1"], "generator_2": "model",
                 "annotator": "ablate"} for r in results if r.extra["preference"] is not None]

    def summarize(self, results: list[ItemResult]) -> Summary:
        failed = sum(r.extra["judge_failed"] for r in results)
        annotations = self.annotations(results)
        if not annotations:
            raise EvalError(f"{self.name}: every judgement failed ({failed} of {len(results)})")
        rates = winrates(annotations, self._difficulty_file())
        key = "length_controlled_winrate" if self.metric == "length_controlled_winrate" \
            else "win_rate"
        if key not in rates:
            raise EvalError(
                f"{self.name}: the length-controlled win rate needs alpaca-eval's instruction-"
                "difficulty file df_gamed.csv (hub dataset tatsu-lab/alpaca_eval), which is not "
                "configured: set ABLATE_ALPACA_DF_GAMED to its path. Judgements "
                f"are cached, so rerunning costs nothing. Raw win rate: {rates['win_rate']:.2f}")
        return Summary(rates[key], {k: v for k, v in rates.items() if k != key}, n_failed=failed)


    def _difficulty_file(self) -> Path | None:
        path = os.environ.get("ABLATE_ALPACA_DF_GAMED")
        return Path(path) if path else None


def alpaca_settings(name: str, metric: str) -> dict:
    return {"items": "all 805", "shots": 0, "prompt": "the instruction as the user turn",
            "max_new_tokens": _AlpacaEval.default_max_new_tokens, "stop": [],
            "judge": PAPER_JUDGES[name].model, "metric": metric}


class AlpacaEval1(_AlpacaEval):
    name, metric = "alpaca_eval_1", "win_rate"
    reference_file = "text_davinci_003_reference_outputs.json"
    paper_settings = alpaca_settings(name, metric)
    # alpaca-eval's alpaca_eval_gpt4 annotator: a ranking in at most 100 tokens
    annotator = ("alpaca_eval_gpt4", "alpaca_eval.txt")
    judge_max_tokens, judge_logprobs = 100, False

    @staticmethod
    def parse_judgement(answer: dict | None) -> float | None:
        return parse_ranking(answer)


class AlpacaEval2(_AlpacaEval):
    name, metric = "alpaca_eval_2", "length_controlled_winrate"
    reference_file = "gpt4_turbo_reference_outputs.json"
    paper_settings = alpaca_settings(name, metric)
