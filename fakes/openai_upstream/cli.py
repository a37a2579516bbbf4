"""Command line: python -m fakes.openai_upstream --host H --port N [--api-key K] [--latency-ms N]."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fakes.openai_upstream.app import DEFAULT_MODELS
from fakes.openai_upstream.server import FakeUpstream


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fakes.openai_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: no auth)"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="default delay before every answer")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=0.0, help="default delay between stream chunks"
    )
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model ids")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    fake = FakeUpstream(
        api_key=args.api_key, models=models, latency_ms=args.latency_ms, chunk_delay_ms=args.chunk_delay_ms
    )
    fake.run(
        args.host,
        args.port,
        on_ready=lambda url: print(f"fake OpenAI upstream listening on {url}", flush=True),
    )
    return 0
