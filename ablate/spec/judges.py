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

from ablate.spec.benchmarks import BENCHMARKS, BenchmarkFacts
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


def settle_judge(benchmark: str, protocol: str, named: JudgeSpec | None,
                 facts: BenchmarkFacts | None = None) -> JudgeSpec | None:
    """The judge a judged benchmark's eval step records: ``named`` (a grid's or the command
    line's), else the paper's under ``protocol: paper``; with the prompt the benchmark implements
    (``annotator``) written in, so the id says it. A ValueError says why ``named`` cannot judge
    this benchmark."""
    facts = facts or BENCHMARKS[benchmark]
    if not facts.judged_under(protocol):
        return None
    if named is None:
        return PAPER_JUDGES.get(benchmark) if protocol == "paper" else None
    if named.kind == "string_match" and benchmark != "xstest":
        raise ValueError("string_match is XSTest's rule only; this benchmark needs a judge model")
    roles = facts.judge_roles
    if roles and (named.kind != "panel" or set(named.roles) != set(roles)
                  or any(j.kind != "local" for j in named.roles.values())):
        raise ValueError("it must be a panel of local judges with the roles "
                         f"{', '.join(roles)} (kind: panel, roles: "
                         "{" + ", ".join(f"{r}: {{kind: local, hub: ..., revision: ...}}"
                                         for r in roles) + "})")
    if not roles and named.kind in ("panel", "local"):
        raise ValueError(f"a {named.kind} judge; only TruthfulQA asks local judges for yes/no "
                         "likelihoods")
    if named.kind == "openai" and named.annotator not in (None, facts.annotator):
        raise ValueError(f"it asks for the prompt {named.annotator!r}; {benchmark} implements "
                         f"{facts.annotator!r}")
    if named.kind in ("openai", "panel"):
        return named.model_copy(update={"annotator": facts.annotator})
    return named


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


def missing_credentials(judges: dict[str, JudgeSpec], environ,
                        other: str = "name another judge in the grid's eval.judges.{benchmark} "
                                     "(under `judges:`: an OpenAI-compatible server, or kind "
                                     "reward_model{or_string_match})") -> list[str]:
    """Why each judge here cannot be used: an API judge whose key variable is unset. ``other``
    says how to name another judge (a grid's field, or the command line's option)."""
    problems = []
    for benchmark, judge in sorted(judges.items()):
        if judge.kind == "openai" and not environ.get(judge.api_key_env or ""):
            instead = other.format(benchmark=benchmark, or_string_match=(
                ", or string_match" if benchmark == "xstest" else ""))
            problems.append(f"{benchmark}'s judge {judge.model} needs the API key in "
                            f"${judge.api_key_env} (unset); set it, or {instead}")
    return problems
