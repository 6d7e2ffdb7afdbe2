"""Judges: any OpenAI-compatible chat endpoint, or a local reward model that needs no network.

A judge is named in a grid's eval settings (``judge: gpt4-turbo``, or per benchmark in
``judges:``) and defined under the grid's ``judges:`` or in a YAML file (``$ABLATE_JUDGES``, else
``./judges.yaml``); its definition (``ablate.spec.schema.JudgeSpec``) travels in the eval step's
config and id::

    gpt4-turbo: {kind: openai, base_url: https://api.openai.com/v1,
                 model: gpt-4-1106-preview, api_key_env: OPENAI_API_KEY}
    local-vllm: {kind: openai, base_url: http://localhost:8000/v1, model: my-judge,
                 api_key_env: VLLM_API_KEY}
    my-rm:      {kind: reward_model, path: /models/rm}

Configs hold the *name* of the environment variable with the key, never the key. Every answer is
cached on disk under the run's cache folder (keyed by endpoint, model, prompt and settings), so a
judgement is never paid for twice; rate limits and server errors are retried with backoff; an
answer that still fails is returned as None, counted by the benchmark and its cause logged; a
refused key (HTTP 401 or 403) stops the step at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from ablate.evals.base import EvalError
from ablate.spec.schema import JudgeSpec

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
REFUSED_STATUS = {401, 403}
log = logging.getLogger(__name__)


def get_judge(spec: JudgeSpec, cache_dir: Path, reward_model_dir: Path | None = None):
    """The judge ``spec`` defines; a reward-model judge without a path is the step's own
    reward model input."""
    if spec.kind == "openai":
        return OpenAIJudge(base_url=spec.base_url, model=spec.model, api_key_env=spec.api_key_env,
                           cache_dir=cache_dir, max_retries=spec.max_retries,
                           timeout_s=spec.timeout_s, concurrency=spec.concurrency,
                           temperature=spec.temperature)
    if spec.kind == "reward_model":
        folder = Path(spec.path) if spec.path else reward_model_dir
        if folder is None:
            raise EvalError("a reward_model judge needs a path or the step's reward_model input")
        return RewardModelJudge(folder)
    raise EvalError(f"a judge of kind {spec.kind!r} cannot grade outputs"
                    + (f" ({spec.name!r} is an old store's judge whose definition was not "
                       "recorded: define it again in the grid)" if spec.kind == "unrecorded" else ""))


class JudgementCache:
    """Append-only JSONL of answers; safe for the threads of one process."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.answers: dict[str, dict] = {}
        if path.is_file():
            text = path.read_text()
            for line in text.splitlines():
                try:
                    row = json.loads(line)
                    self.answers[row["key"]] = row["answer"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a torn last line from a killed run
            if text and not text.endswith("\n"):
                with path.open("a") as handle:  # end it, or the next answer would join it
                    handle.write("\n")
        path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        return self.answers.get(key)

    def put(self, key: str, answer: dict) -> None:
        with self.lock:
            self.answers[key] = answer
            with self.path.open("a") as handle:
                handle.write(json.dumps({"key": key, "answer": answer}) + "\n")


class OpenAIJudge:
    def __init__(self, base_url: str, model: str, api_key_env: str, cache_dir: Path,
                 max_retries: int = 6, backoff_s: float = 1.0, timeout_s: float = 120.0,
                 concurrency: int = 8, temperature: float = 0.0):
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.max_retries, self.backoff_s, self.timeout_s = max_retries, backoff_s, timeout_s
        self.concurrency, self.temperature = concurrency, temperature
        self.cache = JudgementCache(Path(cache_dir) / "judgements" / "openai.jsonl")
        self.calls = 0  # requests actually sent (tests and cost reports read this)
        self.refused: EvalError | None = None  # set by a 401/403: no further request is sent

    def _key(self, payload: dict) -> str:
        text = json.dumps({"url": self.base_url, **payload}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _post(self, payload: dict) -> dict:
        if self.refused is not None:
            raise self.refused
        key = os.environ.get(self.api_key_env)
        if not key:
            raise EvalError(f"judge endpoint {self.base_url}: environment variable "
                            f"{self.api_key_env} (the API key) is not set")
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        for attempt in range(self.max_retries + 1):
            self.calls += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code in REFUSED_STATUS:  # every other request would be refused too
                    self.refused = EvalError(
                        f"judge endpoint {self.base_url}: HTTP {exc.code} ({exc.reason}): the "
                        f"key in the environment variable {self.api_key_env} was refused (check "
                        "the variable, or the judge's base_url and model)")
                    raise self.refused from None
                if exc.code not in RETRY_STATUS or attempt == self.max_retries:
                    raise
                wait = float(exc.headers.get("Retry-After") or self.backoff_s * 2 ** attempt)
            except (urllib.error.URLError, TimeoutError):
                if attempt == self.max_retries:
                    raise
                wait = self.backoff_s * 2 ** attempt
            time.sleep(min(wait, 60.0))
        raise AssertionError("unreachable")

    def _one(self, prompt: str | list, max_tokens: int, logprobs: bool) -> dict | None:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        payload = {"model": self.model, "messages": messages,
                   "max_tokens": max_tokens, "temperature": self.temperature}
        if logprobs:
            payload |= {"logprobs": True, "top_logprobs": 5}
        key = self._key(payload)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        try:
            data = self._post(payload)
            choice = data["choices"][0]
            answer = {"text": choice["message"]["content"] or "",
                      "top_logprobs": ((choice.get("logprobs") or {}).get("content") or [{}])[0]
                      .get("top_logprobs")}
        except EvalError:
            raise
        except Exception as exc:  # network, HTTP or a malformed body after the retries
            # one failed judgement, counted by the benchmark; its cause goes to the step's log
            # (the messages hold no key: it travels only in the request's header)
            log.warning("judge %s (model %s): a judgement failed: %s: %s", self.base_url,
                        self.model, type(exc).__name__, exc)
            return None
        self.cache.put(key, answer)
        return answer

    def complete_full(self, prompts: Sequence[str], max_tokens: int = 64,
                      logprobs: bool = False) -> list[dict | None]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda p: self._one(p, max_tokens, logprobs), prompts))

    def complete(self, prompts: Sequence[str], max_tokens: int = 64) -> list[str | None]:
        return [a["text"] if a else None for a in self.complete_full(prompts, max_tokens)]


class RewardModelJudge:
    """Pairwise preference from a reward model: P(output 2 better) = sigmoid(r2 - r1)."""

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)

    def prefer(self, instructions: Sequence[str], outputs_1: Sequence[str],
               outputs_2: Sequence[str]) -> list[float]:
        import math

        from ablate.generate.reward_model import RewardScorer

        scorer = RewardScorer(self.model_dir)
        r1 = scorer.score(list(instructions), list(outputs_1))
        r2 = scorer.score(list(instructions), list(outputs_2))
        return [1.0 + 1.0 / (1.0 + math.exp(-(float(b) - float(a)))) for a, b in zip(r1, r2)]
