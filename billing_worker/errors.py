"""The billing worker's one error hierarchy; driver exceptions are wrapped at the boundary."""

from __future__ import annotations


class BillingWorkerError(Exception):
    """Base class of every error the billing worker raises on purpose."""


class ConfigError(BillingWorkerError):
    """A setting is missing or malformed; the message names the environment variable."""


class ClickHouseError(BillingWorkerError):
    """ClickHouse (server or embedded chDB) failed; `code` and `name` are ClickHouse's when known."""

    def __init__(self, message: str, *, code: int | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.name = name


class ClickHouseUnavailable(ClickHouseError):
    """ClickHouse cannot be reached or is temporarily unable to work; retry later, keep the rows."""


class ClickHouseRejected(ClickHouseError):
    """ClickHouse refused the data itself (parse error, constraint, value out of range)."""


class ClickHouseQueryError(ClickHouseError):
    """A statement failed for a reason that is neither the data nor availability (syntax, schema)."""


class MigrationError(BillingWorkerError):
    """A schema file is malformed, or an applied file was changed after it was applied."""


class InvalidUsageEntry(BillingWorkerError):
    """A usage stream entry does not follow the contract in docs/redis-keys.md; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StreamError(BillingWorkerError):
    """Redis failed while reading, acknowledging or trimming the usage streams."""


class InvalidArgument(BillingWorkerError, ValueError):
    """A caller passed a malformed period, account or option (reported to the user as is)."""
