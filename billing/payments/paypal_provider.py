"""PayPal through its REST API: Orders v2 (create + capture) with a vaulted payment method, Payments v2 refunds,
webhook verification through `POST /v1/notifications/verify-webhook-signature`.

**A thin REST client over `urllib`, not `paypal-server-sdk`.** The SDK (the maintained successor of
`paypalrestsdk`) only knows two environments, `Environment.PRODUCTION` and `Environment.SANDBOX`, whose base
URIs are a class-level table in its generated `Configuration` (no base-URL option): it cannot be pointed at the
project's fake PayPal (fakes/paypal) without patching its internals. It also has no webhook-verification call and
would bring apimatic-core, its requests adapter and python-dotenv. The REST surface used here is six calls.

Settings are read once (`PayPalSettings.from_env`): `PAYPAL_CLIENT_ID`, `PAYPAL_CLIENT_SECRET`,
`AIHUB_PAYPAL_API_BASE` (default the live API; `https://api-m.sandbox.paypal.com` for the sandbox, the fake's URL
in tests) and `PAYPAL_WEBHOOK_ID` (the id of the webhook PayPal signs our notifications for).

- OAuth2 client credentials; the access token is cached until a minute before it expires, and fetched again once
  when PayPal answers 401 (a token revoked early).
- `create_customer`: this flow needs no PayPal customer object (the vaulted payment token carries PayPal's own
  customer id), so the "customer" is a stable reference made from our account id, `aihub-<account id>`.
- `attach_payment_method`: the payment method is a PayPal vault id (payment method token, from the Vault v3
  setup/payment token flow on the client side). It is looked up (`GET /v3/vault/payment-tokens/{id}`) and stored
  as that id; a vaulted card is stored as `card:<vault id>` so that a charge names the right payment source.
  The brand is "paypal" or the card brand, with the card's last digits; never a card number.
- `charge`: `POST /v2/checkout/orders` (intent CAPTURE, the invoice's total as a decimal string, invoice_id =
  the invoice number, payment_source.{paypal|card}.vault_id) with `PayPal-Request-Id` = our idempotency key, so a
  retried attempt gets the same order back and nothing is captured twice. PayPal captures a vaulted-source order
  in the create call (status COMPLETED); an order that comes back APPROVED is captured with
  `POST /v2/checkout/orders/{id}/capture` (request id `<key>:capture`). Capture COMPLETED → succeeded,
  PENDING → processing, DECLINED/FAILED → failed; a 422 (e.g. INSTRUMENT_DECLINED, TRANSACTION_REFUSED,
  DUPLICATE_INVOICE_ID) → failed with `failure_code` = the issue in lower case (`instrument_declined`);
  PAYER_ACTION_REQUIRED → requires_action, with the order's `payer-action` link (where the payer approves it) as
  `action_url` when PayPal made an order. The result's `provider_id` is the capture id when there is a capture
  (what a refund needs), else the order id. No answer, 429 or 5xx → ProviderUnavailable. `replays_charges`:
  the same request id is answered with the first outcome, so an attempt whose answer was lost is sent again.
- `find_attempt(customer, key, id)`: polls an attempt we have an id for: `GET /v2/payments/captures/{id}`
  (COMPLETED, PARTIALLY_REFUNDED, REFUNDED → succeeded; PENDING → processing; DECLINED, FAILED → failed), or,
  for an order id, `GET /v2/checkout/orders/{id}` (an APPROVED order is captured with `<key>:capture`, as
  `charge` does); None when PayPal knows neither.
- `cancel(order id)`: PayPal has no call that cancels a CAPTURE order, and an order is never captured without
  our capture call (it expires): a `requires_action` order is abandoned (`failed`) unless `GET` shows it
  captured already (then its capture's state).
- `refund`: `GET` the capture (its currency), then `POST /v2/payments/captures/{id}/refund` with the amount and
  `PayPal-Request-Id` = our key (sent again with the same key, it is answered with the first refund: how a
  refund whose answer was lost is settled). A refusal (REFUND_AMOUNT_EXCEEDED, CAPTURE_FULLY_REFUNDED, ...) is a
  `failed` result naming the issue.
- `verify_webhook(headers, body, webhook_id)`: True only when PayPal answers verification_status SUCCESS;
  missing transmission headers or a body that is not a JSON object → False without a call; PayPal unreachable
  → ProviderUnavailable (the endpoint answers 5xx and PayPal delivers again).

Money: integer minor units ↔ PayPal's decimal strings through Decimal (never float), with no decimals for HUF,
JPY and TWD and two for every other currency PayPal supports.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from billing.errors import InvalidInput
from billing.payments.provider import (
    ChargeResult,
    ChargeState,
    MethodDetails,
    PaymentDeclined,
    ProviderUnavailable,
    RefundResult,
)
from gateway.errors import ConfigError
from gateway.settings import environment

DEFAULT_API_BASE = "https://api-m.paypal.com"
ZERO_DECIMAL_CURRENCIES = frozenset({"HUF", "JPY", "TWD"})
TOKEN_MARGIN_S = 60.0
WEBHOOK_HEADERS = {
    "auth_algo": "paypal-auth-algo",
    "cert_url": "paypal-cert-url",
    "transmission_id": "paypal-transmission-id",
    "transmission_sig": "paypal-transmission-sig",
    "transmission_time": "paypal-transmission-time",
}
CARD_PREFIX = "card:"

JSON = dict[str, Any]


@dataclass(frozen=True)
class PayPalSettings:
    client_id: str
    client_secret: str = field(repr=False)
    api_base: str = DEFAULT_API_BASE
    webhook_id: str = ""
    timeout_s: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PayPalSettings:
        env = environment(environ)
        client_id = env.get("PAYPAL_CLIENT_ID") or ""
        secret = env.get("PAYPAL_CLIENT_SECRET") or ""
        if not client_id or not secret:
            raise ConfigError("PAYPAL_CLIENT_ID and PAYPAL_CLIENT_SECRET must both be set (a PayPal REST app's "
                              "credentials)")
        base = (env.get("AIHUB_PAYPAL_API_BASE") or DEFAULT_API_BASE).rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"AIHUB_PAYPAL_API_BASE={base[:100]!r} must be an http(s) URL")
        return cls(client_id=client_id, client_secret=secret, api_base=base,
                   webhook_id=env.get("PAYPAL_WEBHOOK_ID") or "")


# -- money ---------------------------------------------------------------------------------------------------------
def _exponent(currency: str) -> int:
    return 0 if currency.upper() in ZERO_DECIMAL_CURRENCIES else 2


def to_paypal_amount(amount_minor: int, currency: str) -> JSON:
    """Integer minor units → PayPal's {currency_code, value}: 1234 USD → "12.34", 500 JPY → "500"."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise InvalidInput(f"An amount is an integer of minor units, not {amount_minor!r}.", code="bad_amount")
    code = currency.upper()
    value = Decimal(amount_minor).scaleb(-_exponent(code))
    return {"currency_code": code, "value": f"{value:.{_exponent(code)}f}"}


