-- One row per settled request, loaded from the `{s:NN}:usage` streams by billing_worker.drain.
-- Columns mirror the stream fields of docs/redis-keys.md (`key` is `key_id` here).
-- Deduplication: a replayed entry (crash between INSERT and XACK, reclaimed entry) is inserted again
-- with the same sorting key (acct, period, rid); ReplacingMergeTree keeps one row per key, the one with
-- the latest `ingested_at`. Queries that matter for money read `FINAL` (see clickhouse/README.md).
-- cluster: distributed by cityHash64(acct)
CREATE TABLE IF NOT EXISTS usage_rows
(
    rid          String,
    acct         String,
    key_id       String,
    plan         LowCardinality(String),
    model        LowCardinality(String),
    upstream     LowCardinality(String),
    period       LowCardinality(String),
    outcome      LowCardinality(String),
    ts_start_ms  UInt64,
    ts_end_ms    UInt64,
    status       UInt16,
    calls        UInt8,
    overage      UInt8,
    pt           UInt64,
    ct           UInt64,
    cached       UInt64,
    reasoning    UInt64,
    cost_nanos   UInt64,
    latency_ms   UInt64,
    stream_id    String,
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3),
    day          Date MATERIALIZED toDate(toDateTime(intDiv(ts_start_ms, 1000), 'UTC')),
    ts_start     DateTime64(3, 'UTC') ALIAS fromUnixTimestamp64Milli(toInt64(ts_start_ms), 'UTC'),
    ts_end       DateTime64(3, 'UTC') ALIAS fromUnixTimestamp64Milli(toInt64(ts_end_ms), 'UTC')
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY period
ORDER BY (acct, period, rid);
