"""A period's usage per account as the invoices need it, from ClickHouse (`usage_rows FINAL`): overage calls by
the plan they were settled on, and calls, tokens and list cost by model."""

from __future__ import annotations

from billing.pricing import AccountUsage, ModelUsage
from billing_worker.clickhouse import ClickHouse
from billing_worker.periods import check_period
from billing_worker.usage_queries import FINAL_SETTINGS

SQL = f"""
SELECT acct, plan, model, sum(calls), sum(overage), sum(pt), sum(ct), sum(cached), sum(reasoning), sum(cost_nanos)
FROM usage_rows FINAL WHERE period = {{period:String}}
GROUP BY acct, plan, model {FINAL_SETTINGS}
"""


def period_usage(ch: ClickHouse, period: str) -> dict[str, AccountUsage]:
    found: dict[str, AccountUsage] = {}
    for acct, plan, model, calls, overage, pt, ct, cached, reasoning, cost in ch.query(
            SQL, {"period": check_period(period)}):
        usage = found.setdefault(acct, AccountUsage())
        usage.calls += int(calls)
        usage.prompt_tokens += int(pt)
        usage.completion_tokens += int(ct)
        usage.cached_tokens += int(cached)
        usage.reasoning_tokens += int(reasoning)
        usage.cost_nanos += int(cost)
        if int(overage):
            usage.overage_by_plan[plan] = usage.overage_by_plan.get(plan, 0) + int(overage)
        by_model = usage.by_model.setdefault(model, ModelUsage(model))
        by_model.calls += int(calls)
        by_model.prompt_tokens += int(pt)
        by_model.completion_tokens += int(ct)
        by_model.cost_nanos += int(cost)
    return found
