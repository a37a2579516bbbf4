"""Bank transfer: no provider call. The customer pays the invoice's reference by transfer and an admin marks the
invoice paid with the bank's reference (`PaymentService.mark_paid_by_bank_transfer`); a refund is paid back by
hand and recorded with its credit note like any other."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from billing.errors import InvalidInput
from billing.payments.provider import ChargeResult, MethodDetails, RefundResult

REFERENCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:/\-]{0,127}$")


def method_id(account_id: str) -> str:
    """The provider_method_id of an account's bank-transfer payment method."""
    return f"bank:{account_id}"


def check_reference(reference: str) -> str:
    """A bank reference: 1-128 letters, digits, spaces and . _ : / -; InvalidInput (bad_reference) otherwise."""
    reference = reference.strip()
    if not REFERENCE_RE.match(reference):
        raise InvalidInput("A bank transfer reference is 1 to 128 letters, digits, spaces or . _ : / - characters.",
                           code="bad_reference")
    return reference


class BankTransferProvider:
    """The provider interface for accounts that pay by transfer: nothing leaves the system."""

    name = "bank_transfer"

    def create_customer(self, account: Mapping[str, Any]) -> str:
        return f"bank:{account['id']}"

    def attach_payment_method(self, customer: str, payment_method: str) -> MethodDetails:
        return MethodDetails(provider_method_id=f"{customer}:transfer")  # not used: no method is attached

    def charge(self, invoice: Mapping[str, Any], customer: str, payment_method: str,
               idempotency_key: str) -> ChargeResult:
        return ChargeResult("pending", None, None, "Awaiting the customer's bank transfer.")

    def refund(self, provider_payment_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        return RefundResult("succeeded", f"manual:{idempotency_key}")
