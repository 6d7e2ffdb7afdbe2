"""A stand-in for an OpenAI-compatible chat endpoint: it answers each request with
``FakeEndpoint.answer(last message's content)``, after any status codes queued in ``script``, and
records what it was sent in ``seen``."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler


def pick(content: str) -> str:
    return "M" if "pick-M" in content else ("m" if "pick-m" in content else "no idea")


class FakeEndpoint(BaseHTTPRequestHandler):
    script: list = []  # status codes to answer before succeeding
    seen: list = []
    answer = staticmethod(pick)  # the judge's reply to the last message's content
    top_logprobs = None  # or content -> the first token's top log-probabilities

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeEndpoint.seen.append((self.headers["Authorization"], body))
        if FakeEndpoint.script:
            self.send_response(FakeEndpoint.script.pop(0))
            self.end_headers()
            return
        text = FakeEndpoint.answer(body["messages"][-1]["content"])
        content = body["messages"][-1]["content"]
        top = FakeEndpoint.top_logprobs(content) if FakeEndpoint.top_logprobs else None
        logprobs = {"content": [{"token": text, "top_logprobs": top}]} if top else None
        payload = {"choices": [{"message": {"content": text}, "logprobs": logprobs}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass
