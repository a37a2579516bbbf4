"""Releases reservations whose request never settled (a gateway killed mid-request).

Each expired reservation is settled through settle.lua as `abandoned`: not billed, the reservation
released, and a usage row written so the request is not lost from the record. A request that settles
for real at the same moment loses or wins the race cleanly: settle is idempotent by request id.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.keys import ID_RE, ParsedKey
from gateway.quota.admission import Admission, Usage
from gateway.quota.engine import QuotaEngine
from gateway.quota.periods import period_named
from gateway.redis_client import text

log = logging.getLogger("aihub.reaper")


async def _reservation_keys(client: Any) -> list[str]:
    found: list[str] = []
    async for key in client.scan_iter(match="{s:*}:a:*:res", count=1000):
        found.append(text(key))
    return found


async def reap_expired(engine: QuotaEngine) -> int:
    """Settles every expired reservation as abandoned; returns how many were released."""
    now_ms = int(engine.clock() * 1000)
    released = 0
    for res_key in await _reservation_keys(engine.client):
        account_id = res_key.split(":a:", 1)[1].rsplit(":", 1)[0]
        if not ID_RE.match(account_id):
            continue
        keys = engine.account_keys(account_id)
        for rid_raw in await engine.client.zrangebyscore(keys.reservations, "-inf", now_ms):
            rid = text(rid_raw)
            record = await engine.client.hget(keys.reservation_data, rid)
            if record is None:
                await engine.client.zrem(keys.reservations, rid)
                continue
            fields = text(record).split("|")
            if len(fields) == 7:          # written before requests could reserve several calls
                fields.append("1")
            if len(fields) != 8 or not fields[7].isdigit():
                log.error("malformed reservation %s of %s: %r", rid, account_id, record)
                continue
            plan, limit, key_id, model, upstream, period, ts_start, calls = fields
            admission = Admission(
                rid=rid, key=ParsedKey(account_id, key_id, ""), keys=keys,
                period=period_named(period),
                ts_start_ms=int(ts_start), billable=True, model=model, upstream=upstream, plan=plan,
                limit=int(limit), calls=int(calls))
            await engine.settle(admission, Usage(billable=False, outcome="abandoned", status=0))
            released += 1
    return released

