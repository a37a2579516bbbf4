"""The billing domain's one error hierarchy. Each error carries a stable `code` and the HTTP status an API maps
it to; the CLI prints the message and exits 2."""

from __future__ import annotations


class BillingError(Exception):
    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(BillingError):
    status = 400


class NotFound(BillingError):
    status = 404
    code = "not_found"


class Conflict(BillingError):
    status = 409
    code = "conflict"


class StoreUnavailable(BillingError):
    """The database cannot be reached or migrated (wraps the driver's error at the boundary)."""

    status = 503
    code = "store_unavailable"
