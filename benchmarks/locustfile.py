"""The `make load` traffic mix, for locust (benchmarks/load.py runs it headless as a subprocess).

Never import this module from tests or the benchmarks' own code: importing locust monkey-patches the standard
library with gevent. Run it through `python -m locust -f benchmarks/locustfile.py`.

Environment (read once, at import):
  AIHUB_LOAD_ACCOUNTS   JSON file: [{"account", "plan", "role", "api_key"}, ...] (benchmarks.load writes it)
  AIHUB_LOAD_OUTCOMES   JSON file written when locust quits: per account, answers by kind; per endpoint, the
                        response times of the 2xx answers; locust's final figures (the report reads them)

The mix, per user class (roles in the accounts file):
  enterprise  basic, advanced and premium models; short think time
  pro         basic and advanced models; now and then a premium model (403 model_not_in_plan); its plan's
              600 requests/min (burst 50) may refuse some with 429 rate_limit_exceeded
  free        two users on the Free plan: basic models, now and then an advanced one (403); 20 requests/min
              (burst 5), so most of their requests are refused with 429 rate_limit_exceeded
  capped      one user on a Pro account with a custom quota of a few dozen calls: 429 insufficient_quota once
              it is used up
Each user sends chat completions, streaming chat completions, embeddings and Responses API calls. The fake
upstream is asked (X-Fake-* headers, forwarded by the stack started for the load) for a model-like latency:
50-250 ms before the answer, 5 ms between the 16 chunks of a stream.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events, task

ACCOUNTS: list[dict[str, str]] = json.loads(Path(os.environ["AIHUB_LOAD_ACCOUNTS"]).read_text())
OUTCOMES_PATH = Path(os.environ["AIHUB_LOAD_OUTCOMES"])
OUTCOMES: dict[str, Counter[str]] = defaultdict(Counter)       # account -> kind -> answers
LATENCIES: dict[str, list[float]] = defaultdict(list)          # endpoint name -> 2xx response times, ms
PROMPTS = ("Summarise the plot of Hamlet in two sentences", "Write a haiku about quotas",
           "Explain token buckets to a five year old", "List three uses of embeddings",
           "Translate 'good morning' into French, German and Chinese")


def kind_of(status: int, code: str) -> str:
    """The report's outcome kinds."""
    if 200 <= status < 300:
        return "2xx"
    if status == 429:
        return {"rate_limit_exceeded": "429 rate limit", "insufficient_quota": "429 quota"}.get(code, f"429 {code}")
    if status == 403 and code == "model_not_in_plan":
        return "403 model"
    if status >= 500:
        return "5xx"
    if status == 0:
        return "connection error"
    return f"{status} {code}"


def _error_code(response: Any) -> str:
    try:
        return str(response.json()["error"]["code"])
    except Exception:
        return "unparsed"


class Client(FastHttpUser):
    abstract = True
    role = ""
    models: tuple[str, ...] = ("gpt-4o-mini",)
    above_plan: str | None = None          # a model the plan does not include (403)

    def on_start(self) -> None:
        account = next(a for a in ACCOUNTS if a["role"] == self.role)
        self.account = account["account"]
        self.headers = {"Authorization": f"Bearer {account['api_key']}"}

    def _post(self, name: str, path: str, body: dict[str, Any], latency: str, stream: bool = False) -> None:
        headers = {**self.headers, "X-Fake-Latency-Ms": latency}
        if stream:
            headers["X-Fake-Chunk-Delay-Ms"] = "5"
        with self.client.post(path, json=body, headers=headers, name=name, catch_response=True) as response:
            status = response.status_code or 0
            code = "" if 200 <= status < 300 else _error_code(response)
            kind = kind_of(status, code)
            if kind == "2xx" and stream and not (response.text or "").rstrip().endswith("data: [DONE]"):
                kind = "stream cut"
            OUTCOMES[self.account][kind] += 1
            if kind == "2xx":
                LATENCIES[name].append(float(response.request_meta["response_time"]))
                response.success()
            else:
                response.failure(kind)

    def _model(self) -> str:
        return random.choice(self.models)

    @task(5)
    def chat(self) -> None:
        self._post("chat", "/v1/chat/completions", {
            "model": self._model(), "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "max_tokens": 16}, str(random.randint(50, 250)))

    @task(3)
    def chat_stream(self) -> None:
        self._post("chat (stream)", "/v1/chat/completions", {
            "model": self._model(), "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "stream": True}, str(random.randint(50, 150)), stream=True)

    @task(2)
    def embeddings(self) -> None:
        self._post("embeddings", "/v1/embeddings", {
            "model": "text-embedding-3-small", "input": random.choice(PROMPTS)}, "20")

    @task(2)
    def responses(self) -> None:
        self._post("responses", "/v1/responses", {
            "model": self._model(), "input": random.choice(PROMPTS)}, str(random.randint(50, 250)))

    @task(1)
    def model_above_plan(self) -> None:
        if self.above_plan is None:
            self.chat()
            return
        self._post("chat (model not in plan)", "/v1/chat/completions", {
            "model": self.above_plan, "messages": [{"role": "user", "content": "hi"}]}, "50")


class EnterpriseUser(Client):
    weight = 3
    role = "enterprise"
    models = ("gpt-4o-mini", "gpt-4o", "o3-mini")
    wait_time = between(0.1, 0.6)


class ProUser(Client):
    weight = 4
    role = "pro"
    models = ("gpt-4o-mini", "gpt-4o")
    above_plan = "o3-mini"
    wait_time = between(0.5, 1.5)


class FreeUser(Client):
    fixed_count = 2
    role = "free"
    above_plan = "gpt-4o"
    wait_time = between(1.0, 3.0)


class CappedUser(Client):
    fixed_count = 1
    role = "capped"
    models = ("gpt-4o-mini", "gpt-4o")
    wait_time = between(0.2, 0.5)


def final_stats(environment: Any) -> list[dict[str, Any]]:
    """Locust's own figures per request name and in total, once every user stopped (its CSV files are snapshots
    taken every second, so they can miss the last one)."""
    stats = environment.stats
    rows = []
    for entry in [*sorted(stats.entries.values(), key=lambda e: e.name), stats.total]:
        rows.append({"name": "Aggregated" if entry is stats.total else entry.name, "requests": entry.num_requests,
                     "failures": entry.num_failures, "rps": entry.total_rps, "max": entry.max_response_time,
                     **{f"p{q}": entry.get_response_time_percentile(q / 100) for q in (50, 95, 99)}})
    return rows


@events.quitting.add_listener
def _write_outcomes(environment: Any, **_: Any) -> None:
    OUTCOMES_PATH.write_text(json.dumps({
        "outcomes": {account: dict(kinds) for account, kinds in OUTCOMES.items()},
        "latencies_ms": dict(LATENCIES), "locust": final_stats(environment)}))
