"""The Stripe webhook endpoint alone, as `make up` serves it, for benchmarks/test_bench_webhooks.py:
`python -m uvicorn --factory benchmarks.webhook_app:app`.

api.webhooks.Webhooks over the system of record (DATABASE_URL, migrated at start), handing events to a Dramatiq
Redis broker (BENCH_BROKER_URL) through an actor named and queued like the worker's `process_provider_event`
(nothing consumes it here: the push is what the endpoint pays for). STRIPE_WEBHOOK_SECRET signs the events.
`GET /healthz` answers 200 once the app is up.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from api.webhooks import Webhooks
from billing.db.engine import make_engine, sessions
from billing.db.migrate import migrate


def app() -> Starlette:
    engine = make_engine(os.environ["DATABASE_URL"])
    migrate(engine)
    store = SimpleNamespace(accounts=SimpleNamespace(sessions=sessions(engine)))
    broker = RedisBroker(url=os.environ["BENCH_BROKER_URL"])  # type: ignore[no-untyped-call]

    def process_provider_event(event_id: int) -> None:      # the worker's actor; not run here
        raise AssertionError("the benchmark runs no worker")

    actor = dramatiq.actor(queue_name="billing", broker=broker)(process_provider_event)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    def enqueue(event_id: int) -> None:
        actor.send(event_id)

    hooks = Webhooks(lambda: store, enqueue=enqueue, stripe_secret=os.environ["STRIPE_WEBHOOK_SECRET"])
    return Starlette(routes=[*hooks.routes(), Route("/healthz", healthz)])
