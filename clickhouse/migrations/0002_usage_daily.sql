-- Daily rollup per (account, day, API key, model), recomputed from `usage_rows FINAL` by a job
-- (billing_worker.rollup.refresh_daily_rollup), never by a materialized view: a materialized view would
-- add a replayed row a second time. Re-running the job for a period inserts a newer version of every
-- group; ReplacingMergeTree(computed_at) + FINAL keeps the newest, so the job is idempotent.
-- cluster: distributed by cityHash64(acct)
CREATE TABLE IF NOT EXISTS usage_daily
(
    period         LowCardinality(String),
    acct           String,
    day            Date,
    key_id         String,
    model          LowCardinality(String),
    requests       UInt64,
    calls          UInt64,
    overage_calls  UInt64,
    pt             UInt64,
    ct             UInt64,
    cached         UInt64,
    reasoning      UInt64,
    cost_nanos     UInt64,
    computed_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY period
ORDER BY (acct, period, day, key_id, model);