def from_paypal_amount(amount: Mapping[str, Any]) -> int:
    """PayPal's {currency_code, value} → integer minor units ("12.34" USD → 1234); exact or ValueError."""
    code = str(amount["currency_code"]).upper()
    minor = Decimal(str(amount["value"])).scaleb(_exponent(code))
    if minor != minor.to_integral_value():
        raise ValueError(f"{amount['value']!r} {code} is not a whole number of minor units")
    return int(minor)


# -- the client ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Answer:
    status: int
    body: JSON

    def issue(self) -> str | None:
        details = self.body.get("details")
        if isinstance(details, list) and details and isinstance(details[0], dict):
            issue = details[0].get("issue")
            if isinstance(issue, str):
                return issue
        return None

    def message(self) -> str:
        issue = self.issue()
        details = self.body.get("details")
        description = details[0].get("description") if issue and isinstance(details, list) else None
        text = description or self.body.get("message") or self.body.get("error_description") or f"HTTP {self.status}"
        return str(text)[:500]


def _short(text: str, limit: int = 200) -> str:
    return text[:limit]


class PayPalProvider:
    name = "paypal"
    replays_charges = True        # PayPal-Request-Id: the same attempt sent again gets its first outcome

    def __init__(self, settings: PayPalSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_expires = 0.0

    # -- HTTP ------------------------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, data: bytes | None, headers: Mapping[str, str]) -> _Answer:
        request = urllib.request.Request(self.settings.api_base + path, data=data, method=method,
                                         headers=dict(headers))
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as err:
            with err:
                status, raw = err.code, err.read()
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise ProviderUnavailable(f"PayPal could not be reached ({type(exc).__name__}).") from None
        if status == 429 or status >= 500:
            raise ProviderUnavailable(f"PayPal answered HTTP {status} to {method} {path.split('?')[0]}.")
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        return _Answer(status, body if isinstance(body, dict) else {})

    def _access_token(self, *, refresh: bool = False) -> str:
        with self._lock:
            if not refresh and self._token is not None and self._clock() < self._token_expires:
                return self._token
            basic = base64.b64encode(f"{self.settings.client_id}:{self.settings.client_secret}".encode()).decode()
            answer = self._send("POST", "/v1/oauth2/token", b"grant_type=client_credentials",
                                {"Authorization": f"Basic {basic}", "Accept": "application/json",
                                 "Content-Type": "application/x-www-form-urlencoded"})
            token = answer.body.get("access_token")
            if answer.status != 200 or not isinstance(token, str):
                raise ProviderUnavailable(f"PayPal refused our credentials (HTTP {answer.status}): "
                                          f"{_short(answer.message())}")
            expires_in = answer.body.get("expires_in")
            lifetime = float(expires_in) if isinstance(expires_in, int | float) else 0.0
            self._token = token
            self._token_expires = self._clock() + max(lifetime - TOKEN_MARGIN_S, 0.0)
            return token

    def _call(self, method: str, path: str, body: JSON | None = None, *, request_id: str | None = None) -> _Answer:
        headers = {"Accept": "application/json", "Prefer": "return=representation"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if request_id is not None:
            headers["PayPal-Request-Id"] = request_id
        data = None if body is None else json.dumps(body).encode()
        if method == "POST" and data is None:
            data = b""
        answer = self._send(method, path, data, {**headers, "Authorization": f"Bearer {self._access_token()}"})
        if answer.status == 401:   # revoked or expired early: one new token, one more try
            token = self._access_token(refresh=True)
            answer = self._send(method, path, data, {**headers, "Authorization": f"Bearer {token}"})
            if answer.status == 401:
                raise ProviderUnavailable("PayPal refused our access token twice.")
        return answer

    # -- customers and payment methods -----------------------------------------------------------------------------
    def create_customer(self, account: Mapping[str, Any]) -> str:
        """No PayPal call: the vault token holds PayPal's customer; ours is a stable reference to the account."""
        return f"aihub-{account['id']}"

    def attach_payment_method(self, customer: str, payment_method: str) -> MethodDetails:
        vault_id = payment_method.removeprefix(CARD_PREFIX)
        if not vault_id or not vault_id.replace("-", "").replace("_", "").isalnum() or len(vault_id) > 36:
            raise InvalidInput("A PayPal payment method is a vault id (payment method token).",
                               code="bad_payment_method")
        answer = self._call("GET", f"/v3/vault/payment-tokens/{urllib.parse.quote(vault_id, safe='')}")
        if answer.status == 404:
            raise InvalidInput(f"PayPal has no payment token {vault_id!r}.", code="bad_payment_method")
        if answer.status != 200:
            raise PaymentDeclined(f"PayPal refused the payment token: {_short(answer.message())}",
                                  code=(answer.issue() or "payment_method_refused").lower())
        source = answer.body.get("payment_source")
        source = source if isinstance(source, dict) else {}
        card = source.get("card")
        if isinstance(card, dict):
            brand = card.get("brand")
            last = card.get("last_digits")
            return MethodDetails(CARD_PREFIX + vault_id, None if brand is None else str(brand).lower(),
                                 None if last is None else str(last)[-4:])
        kind = next(iter(source), "paypal")
        return MethodDetails(vault_id, str(kind))

    # -- charges ---------------------------------------------------------------------------------------------------
    def charge(self, invoice: Mapping[str, Any], customer: str, payment_method: str,
               idempotency_key: str) -> ChargeResult:
        number = str(invoice["number"])
        kind = "card" if payment_method.startswith(CARD_PREFIX) else "paypal"
        unit: JSON = {
            "reference_id": number[:256],
            "invoice_id": number[:127],
            "custom_id": str(invoice.get("account") or customer)[:127],
            "description": f"Invoice {number}"[:127],
            "amount": to_paypal_amount(int(invoice["total_minor"]), str(invoice["currency"])),
        }
        body: JSON = {"intent": "CAPTURE", "purchase_units": [unit],
                      "payment_source": {kind: {"vault_id": payment_method.removeprefix(CARD_PREFIX)}}}
        answer = self._call("POST", "/v2/checkout/orders", body, request_id=idempotency_key)
        if answer.status not in (200, 201):
            return self._refused(answer, None)
        return self._order_result(answer.body, idempotency_key)

    def _order_result(self, order: JSON, idempotency_key: str) -> ChargeResult:
        """An order of ours as the attempt's result: an approved order is captured first (`<key>:capture`)."""
        order_id = str(order.get("id") or "") or None
        status = order.get("status")
        if status in ("APPROVED", "CREATED", "SAVED") and order_id is not None:
            answer = self._call("POST", f"/v2/checkout/orders/{urllib.parse.quote(order_id, safe='')}/capture",
                                {}, request_id=f"{idempotency_key}:capture")
            if answer.status not in (200, 201):
                return self._refused(answer, order_id)
            order = answer.body
            status = order.get("status")
        if status == "PAYER_ACTION_REQUIRED":
            return ChargeResult("requires_action", order_id, "payer_action_required",
                                "The payer must approve this payment on PayPal.",
                                action_url=_payer_action(order))
        if status == "VOIDED":
            return ChargeResult("failed", order_id, "voided", "PayPal voided the order.")
        capture = _first_capture(order)
        if capture is None:
            return ChargeResult("processing" if status == "COMPLETED" else "failed", order_id,
                                None if status == "COMPLETED" else str(status or "unknown").lower(),
                                None if status == "COMPLETED" else f"PayPal left the order {status}.")
        return _capture_result(capture, order_id)

    def find_attempt(self, customer: str, idempotency_key: str,
                     provider_payment_id: str | None = None) -> ChargeResult | None:
        """Polls PayPal for an attempt: its capture, else its order (module docstring). Without an id PayPal cannot
        be asked (the service sends the attempt again: `replays_charges`), so the attempt stays `processing`."""
        if not provider_payment_id:
            return ChargeResult("processing")
        quoted = urllib.parse.quote(provider_payment_id, safe="")
        found = self._call("GET", f"/v2/payments/captures/{quoted}")
        if found.status == 200:
            return _capture_result(found.body, provider_payment_id)
        order = self._call("GET", f"/v2/checkout/orders/{quoted}")
        if order.status == 200:
            return self._order_result(order.body, idempotency_key)
        if found.status == 404 and order.status == 404:
            return None
        raise ProviderUnavailable(f"PayPal answered HTTP {order.status} when asked about {provider_payment_id}.")

    def cancel(self, provider_payment_id: str) -> ChargeResult:
        """Abandons an order awaiting the payer (module docstring); its capture's state if it was captured."""
        answer = self._call("GET", f"/v2/checkout/orders/{urllib.parse.quote(provider_payment_id, safe='')}")
        capture = _first_capture(answer.body) if answer.status == 200 else None
        if capture is not None:
            return _capture_result(capture, provider_payment_id)
        if answer.status not in (200, 404):
            raise ProviderUnavailable(f"PayPal answered HTTP {answer.status} about order {provider_payment_id}.")
        return ChargeResult("failed", provider_payment_id, "canceled",
                            "Not approved by the payer; abandoned for a new attempt (never captured).")

    @staticmethod
    def _refused(answer: _Answer, order_id: str | None) -> ChargeResult:
        issue = answer.issue() or str(answer.body.get("name") or f"http_{answer.status}")
        state: ChargeState = "requires_action" if issue == "PAYER_ACTION_REQUIRED" else "failed"
        return ChargeResult(state, order_id, issue.lower(), _short(answer.message(), 500))

    # -- refunds ---------------------------------------------------------------------------------------------------
    def refund(self, provider_payment_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        path = f"/v2/payments/captures/{urllib.parse.quote(provider_payment_id, safe='')}"
        found = self._call("GET", path)
        amount = found.body.get("amount")
        if found.status != 200 or not isinstance(amount, dict):
            return RefundResult("failed", None, f"PayPal has no capture {provider_payment_id!r}: "
                                                f"{_short(found.message())}")
        body = {"amount": to_paypal_amount(amount_minor, str(amount["currency_code"]))}
        answer = self._call("POST", f"{path}/refund", body, request_id=idempotency_key)
        refund_id = answer.body.get("id")
        refund_id = str(refund_id) if isinstance(refund_id, str) else None
        if answer.status not in (200, 201):
            issue = answer.issue()
            prefix = f"{issue}: " if issue else ""
            return RefundResult("failed", refund_id, _short(prefix + answer.message(), 500))
        status = answer.body.get("status")
        if status == "COMPLETED":
            return RefundResult("succeeded", refund_id)
        if status in ("FAILED", "CANCELLED"):
            return RefundResult("failed", refund_id, f"PayPal {str(status).lower()} the refund.")
        return RefundResult("pending", refund_id)

    # -- webhooks --------------------------------------------------------------------------------------------------
    def verify_webhook(self, headers: Mapping[str, str], body: bytes | str, webhook_id: str | None = None) -> bool:
        """Asks PayPal whether this notification is one it sent to our webhook; True only for SUCCESS."""
        webhook = webhook_id if webhook_id is not None else self.settings.webhook_id
        if not webhook:
            return False
        lowered = {k.lower(): v for k, v in headers.items()}
        fields: JSON = {}
        for name, header in WEBHOOK_HEADERS.items():
            value = lowered.get(header)
            if not value:
                return False
            fields[name] = value
        try:
            event = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return False
        if not isinstance(event, dict):
            return False
        answer = self._call("POST", "/v1/notifications/verify-webhook-signature",
                            {**fields, "webhook_id": webhook, "webhook_event": event})
        return answer.status == 200 and answer.body.get("verification_status") == "SUCCESS"


def _first_capture(order: Mapping[str, Any]) -> Mapping[str, Any] | None:
    units = order.get("purchase_units")
    if not isinstance(units, list) or not units or not isinstance(units[0], dict):
        return None
    payments = units[0].get("payments")
    captures = payments.get("captures") if isinstance(payments, dict) else None
    if isinstance(captures, list) and captures and isinstance(captures[0], dict):
        return captures[0]
    return None


def _capture_result(capture: Mapping[str, Any], order_id: str | None) -> ChargeResult:
    capture_id = str(capture.get("id") or "") or order_id
    capture_status = str(capture.get("status") or "")
    if capture_status in ("COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"):
        return ChargeResult("succeeded", capture_id)
    if capture_status == "PENDING":
        reason = _reason(capture)
        return ChargeResult("processing", capture_id, None if reason is None else reason.lower(),
                            None if reason is None else f"PayPal holds the capture: {reason}.")
    reason = _reason(capture) or capture_status or "declined"
    return ChargeResult("failed", capture_id, reason.lower(), f"PayPal {capture_status.lower()} the capture.")


def _payer_action(order: Mapping[str, Any]) -> str | None:
    """The order's `payer-action` link: the PayPal page where the payer approves it."""
    links = order.get("links")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("rel") == "payer-action" and isinstance(link.get("href"), str):
            return str(link["href"])
    return None


def _reason(capture: Mapping[str, Any]) -> str | None:
    details = capture.get("status_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    return str(reason) if reason else None
