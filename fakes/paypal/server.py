"""Running the fake PayPal: in a daemon thread (tests), or in the foreground (`python -m fakes.paypal`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Self

from aiohttp import web

from fakes.app_server import AppServer
from fakes.paypal.app import Delivery, PayPalApp

DEFAULT_CLIENT_ID = "fake-paypal-client-id"
DEFAULT_CLIENT_SECRET = "fake-paypal-client-secret"


class FakePayPal(AppServer):
    """A fake PayPal REST API (OAuth2, Orders v2, Payments v2, Vault v3 payment tokens, webhooks).

    `capture_on_create`: an order whose payment source is a vaulted instrument is captured by the create call
    itself (PayPal's single-step order, status COMPLETED); False: it comes back APPROVED and needs
    `POST /v2/checkout/orders/{id}/capture`.

    Serving (fakes/app_server.py): `start()` / `stop()` (or `with FakePayPal() as fake:`) from a daemon thread,
    `run()` in the foreground; `url` is the base URL, also the one its links and webhook certificates name."""

    def __init__(self, client_id: str = DEFAULT_CLIENT_ID, client_secret: str = DEFAULT_CLIENT_SECRET, *,
                 capture_on_create: bool = True, token_ttl_s: int = 32400) -> None:
        self.app = PayPalApp(client_id=client_id, client_secret=client_secret,
                             capture_on_create=capture_on_create, token_ttl_s=token_ttl_s)
        super().__init__(thread_name="fake-paypal")

    # -- credentials and test set-up ---------------------------------------------------------------------------
    @property
    def client_id(self) -> str:
        return self.app.client_id

    @property
    def client_secret(self) -> str:
        return self.app.client_secret

    def add_payment_token(self, kind: str = "paypal", **options: Any) -> str:
        """A vaulted instrument's id (`vault_id`). Options: customer_id, issue (e.g. "INSTRUMENT_DECLINED": every
        charge against it is refused with that 422 issue), pending (captures stay PENDING), email, brand,
        last_digits."""
        return self.app.add_payment_token(kind, **options)

    def add_webhook(self, url: str, event_types: tuple[str, ...] = ("*",)) -> str:
        """Subscribes `url` to the event types ("*": all); returns the webhook id PayPal signs with."""
        return self.app.add_webhook(url, event_types)

    def expire_tokens(self) -> None:
        """Every access token issued so far is no longer valid (the client must fetch a new one)."""
        with self.app.lock:
            self.app.access_tokens.clear()

    def complete_pending(self, capture_id: str) -> dict[str, Any]:
        """A PENDING capture clears (COMPLETED; PAYMENT.CAPTURE.COMPLETED sent to the subscribed webhooks)."""
        return self.app.complete_pending(capture_id)

    def decline_pending(self, capture_id: str) -> dict[str, Any]:
        """A PENDING capture is refused after review (DECLINED; PAYMENT.CAPTURE.DECLINED sent)."""
        return self.app.decline_pending(capture_id)

    def send_event(self, event_type: str, resource_type: str, resource: dict[str, Any]) -> dict[str, Any]:
        """Sends an event of any type to the subscribed webhooks; returns the event."""
        return self.app.emit(event_type, resource_type, resource)

    def sign_event(self, webhook_id: str, event: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        """The headers and body PayPal would send for `event` to `webhook_id`, without sending them."""
        return self.app.sign(webhook_id, event)

    # -- introspection -----------------------------------------------------------------------------------------
    def orders(self) -> list[dict[str, Any]]:
        """Every order, in PayPal's full representation, oldest first."""
        with self.app.lock:
            return [self.app._public_order(o, False) for o in self.app.orders.values()]

    def captures(self) -> list[dict[str, Any]]:
        with self.app.lock:
            return [dict(c.body) for c in self.app.captures.values()]

    def refunds(self) -> list[dict[str, Any]]:
        with self.app.lock:
            return [dict(r) for r in self.app.refunds.values()]

    def requests(self) -> list[dict[str, Any]]:
        """Every request received: method, path, body (parsed JSON), headers (lower-cased names)."""
        with self.app.lock:
            return list(self.app.requests)

    @property
    def token_requests(self) -> int:
        return self.app.token_requests

    def deliveries(self) -> list[Delivery]:
        with self.app.lock:
            return list(self.app.deliveries)

    def wait_for_deliveries(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        """Waits until `count` webhook deliveries have been answered (or failed)."""
        deadline = time.monotonic() + timeout
        while True:
            done = [d for d in self.deliveries() if d.status is not None or d.error is not None]
            if len(done) >= count:
                return done
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(done)} of {count} webhook deliveries done within {timeout}s")
            time.sleep(0.01)

    # -- serving -----------------------------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        return self.app.build()

    def listening(self, url: str) -> None:
        self.app.base_url = url

    def start(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> str:
        """Serves from a daemon thread on a free loopback port (port 0); returns the base URL."""
        return self.start_in_thread(host, port, timeout)

    def run(self, host: str, port: int, on_ready: Callable[[str], object] | None = None) -> None:
        """Serves in the foreground until SIGINT/SIGTERM; prints the URL once listening (unless `on_ready`)."""
        super().run(host, port, on_ready or (lambda url: print(f"fake PayPal listening on {url}", flush=True)))

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self
