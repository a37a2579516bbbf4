"""System-of-record fixtures: a migrated database (SQLite file and private PostgreSQL) and the write-through
account service projecting into a real Redis."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import stripe
import uvicorn
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette

from api.webhooks import Webhooks
from billing.accounts import AccountService
from billing.db.engine import make_engine, sessions
from billing.db.migrate import migrate
from billing.invoicing import Invoicer, Seller
from billing.payments.bank_transfer import BankTransferProvider
from billing.payments.service import PaymentService
from billing.payments.stripe_provider import StripeProvider, StripeSettings
from billing.projection import Projector
from billing.provider_events import apply
from billing.tax import load_tax_table
from gateway.catalog import Catalog
from gateway.redis_server import free_port
from gateway.settings import ROOT
from tests.quota.conftest import PinnedClock


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def db(engine: Engine) -> sessionmaker[Session]:
    return sessions(engine)


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def service(db: sessionmaker[Session], r: redis.Redis, catalog: Catalog) -> AccountService:
    clock = PinnedClock()
    return AccountService(db, Projector(r, 16, clock), catalog, clock)


# -- Stripe: a real localstripe per session (tests/billing/test_payments_stripe.py, test_dunning.py) -------------
KEY = "sk_test_localstripe"
SELLER = Seller("AI Hub GmbH", "Example Str. 1, Berlin", "DE", "DE123456789")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real localstripe server on a free loopback port; yields its base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("localstripe") / "localstripe.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "localstripe", "--port", str(port), "--from-scratch"],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"localstripe exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                request = urllib.request.Request(f"{url}/v1/customers", headers={"Authorization": f"Bearer {KEY}"})
                with urllib.request.urlopen(request, timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"localstripe did not answer on {url}: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def stripe_settings(localstripe: str) -> StripeSettings:
    return StripeSettings.from_env({"STRIPE_SECRET_KEY": KEY, "AIHUB_STRIPE_API_BASE": localstripe})


@pytest.fixture(scope="session")
def stripe_client(stripe_settings: StripeSettings) -> stripe.StripeClient:
    """The test's own client, to create card payment methods and to read what localstripe holds."""
    return stripe.StripeClient(KEY, base_addresses={"api": stripe_settings.api_base})


@pytest.fixture
def invoicer(db: sessionmaker[Session], catalog: Catalog) -> Invoicer:
    return Invoicer(db, catalog, load_tax_table(ROOT / "config" / "tax.toml"), SELLER, net_days=14)


@pytest.fixture
def payments(db: sessionmaker[Session], invoicer: Invoicer, service: AccountService,
             stripe_settings: StripeSettings) -> PaymentService:
    return PaymentService(db, invoicer, {"stripe": StripeProvider(stripe_settings),
                                         "bank_transfer": BankTransferProvider()}, clock=service.clock)


# -- provider webhooks: the endpoint served by uvicorn in a thread, events applied when handed off ---------------
class ApiThread:
    def __init__(self, app: Starlette) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ApiThread:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def webhook_api(db: sessionmaker[Session], payments: PaymentService) -> Iterator[tuple[ApiThread, list[str]]]:
    applied: list[str] = []

    class Store:
        class accounts:
            sessions = db

    hooks = Webhooks(lambda: Store, enqueue=lambda event_id: applied.append(apply(db, event_id, payments)),
                     stripe_secret="whsec_test_secret")
    with ApiThread(Starlette(routes=hooks.routes())) as api:
        yield api, applied
