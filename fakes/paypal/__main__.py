"""`python -m fakes.paypal [--host H] [--port P] [--client-id ID] [--client-secret SECRET] [--two-step]`."""

from __future__ import annotations

import argparse

from fakes.paypal.server import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakePayPal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fakes.paypal", description="A fake PayPal REST API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    parser.add_argument("--two-step", action="store_true",
                        help="orders with a vaulted payment source come back APPROVED and need a capture call")
    args = parser.parse_args(argv)
    FakePayPal(args.client_id, args.client_secret, capture_on_create=not args.two_step).run(args.host, args.port)
    return 0


raise SystemExit(main())
