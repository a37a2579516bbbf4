-- Bootstrap, applied before the numbered files on every run (idempotent): what has been applied.
-- One row per applied file; `checksum` is the SHA-256 of the file, so an edited applied file is refused.
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version     UInt32,
    name        String,
    checksum    String,
    applied_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version;
