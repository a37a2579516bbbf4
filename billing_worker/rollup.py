"""The daily rollup job: recompute `usage_daily` for one period from `usage_rows FINAL`.

A job rather than a materialized view, because a view would count a replayed row twice. Re-running
inserts a newer version of every group (ReplacingMergeTree(computed_at)); read it with FINAL.
Usage rows are never deleted, so no group of a period can disappear between two runs.
"""

from __future__ import annotations

from billing_worker.clickhouse import ClickHouse
from billing_worker.periods import check_period

REFRESH_SQL = """
INSERT INTO usage_daily (period, acct, day, key_id, model, requests, calls, overage_calls, pt, ct, cached,
                         reasoning, cost_nanos)
SELECT period, acct, day, key_id, model, count(), sum(calls), sum(overage), sum(pt), sum(ct), sum(cached),
       sum(reasoning), sum(cost_nanos)
FROM usage_rows FINAL
WHERE period = {period:String}
GROUP BY period, acct, day, key_id, model
SETTINGS do_not_merge_across_partitions_select_final = 1
"""


def refresh_daily_rollup(ch: ClickHouse, period: str) -> int:
    """Recompute the period's daily groups; returns how many groups it now has."""
    params = {"period": check_period(period)}
    ch.command(REFRESH_SQL, params)
    rows = ch.query("SELECT count() FROM usage_daily FINAL WHERE period = {period:String}", params)
    return int(rows[0][0])
