"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright, against the real app (the
gateway app with the management API mounted at /api and the dashboard's routes, as `make up` serves them) under
uvicorn on a free loopback port.

Seeded with the project's own code: an Enterprise, a Pro and a Free account (tests.api.conftest's `tenant`),
November closed by the real Invoicer (an invoice each), December traffic admitted and settled by the gateway's
quota engine (live counters in Redis) and drained into chDB by the worker's drain: Enterprise on 4 days with 2
models, Pro 1,250 of its 5,000 calls. Screenshots go to tests/artifacts/dashboard/ (ignored by git through the
folder's own .gitignore); their paths are printed.

Skipped only when no chromium binary can be found (`scripts/ensure-chromium` installs Debian's)."""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Mount

from api import dashboard
from api.app import create_api
from api.context import ApiContext
from gateway.settings import ROOT
from tests.api.billing_support import close_november, invoice_number
from tests.api.conftest import OPERATOR, Tenant
from tests.api.test_dashboard import ServerThread
from tests.api.usage_helpers import Calls, drain, send
from tests.quota.conftest import YEAR, PinnedClock

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
ARTIFACTS = ROOT / "tests" / "artifacts" / "dashboard"
DEC = f"{YEAR}-12"
# Enterprise traffic in December: day -> batches (o3-mini requests carry 2 calls each)
ENTERPRISE_DAYS = {
    f"{DEC}-02": (Calls(40), Calls(6, 2, model="o3-mini")),
    f"{DEC}-04": (Calls(25), Calls(12, 2, model="o3-mini", prompt_tokens=400, completion_tokens=90)),
    f"{DEC}-07": (Calls(60, prompt_tokens=150),),
    f"{DEC}-09": (Calls(30), Calls(20, 2, model="o3-mini", prompt_tokens=250, completion_tokens=60)),
}
ENTERPRISE_CALLS = sum(b.requests * b.calls for day in ENTERPRISE_DAYS.values() for b in day)
PRO_BATCH = Calls(125, 10)                        # 1,250 calls: 25 % of Pro's 5,000


@dataclass
class Scene:
    url: str
    ent: Tenant
    pro: Tenant
    free: Tenant
    invoice: str                                  # the Enterprise account's November invoice
    more_pro: Callable[[], None]                  # sends PRO_BATCH again (to watch the gauge move)
    logs: list[str]
    secrets: list[str]                            # tokens made during the test (none may reach a log)


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@pytest.fixture
def scene(ctx: ApiContext, tenant: Any, api_clock: PinnedClock, api_env: dict[str, str],
          tmp_path: Path) -> Iterator[Scene]:
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH or at /usr/bin/chromium (scripts/ensure-chromium installs Debian's)")
    ent, pro, free = tenant("enterprise"), tenant("pro"), tenant("free")
    ent_key = ctx.accounts.issue_key(ent.account_id, "production")[0].api_key
    pro_key = ctx.accounts.issue_key(pro.account_id, "ci")[0].api_key
    close_november(ctx, api_clock)                                   # invoices issued, clock at December 2nd
    redis_url, spool = api_env["REDIS_URL"], tmp_path / "spool"
    for day, batches in ENTERPRISE_DAYS.items():
        api_clock.set(f"{day}T10:00:00")
        send(ctx, redis_url, spool, ent_key, *batches)
    api_clock.set(f"{DEC}-03T15:00:00")
    send(ctx, redis_url, spool, pro_key, PRO_BATCH)
    assert drain(ctx, redis_url) == sum(b.requests for d in ENTERPRISE_DAYS.values() for b in d) + PRO_BATCH.requests
    api_clock.set(f"{DEC}-10T12:00:00")
    routes = [Mount("/api", app=create_api(ctx)), *dashboard.routes()]
    logs: list[str] = []
    server = ServerThread(redis_url, tmp_path, routes, log_level="info")
    collector = _Collect(logs)
    watched = [logging.getLogger(n) for n in ("uvicorn.access", "uvicorn.error", "aihub", "")]
    with server, ThreadPoolExecutor(1) as pool:
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
        for logger in watched:
            logger.addHandler(collector)

        def more_pro() -> None:          # in another thread: asyncio.run beside Playwright's own loop
            pool.submit(send, ctx, redis_url, spool, pro_key, PRO_BATCH).result(30)
        try:
            yield Scene(server.url, ent, pro, free, invoice_number(ctx, ent.account_id), more_pro, logs, [])
        finally:
            for logger in watched:
                logger.removeHandler(collector)


def call(scene: Scene, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(scene.url + "/api/v1" + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ignore = ARTIFACTS.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"dashboard screenshot: {path}")
    return path


def test_dashboard_in_chromium(scene: Scene) -> None:
    from playwright.sync_api import expect, sync_playwright
    expect.set_options(timeout=15_000)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
            page = context.new_page()
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error"
                    and "Failed to load resource" not in m.text else None)
            run_scenario(page, scene, expect)
        finally:
            browser.close()
    assert problems == []                         # no script error, no CSP refusal
    tokens = [*scene.ent.tokens.values(), scene.pro.owner, scene.free.owner, OPERATOR, *scene.secrets]
    assert len(scene.secrets) == 2
    assert any("/api/v1/me" in line for line in scene.logs)          # the access log was captured...
    assert not [line for line in scene.logs if any(t in line for t in tokens)]     # ...and names no token


def login(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")


def logout(page: Any, expect: Any) -> None:
    page.click("#logout")
    expect(page.locator("#login-view")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('aihub.dashboard.token')") is None


def run_scenario(page: Any, scene: Scene, expect: Any) -> None:
    page.goto(scene.url + "/dashboard")
    expect(page.locator("#login-view")).to_be_visible()
    shot(page, "01-login")

    login(page, "aihub_mt_not_a_real_token_0123456789")
    expect(page.locator("#login-error")).to_contain_text("not accepted")
    expect(page.locator("#app-view")).to_be_hidden()
    shot(page, "02-login-bad-token")

    enterprise(page, scene, expect)
    logout(page, expect)
    expect(page.locator("#login-info")).to_contain_text("signed out")
    pro_live_gauge(page, scene, expect)
    logout(page, expect)
    free_loads_once(page, scene, expect)
    logout(page, expect)
    developer_sees_no_invoices(page, scene, expect)
    logout(page, expect)
    invitation_then_removed(page, scene, expect)
    operator_picks_an_account(page, scene, expect)


def enterprise(page: Any, scene: Scene, expect: Any) -> None:
    t = scene.ent
    login(page, t.owner)
    expect(page.locator("#app-view")).to_be_visible()
    expect(page.locator("#account-name")).to_have_text(f"Tenant {t.account_id}")
    expect(page.locator("#plan-badge")).to_have_text("enterprise")
    assert t.owner not in page.url and "token" not in page.url
    assert page.evaluate("sessionStorage.getItem('aihub.dashboard.token')") == t.owner

    quota = page.locator("#quota-card")
    expect(quota.locator(".gauge")).to_have_attribute("data-percent", "unlimited")
    expect(quota.locator(".gauge-label")).to_have_text("Unlimited")
    expect(quota.locator(".quota")).to_have_attribute("data-used", str(ENTERPRISE_CALLS))
    expect(quota).to_contain_text(f"{ENTERPRISE_CALLS:,}")
    expect(page.locator("#live-badge")).to_contain_text("Live")

    days = sorted(ENTERPRISE_DAYS)
    for chart in ("#calls-chart", "#tokens-chart"):
        bars = page.locator(f"{chart} svg g.bar")
        expect(bars).to_have_count(len(days))
        assert [bars.nth(i).get_attribute("data-day") for i in range(len(days))] == days
        segments = sum(len({b.model for b in batches}) for batches in ENTERPRISE_DAYS.values())
        expect(page.locator(f"{chart} svg rect.seg")).to_have_count(segments)
    expect(page.locator("#usage-card .legend")).to_have_text("gpt-4o-minio3-mini")
    rows = page.locator("#models-table tbody tr")
    expect(rows).to_have_count(2)
    mini = sum(b.requests * b.calls for d in ENTERPRISE_DAYS.values() for b in d if b.model == "gpt-4o-mini")
    expect(page.locator("#models-table tr[data-model='gpt-4o-mini'] td").nth(1)).to_have_text(f"{mini:,}")

    forecast = call(scene, "GET", f"/accounts/{t.account_id}/usage/forecast", t.owner)
    assert forecast["calls_so_far"] == ENTERPRISE_CALLS
    expect(page.locator("#forecast-card .kpis")).to_have_attribute("data-projected", str(forecast["projected_calls"]))
    expect(page.locator("#forecast-card")).to_contain_text("Expected total")

    expect(page.locator("#keys-card tbody tr")).to_have_count(1)
    expect(page.locator("#keys-card")).to_contain_text("production")
    expect(page.locator("#members-card tbody tr")).to_have_count(5)

    row = page.locator(f"#invoices-card tr[data-number='{scene.invoice}']")
    expect(row).to_contain_text("open")
    with page.expect_download() as info:
        row.locator("button.pdf-link").click()
    download = info.value
    assert download.suggested_filename == f"{scene.invoice}.pdf"
    assert Path(download.path()).read_bytes().startswith(b"%PDF")
    assert t.owner not in download.url
    shot(page, "03-enterprise-owner")


def pro_live_gauge(page: Any, scene: Scene, expect: Any) -> None:
    login(page, scene.pro.owner)
    gauge = page.locator("#quota-card .gauge")
    expect(gauge).to_have_attribute("data-percent", "25.00")
    expect(page.locator("#quota-card .gauge-label")).to_have_text("25%")
    expect(page.locator("#live-badge")).to_contain_text("Live")
    expect(page.locator("#plan-badge")).to_have_text("pro")
    shot(page, "04-pro-25-percent")
    page.evaluate("window.__notReloaded = true")
    scene.more_pro()                                                   # 1,250 more calls through the gateway
    expect(gauge).to_have_attribute("data-percent", "50.00")         # the next refresh, no reload
    expect(page.locator("#quota-card .gauge-label")).to_have_text("50%")
    assert page.evaluate("window.__notReloaded") is True
    shot(page, "05-pro-50-percent-live")


def free_loads_once(page: Any, scene: Scene, expect: Any) -> None:
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if r.url.endswith("/usage/current") else None)
    login(page, scene.free.owner)
    expect(page.locator("#quota-card .gauge")).to_have_attribute("data-percent", "0.00")
    expect(page.locator("#live-badge")).to_contain_text("Updated on load")
    time.sleep(6.5)                                                    # longer than the live refresh period
    assert len(asked) == 1, asked
    shot(page, "06-free")


def developer_sees_no_invoices(page: Any, scene: Scene, expect: Any) -> None:
    login(page, scene.ent.tokens["developer"])
    expect(page.locator("#invoices-card [data-state=unavailable]")).to_have_text(
        "Not available for the developer role.")
    expect(page.locator("#invoices-card.unavailable")).to_have_count(1)
    expect(page.locator("#quota-card .gauge")).to_be_visible()
    expect(page.locator("#who")).to_contain_text("developer")
    shot(page, "07-developer")


def invitation_then_removed(page: Any, scene: Scene, expect: Any) -> None:
    t = scene.ent
    email = f"new.viewer@{t.account_id}.example"
    invite = call(scene, "POST", f"/accounts/{t.account_id}/invites", t.owner, {"email": email, "role": "viewer"})
    page.fill("#invite-token", invite["token"])
    page.click("#invite-form button[type=submit]")
    expect(page.locator("#banner")).to_contain_text("You joined account")
    expect(page.locator("#who")).to_contain_text(email)
    expect(page.locator(".token-once")).to_be_visible()
    scene.secrets += [invite["token"], page.locator(".token-value").inner_text()]
    assert scene.secrets[-1].startswith("aihub_mt_")
    expect(page.locator("#members-card tbody tr")).to_have_count(6)
    expect(page.locator("#invoices-card tbody tr")).to_have_count(1)          # a viewer reads invoices
    shot(page, "08-invitation-accepted")
    with pytest.raises(urllib.error.HTTPError):                                # the invitation is used up
        call(scene, "POST", "/invites/accept", "", {"token": invite["token"]})
    members = call(scene, "GET", f"/accounts/{t.account_id}/members", t.owner)["data"]
    member_id = next(m["id"] for m in members if m["email"] == email)
    call(scene, "DELETE", f"/accounts/{t.account_id}/members/{member_id}", t.owner)
    expect(page.locator("#login-error")).to_contain_text("session has ended")     # the next live refresh: 401
    expect(page.locator("#app-view")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('aihub.dashboard.token')") is None
    shot(page, "09-session-ended")


def operator_picks_an_account(page: Any, scene: Scene, expect: Any) -> None:
    login(page, OPERATOR)
    expect(page.locator("#account-form")).to_be_visible()
    expect(page.locator("#sections")).to_be_hidden()
    expect(page.locator("#who")).to_contain_text("Operator")
    page.fill("#account-id", scene.ent.account_id)
    page.click("#account-form button[type=submit]")
    expect(page.locator("#quota-card .quota")).to_have_attribute("data-used", str(ENTERPRISE_CALLS))
    expect(page.locator(f"#invoices-card tr[data-number='{scene.invoice}']")).to_be_visible()
    expect(page.locator("#account-name")).to_have_text(f"Tenant {scene.ent.account_id}")
    shot(page, "10-operator")
    page.set_viewport_size({"width": 420, "height": 900})
    expect(page.locator("#calls-chart svg g.bar")).to_have_count(len(ENTERPRISE_DAYS))
    shot(page, "11-narrow-screen")
    page.set_viewport_size({"width": 1360, "height": 900})
    logout(page, expect)
