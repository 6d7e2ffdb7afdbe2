"""The paper's judges: the default judge of each judged benchmark under ``protocol: paper``.

Sources: AlpacaEval 1 and 2 as alpaca-eval's annotator configs name their models
(tatsu-lab/alpaca_eval@cd543a14: src/alpaca_eval/evaluators_configs/alpaca_eval_gpt4/configs.yaml,
``gpt-4``; weighted_alpaca_eval_gpt4_turbo/configs.yaml, ``gpt-4-1106-preview``); XSTest as
open-instruct classifies refusals (allenai/open-instruct@959cbbc9d:
eval/xstest/classify_refusal.py, ``gpt-4-0613``). They are reached through OpenAI's API with the
key in ``$OPENAI_API_KEY``. TruthfulQA's are two local Llama-2 7B judges that open-instruct's
evaluation jobs name (allenai/open-instruct@959cbbc9d: scripts/submit_eval_jobs.py,
``--hf_truth_model_name_or_path allenai/truthfulqa-truth-judge-llama2-7B``,
``--hf_info_model_name_or_path allenai/truthfulqa-info-judge-llama2-7B``), one per role; no commit
of theirs was found to pin, so they are read at the hub's ``main`` (a grid may define the same
panel with a ``revision``, or with ``local_copy`` folders). A grid may name other judges (``eval.judge``, ``eval.judges``), and
``string_match`` is XSTest's judge-free rule, whose results are not the paper's.
"""

from __future__ import annotations

from ablate.spec.benchmarks import BENCHMARKS
from ablate.spec.schema import JudgeSpec

OPENAI_API = "https://api.openai.com/v1"


def _openai(model: str, benchmark: str) -> JudgeSpec:
    return JudgeSpec(kind="openai", model=model, annotator=BENCHMARKS[benchmark].annotator,
                     base_url=OPENAI_API, api_key_env="OPENAI_API_KEY")


def _panel(benchmark: str, **hub_ids: str) -> JudgeSpec:
    return JudgeSpec(kind="panel", annotator=BENCHMARKS[benchmark].annotator,
                     roles={role: JudgeSpec(kind="local", hub=hub) for role, hub in hub_ids.items()})


PAPER_JUDGES: dict[str, JudgeSpec] = {
    "alpaca_eval_1": _openai("gpt-4", "alpaca_eval_1"),
    "alpaca_eval_2": _openai("gpt-4-1106-preview", "alpaca_eval_2"),
    "xstest": _openai("gpt-4-0613", "xstest"),
    "truthfulqa": _panel("truthfulqa", truth="allenai/truthfulqa-truth-judge-llama2-7B",
                         info="allenai/truthfulqa-info-judge-llama2-7B"),
}
STRING_MATCH = JudgeSpec(kind="string_match")


def describe(judge: JudgeSpec | None) -> str:
    """A judge in a few words, for the dry run and the report."""
    if judge is None:
        return "none"
    if judge.kind == "openai":
        return f"{judge.model} via {judge.base_url} (key ${judge.api_key_env})"
    if judge.kind == "reward_model":
        return f"reward model {judge.path or '(the cell’s)'}"
    if judge.kind == "local":
        where = f"hub:{judge.hub}@{judge.revision or 'main'}" if judge.hub else f"path:{judge.path}"
        return f"local {where}" + (f" (files in {judge.local_copy})" if judge.local_copy else "")
    if judge.kind == "panel":
        return "; ".join(f"{role}: {describe(j)}" for role, j in judge.roles.items())
    if judge.kind == "unrecorded":
        return f"unrecorded ({judge.name})"
    return "string match (not the paper's judge)"


def missing_credentials(judges: dict[str, JudgeSpec], environ) -> list[str]:
    """Why each judge here cannot be used: an API judge whose key variable is unset."""
    problems = []
    for benchmark, judge in sorted(judges.items()):
        if judge.kind == "openai" and not environ.get(judge.api_key_env or ""):
            problems.append(f"{benchmark}'s judge {judge.model} needs the API key in "
                            f"${judge.api_key_env} (unset); set it, or name another judge in "
                            f"the grid's eval.judges.{benchmark} (under `judges:`: an "
                            "OpenAI-compatible server, or kind reward_model"
                            + (", or string_match" if benchmark == "xstest" else "") + ")")
    return problems
