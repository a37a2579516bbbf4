"""The fake PayPal's state and its aiohttp application (see fakes/paypal/__init__.py for the wire contract)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import re
import secrets
import threading
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

JSON = dict[str, Any]
JSON_BODY = web.RequestKey("json_body", object)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# PayPal's supported currencies; HUF, JPY and TWD have no decimals.
CURRENCIES = frozenset({
    "AUD", "BRL", "CAD", "CNY", "CZK", "DKK", "EUR", "HKD", "HUF", "ILS", "JPY", "MYR",
    "MXN", "TWD", "NZD", "NOK", "PHP", "PLN", "GBP", "SGD", "SEK", "CHF", "THB", "USD",
})
ZERO_DECIMAL = frozenset({"HUF", "JPY", "TWD"})
AUTH_ALGO = "SHA256withRSA"
APP_ID = "APP-80W284485P519543T"
SCOPE = (
    "https://uri.paypal.com/services/payments/payment https://uri.paypal.com/services/payments/refund "
    "https://uri.paypal.com/services/vault/payment-tokens/readwrite "
    "https://uri.paypal.com/services/applications/webhooks"
)
_VALUE_RE = re.compile(r"^((-?[0-9]+)|(-?([0-9]+)?[.][0-9]+))$")
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

ISSUE_DESCRIPTIONS = {
    "INSTRUMENT_DECLINED": "The instrument presented  was either declined by the processor or bank, or it can't be "
                           "used for this payment.",
    "TRANSACTION_REFUSED": "The request was refused.",
    "PAYER_ACTION_REQUIRED": "Transaction cannot complete successfully, instruct the buyer to return to PayPal.",
    "PAYER_CANNOT_PAY": "Combination of payer and payee settings mean that this buyer cannot pay this seller.",
    "REFUND_AMOUNT_EXCEEDED": "The refund amount must be less than or equal to the capture amount that has not yet "
                              "been refunded.",
    "CAPTURE_FULLY_REFUNDED": "The capture has already been fully refunded.",
    "ORDER_ALREADY_CAPTURED": "Order already captured. If 'intent=CAPTURE' only one capture per order is allowed.",
    "ORDER_NOT_APPROVED": "Payer has not yet approved the Order for payment.",
    "DUPLICATE_INVOICE_ID": "Duplicate Invoice ID detected. To avoid a potential duplicate transaction your account "
                            "setting requires that Invoice Id be unique for each transaction.",
    "CURRENCY_NOT_SUPPORTED": "Currency code is not currently supported.",
    "CANNOT_BE_ZERO_OR_NEGATIVE": "Must be greater than zero.",
    "DECIMAL_PRECISION": "If the currency supports decimals, only two decimal place precision is supported.",
    "MISSING_REQUIRED_PARAMETER": "A required field / parameter is missing.",
    "INVALID_PARAMETER_VALUE": "The value of a field is invalid.",
    "TOKEN_ID_NOT_FOUND": "Specified token was not found.",
    "CURRENCY_MISMATCH": "The currency of the refund must match the currency of the capture.",
    "CAPTURE_STATUS_NOT_VALID": "Invalid capture status. Only a COMPLETED or PARTIALLY_REFUNDED capture can be "
                                "refunded.",
    "INVALID_RESOURCE_ID": "Specified resource ID does not exist. Please check the resource ID and try again.",
}


class PayPalError(Exception):
    """An error answer in PayPal's shape: {name, message, debug_id, details[{field, issue, description}], links}."""

    def __init__(self, status: int, name: str, message: str, issue: str | None = None,
                 field_: str | None = None, api: str = "orders/v2") -> None:
        super().__init__(message)
        self.status, self.name, self.message, self.issue, self.field, self.api = status, name, message, issue, \
            field_, api

    def body(self) -> JSON:
        body: JSON = {"name": self.name, "message": self.message, "debug_id": secrets.token_hex(7)}
        if self.issue is not None:
            detail: JSON = {"issue": self.issue, "description": ISSUE_DESCRIPTIONS.get(self.issue, self.issue)}
            if self.field is not None:
                detail = {"field": self.field, "location": "body", **detail}
            body["details"] = [detail]
            body["links"] = [{"href": f"https://developer.paypal.com/docs/api/{self.api}/#error-{self.issue}",
                              "rel": "information_link", "method": "GET"}]
        return body


def unprocessable(issue: str, field_: str | None = None, api: str = "orders/v2") -> PayPalError:
    return PayPalError(422, "UNPROCESSABLE_ENTITY", "The requested action could not be performed, semantically "
                       "incorrect, or failed business validation.", issue, field_, api)


def invalid_request(issue: str, field_: str | None = None, api: str = "orders/v2") -> PayPalError:
    return PayPalError(400, "INVALID_REQUEST", "Request is not well-formed, syntactically incorrect, or violates "
                       "schema.", issue, field_, api)


def not_found(api: str = "orders/v2") -> PayPalError:
    return PayPalError(404, "RESOURCE_NOT_FOUND", "The specified resource does not exist.", "INVALID_RESOURCE_ID",
                       None, api)


def paypal_id() -> str:
    """A PayPal-looking resource id: 17 upper-case letters and digits (e.g. 5O190127TN364715T)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(17))


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def money(value: Decimal, currency: str) -> JSON:
    places = Decimal(1) if currency in ZERO_DECIMAL else Decimal("0.01")
    return {"currency_code": currency, "value": str(value.quantize(places))}


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=dict(headers or {}))


@dataclass
class PaymentToken:
    """A vaulted instrument. `issue`: the 422 issue a charge against it gets (e.g. INSTRUMENT_DECLINED);
    `pending`: its captures stay PENDING (reason PENDING_REVIEW) until `complete_pending`."""

    id: str
    kind: str                   # paypal | card
    customer_id: str
    issue: str | None = None
    pending: bool = False
    email: str = "buyer@example.com"
    brand: str = "VISA"
    last_digits: str = "1111"

    def source(self) -> JSON:
        if self.kind == "card":
            return {"card": {"brand": self.brand, "last_digits": self.last_digits, "expiry": "2030-12"}}
        return {"paypal": {"email_address": self.email, "account_id": "QYR5Z8XDVJNXQ",
                           "name": {"given_name": "John", "surname": "Doe"}}}


@dataclass
class Transmission:
    webhook_id: str
    time: str
    sig: str
    cert_url: str
    event: JSON
    body: bytes


@dataclass
class Delivery:
    webhook_id: str
    url: str
    event: JSON
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    error: str | None = None


@dataclass
class Webhook:
    id: str
    url: str
    event_types: tuple[str, ...]

    def wants(self, event_type: str) -> bool:
        return "*" in self.event_types or event_type in self.event_types


@dataclass
class _Capture:
    body: JSON
    order_id: str
    refunded: Decimal = Decimal(0)


@dataclass
class _Signer:
    key: rsa.RSAPrivateKey
    cert_pem: bytes
    cert_name: str = field(default_factory=lambda: f"CERT-360caa42-fca2a594-{secrets.token_hex(4)}")

    @classmethod
    def generate(cls) -> _Signer:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "messageverificationcerts.fake.paypal")])
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(start)
                .not_valid_after(start + dt.timedelta(days=365)).sign(key, hashes.SHA256()))
        return cls(key, cert.public_bytes(serialization.Encoding.PEM))

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            self.key.public_key().verify(base64.b64decode(signature, validate=True), message, padding.PKCS1v15(),
                                         hashes.SHA256())
        except Exception:
            return False
        return True


def signed_message(transmission_id: str, time: str, webhook_id: str, body: bytes) -> bytes:
    """What PayPal signs: transmission id | time | webhook id | CRC32 of the raw body (decimal)."""
    return f"{transmission_id}|{time}|{webhook_id}|{zlib.crc32(body)}".encode()


def _parse_amount(amount: object, where: str) -> tuple[Decimal, str]:
    if not isinstance(amount, dict):
        raise invalid_request("MISSING_REQUIRED_PARAMETER", where)
    currency, value = amount.get("currency_code"), amount.get("value")
    if not isinstance(currency, str) or not currency:
        raise invalid_request("MISSING_REQUIRED_PARAMETER", f"{where}/currency_code")
    if not isinstance(value, str) or not _VALUE_RE.match(value):
        raise invalid_request("INVALID_PARAMETER_VALUE" if value is not None else "MISSING_REQUIRED_PARAMETER",
                              f"{where}/value")
    if currency not in CURRENCIES:
        raise unprocessable("CURRENCY_NOT_SUPPORTED", f"{where}/currency_code")
    try:
        parsed = Decimal(value)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise invalid_request("INVALID_PARAMETER_VALUE", f"{where}/value") from None
    exponent = parsed.as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    if places > (0 if currency in ZERO_DECIMAL else 2):
        raise invalid_request("DECIMAL_PRECISION", f"{where}/value")
    if parsed <= 0:
        raise unprocessable("CANNOT_BE_ZERO_OR_NEGATIVE", f"{where}/value")
    return parsed, currency


class PayPalApp:
    """All state of one fake PayPal; `build()` returns a fresh aiohttp Application over it. Thread-safe: the
    Python API (add_payment_token, orders, ...) may be called from the test's thread while the app serves."""

    def __init__(self, *, client_id: str, client_secret: str, capture_on_create: bool = True,
                 token_ttl_s: int = 32400) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.capture_on_create = capture_on_create
        self.token_ttl_s = token_ttl_s
        self.base_url = ""
        self.lock = threading.RLock()
        self.signer = _Signer.generate()
        self.token_requests = 0
        self.requests: list[JSON] = []
        self.access_tokens: dict[str, dt.datetime] = {}
        self.payment_tokens: dict[str, PaymentToken] = {}
        self.orders: dict[str, JSON] = {}
        self.captures: dict[str, _Capture] = {}
        self.refunds: dict[str, JSON] = {}
        self.paid_invoice_ids: set[str] = set()
        self.idempotent: dict[tuple[str, str, str], tuple[int, JSON]] = {}
        self.webhooks: dict[str, Webhook] = {}
        self.events: dict[str, JSON] = {}
        self.transmissions: dict[str, Transmission] = {}
        self.deliveries: list[Delivery] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- application -------------------------------------------------------------------------------------------
    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_post("/v1/oauth2/token", self._token)
        r.add_post("/v2/checkout/orders", self._create_order)
        r.add_get("/v2/checkout/orders/{id}", self._get_order)
        r.add_post("/v2/checkout/orders/{id}/capture", self._capture_order)
        r.add_get("/v2/payments/captures/{id}", self._get_capture)
        r.add_post("/v2/payments/captures/{id}/refund", self._refund_capture)
        r.add_get("/v2/payments/refunds/{id}", self._get_refund)
        r.add_get("/v3/vault/payment-tokens/{id}", self._get_payment_token)
        r.add_post("/v1/notifications/verify-webhook-signature", self._verify_signature)
        r.add_get("/v1/notifications/webhooks-events/{id}", self._get_event)
        r.add_get("/v1/notifications/certs/{name}", self._cert)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self.loop = asyncio.get_running_loop()

    async def _on_cleanup(self, _app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw and request.content_type == "application/json":
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return json_response(invalid_request("MALFORMED_REQUEST_JSON").body(), 400)
        request[JSON_BODY] = body
        with self.lock:
            self.requests.append({"method": request.method, "path": request.path, "body": body,
                                  "headers": {k.lower(): v for k, v in request.headers.items()}})
        if request.path.startswith("/v1/notifications/certs/") or request.path == "/v1/oauth2/token":
            return await handler(request)
        if not self._authorized(request.headers.get("Authorization", "")):
            return json_response({"error": "invalid_token", "error_description": "Access Token not found in cache"},
                                 401) if request.headers.get("Authorization") else json_response(
                {"name": "AUTHENTICATION_FAILURE", "message": "Authentication failed due to invalid authentication "
                 "credentials or a missing Authorization header.",
                 "links": [{"href": "https://developer.paypal.com/docs/api/overview/#error",
                            "rel": "information_link"}]}, 401)
        request_id = request.headers.get("PayPal-Request-Id")
        key = (request.method, request.path, request_id) if request_id and request.method == "POST" else None
        if key is not None:
            with self.lock:
                cached = self.idempotent.get(key)
            if cached is not None:
                return json_response(cached[1], cached[0])
        mock = request.headers.get("PayPal-Mock-Response")
        try:
            if mock is not None:
                raise self._mock_error(mock)
            response = await handler(request)
        except PayPalError as exc:
            status, out = exc.status, exc.body()
            if key is not None and status < 500:
                with self.lock:
                    self.idempotent[key] = (status, out)
            return json_response(out, status)
        if key is not None and isinstance(response, web.Response) and response.body is not None:
            assert isinstance(response.body, bytes)
            with self.lock:
                self.idempotent[key] = (response.status, orjson.loads(response.body))
        return response

    def _mock_error(self, header: str) -> PayPalError:
        """PayPal's sandbox negative testing: `PayPal-Mock-Response: {"mock_application_codes": "ISSUE"}`."""
        try:
            code = orjson.loads(header).get("mock_application_codes")
        except (orjson.JSONDecodeError, AttributeError):
            code = None
        if not isinstance(code, str) or not code:
            return invalid_request("INVALID_PARAMETER_VALUE", "PayPal-Mock-Response")
        return unprocessable(code)

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer":
            return False
        with self.lock:
            expires = self.access_tokens.get(token.strip())
        return expires is not None and expires > dt.datetime.now(dt.UTC)

    @staticmethod
    async def _body(request: web.Request) -> JSON:
        """The JSON object body parsed by the middleware ({} when empty)."""
        if not await request.read():
            return {}
        body = request.get(JSON_BODY)
        if not isinstance(body, dict):
            raise invalid_request("MALFORMED_REQUEST_JSON")
        return body

    def _link(self, path: str, rel: str, method: str = "GET") -> JSON:
        return {"href": f"{self.base_url}{path}", "rel": rel, "method": method}

    @staticmethod
    def _prefer_minimal(request: web.Request) -> bool:
        return "return=representation" not in request.headers.get("Prefer", "")

    # -- OAuth2 ------------------------------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            user = password = ""
        if scheme != "Basic" or (user, password) != (self.client_id, self.client_secret):
            return json_response({"error": "invalid_client", "error_description": "Client Authentication failed"},
                                 401)
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return json_response({"error": "unsupported_grant_type",
                                  "error_description": "Grant Type is NULL or not supported"}, 400)
        token = "A21AA" + secrets.token_urlsafe(60)
        with self.lock:
            self.token_requests += 1
            self.access_tokens[token] = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.token_ttl_s)
        return json_response({"scope": SCOPE, "access_token": token, "token_type": "Bearer", "app_id": APP_ID,
                              "expires_in": self.token_ttl_s, "nonce": f"{now_iso()}{secrets.token_urlsafe(32)}"})

    # -- vault -------------------------------------------------------------------------------------------------
    def add_payment_token(self, kind: str = "paypal", *, customer_id: str | None = None, issue: str | None = None,
                          pending: bool = False, email: str = "buyer@example.com", brand: str = "VISA",
                          last_digits: str = "1111") -> str:
        if kind not in ("paypal", "card"):
            raise ValueError("kind is paypal or card")
        token = PaymentToken(id=secrets.token_hex(4) + paypal_id()[:3].lower(), kind=kind,
                             customer_id=customer_id or paypal_id()[:10], issue=issue, pending=pending,
                             email=email, brand=brand, last_digits=last_digits)
        with self.lock:
            self.payment_tokens[token.id] = token
        return token.id

    async def _get_payment_token(self, request: web.Request) -> web.Response:
        with self.lock:
            token = self.payment_tokens.get(request.match_info["id"])
        if token is None:
            raise not_found("payment-tokens/v3")
        return json_response({"id": token.id, "customer": {"id": token.customer_id},
                              "payment_source": token.source(),
                              "links": [self._link(f"/v3/vault/payment-tokens/{token.id}", "self"),
                                        self._link(f"/v3/vault/payment-tokens/{token.id}", "delete", "DELETE")]})

    # -- orders ------------------------------------------------------------------------------------------------
    def _source_token(self, source: object) -> tuple[str, PaymentToken | None]:
        """The payment source's kind and vaulted instrument (None: the buyer must approve on PayPal)."""
        if source is None:
            return "paypal", None
        if not isinstance(source, dict) or len(source) != 1:
            raise invalid_request("INVALID_PARAMETER_VALUE", "/payment_source")
        [(kind, value)] = source.items()
        if kind == "token":   # a billing agreement or payment method token: {"id", "type"}
            token_id = value.get("id") if isinstance(value, dict) else None
        elif kind in ("paypal", "card", "venmo"):
            token_id = value.get("vault_id") if isinstance(value, dict) else None
            if token_id is None:
                return kind, None
        else:
            raise invalid_request("INVALID_PARAMETER_VALUE", "/payment_source")
        if not isinstance(token_id, str) or not token_id:
            raise invalid_request("MISSING_REQUIRED_PARAMETER", f"/payment_source/{kind}/vault_id")
        with self.lock:
            token = self.payment_tokens.get(token_id)
        if token is None:
            raise unprocessable("TOKEN_ID_NOT_FOUND", f"/payment_source/{kind}/vault_id")
        return token.kind, token

    async def _create_order(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        intent = body.get("intent")
        if intent is None:
            raise invalid_request("MISSING_REQUIRED_PARAMETER", "/intent")
        if intent not in ("CAPTURE", "AUTHORIZE"):
            raise invalid_request("INVALID_PARAMETER_VALUE", "/intent")
        if intent == "AUTHORIZE":
            raise unprocessable("INVALID_PARAMETER_VALUE", "/intent")   # the fake does not model authorizations
        units = body.get("purchase_units")
        if not isinstance(units, list) or not units:
            raise invalid_request("MISSING_REQUIRED_PARAMETER", "/purchase_units")
        if len(units) != 1 or not isinstance(units[0], dict):
            raise unprocessable("INVALID_PARAMETER_VALUE", "/purchase_units")   # one unit, as we use it
        unit = units[0]
        reference = unit.get("reference_id") or "default"
        where = f"/purchase_units/@reference_id=='{reference}'/amount"
        value, currency = _parse_amount(unit.get("amount"), where)
        kind, token = self._source_token(body.get("payment_source"))
        order_id = paypal_id()
        now = now_iso()
        out_unit: JSON = {"reference_id": reference, "amount": money(value, currency),
                          "payee": {"email_address": "merchant@example.com", "merchant_id": "7KNGBPH2U58GQ"}}
        for key in ("invoice_id", "custom_id", "description", "soft_descriptor"):
            if isinstance(unit.get(key), str):
                out_unit[key] = unit[key]
        order: JSON = {"id": order_id, "intent": intent, "status": "CREATED", "purchase_units": [out_unit],
                       "create_time": now, "update_time": now}
        if token is not None:
            order["payment_source"] = {kind: {**token.source()[kind],
                                              "attributes": {"vault": {"id": token.id, "status": "VAULTED",
                                                                       "customer": {"id": token.customer_id}}}}}
            order["status"] = "APPROVED"
            order["_token"] = token.id
        self._order_links(order)
        if token is not None and self.capture_on_create:
            # A single-step order (the payment source is a vaulted instrument): PayPal captures at once.
            self._capture(order, token)
        with self.lock:
            self.orders[order_id] = order
        return json_response(self._public_order(order, self._prefer_minimal(request)), 201)

    def _order_links(self, order: JSON) -> None:
        order_id = order["id"]
        links = [self._link(f"/v2/checkout/orders/{order_id}", "self")]
        if order["status"] == "CREATED":
            links.append({"href": f"{self.base_url}/checkoutnow?token={order_id}", "rel": "payer-action",
                          "method": "GET"})
        if order["status"] in ("CREATED", "APPROVED"):
            links.append(self._link(f"/v2/checkout/orders/{order_id}", "update", "PATCH"))
            links.append(self._link(f"/v2/checkout/orders/{order_id}/capture", "capture", "POST"))
        order["links"] = links

    @staticmethod
    def _public_order(order: JSON, minimal: bool) -> JSON:
        if minimal:
            return {"id": order["id"], "status": order["status"], "links": order["links"]}
        return {k: v for k, v in order.items() if not k.startswith("_")}

    def _capture(self, order: JSON, token: PaymentToken) -> None:
        """Captures the order's purchase unit with the vaulted instrument (PayPalError when declined)."""
        unit = order["purchase_units"][0]
        invoice_id = unit.get("invoice_id")
        with self.lock:
            if invoice_id is not None and invoice_id in self.paid_invoice_ids:
                raise unprocessable("DUPLICATE_INVOICE_ID")
        if token.issue is not None:
            raise unprocessable(token.issue)
        amount = unit["amount"]
        value = Decimal(amount["value"])
        fee = (value * Decimal("0.0349") + Decimal("0.49")).quantize(Decimal("0.01"))
        if amount["currency_code"] in ZERO_DECIMAL:
            fee = fee.quantize(Decimal(1))
        capture_id = paypal_id()
        now = now_iso()
        capture: JSON = {
            "id": capture_id, "status": "PENDING" if token.pending else "COMPLETED", "amount": dict(amount),
            "final_capture": True,
            "seller_protection": {"status": "ELIGIBLE",
                                  "dispute_categories": ["ITEM_NOT_RECEIVED", "UNAUTHORIZED_TRANSACTION"]},
            "seller_receivable_breakdown": {"gross_amount": dict(amount),
                                            "paypal_fee": money(fee, amount["currency_code"]),
                                            "net_amount": money(value - fee, amount["currency_code"])},
            "links": [self._link(f"/v2/payments/captures/{capture_id}", "self"),
                      self._link(f"/v2/payments/captures/{capture_id}/refund", "refund", "POST"),
                      self._link(f"/v2/checkout/orders/{order['id']}", "up")],
            "create_time": now, "update_time": now,
        }
        if token.pending:
            capture["status_details"] = {"reason": "PENDING_REVIEW"}
        for key in ("invoice_id", "custom_id"):
            if key in unit:
                capture[key] = unit[key]
        unit["payments"] = {"captures": [capture]}
        order["status"] = "COMPLETED"
        order["update_time"] = now
        if token.kind == "paypal":
            order["payer"] = {"name": {"given_name": "John", "surname": "Doe"}, "email_address": token.email,
                              "payer_id": "QYR5Z8XDVJNXQ"}
        self._order_links(order)
        with self.lock:
            self.captures[capture_id] = _Capture(capture, order["id"])
            if invoice_id is not None:
                self.paid_invoice_ids.add(invoice_id)
        event_type = "PAYMENT.CAPTURE.PENDING" if token.pending else "PAYMENT.CAPTURE.COMPLETED"
        self.emit(event_type, "capture", self._capture_resource(capture_id))

    async def _get_order(self, request: web.Request) -> web.Response:
        with self.lock:
            order = self.orders.get(request.match_info["id"])
        if order is None:
            raise not_found()
        return json_response(self._public_order(order, False))

    async def _capture_order(self, request: web.Request) -> web.Response:
        await self._body(request)   # an empty body or {} (a payment_source is not modelled at capture)
        with self.lock:
            order = self.orders.get(request.match_info["id"])
        if order is None:
            raise not_found()
        if order["status"] == "COMPLETED":
            raise unprocessable("ORDER_ALREADY_CAPTURED")
        token_id = order.get("_token")
        with self.lock:
            token = self.payment_tokens.get(token_id) if isinstance(token_id, str) else None
        if order["status"] != "APPROVED" or token is None:
            raise unprocessable("ORDER_NOT_APPROVED")
        self._capture(order, token)
        return json_response(self._public_order(order, self._prefer_minimal(request)), 201)

    # -- captures and refunds ----------------------------------------------------------------------------------
    def _capture_resource(self, capture_id: str) -> JSON:
        """A capture as Payments v2 shows it (GET, webhooks): with supplementary_data.related_ids.order_id, which
        the order's embedded copy does not carry."""
        with self.lock:
            capture = self.captures[capture_id]
            return {**capture.body, "supplementary_data": {"related_ids": {"order_id": capture.order_id}}}

    async def _get_capture(self, request: web.Request) -> web.Response:
        with self.lock:
            capture = self.captures.get(request.match_info["id"])
        if capture is None:
            raise not_found("payments/v2")
        return json_response(self._capture_resource(capture.body["id"]))

    async def _refund_capture(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        with self.lock:
            capture = self.captures.get(request.match_info["id"])
            if capture is None:
                raise not_found("payments/v2")
            gross = Decimal(capture.body["amount"]["value"])
            currency = capture.body["amount"]["currency_code"]
            if capture.body["status"] not in ("COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"):
                raise unprocessable("CAPTURE_STATUS_NOT_VALID", api="payments/v2")
            remaining = gross - capture.refunded
            if "amount" in body:
                value, refund_currency = _parse_amount(body["amount"], "/amount")
                if refund_currency != currency:
                    raise unprocessable("CURRENCY_MISMATCH", "/amount/currency_code", api="payments/v2")
            else:
                value = remaining
            if remaining <= 0:
                raise unprocessable("CAPTURE_FULLY_REFUNDED", api="payments/v2")
            if value > remaining:
                raise unprocessable("REFUND_AMOUNT_EXCEEDED", "/amount/value", api="payments/v2")
            capture.refunded += value
            capture.body["status"] = "REFUNDED" if capture.refunded == gross else "PARTIALLY_REFUNDED"
            capture.body["update_time"] = now = now_iso()
            refund_id = paypal_id()
            refund: JSON = {
                "id": refund_id, "amount": money(value, currency), "status": "COMPLETED",
                "seller_payable_breakdown": {"gross_amount": money(value, currency),
                                             "paypal_fee": money(Decimal(0), currency),
                                             "net_amount": money(value, currency),
                                             "total_refunded_amount": money(capture.refunded, currency)},
                "links": [self._link(f"/v2/payments/refunds/{refund_id}", "self"),
                          self._link(f"/v2/payments/captures/{capture.body['id']}", "up")],
                "create_time": now, "update_time": now,
            }
            for key in ("invoice_id", "custom_id"):
                if key in capture.body:
                    refund[key] = capture.body[key]
            if isinstance(body.get("note_to_payer"), str):
                refund["note_to_payer"] = body["note_to_payer"]
            self.refunds[refund_id] = refund
        self.emit("PAYMENT.CAPTURE.REFUNDED", "refund", refund)
        if self._prefer_minimal(request):
            return json_response({"id": refund_id, "status": "COMPLETED", "links": refund["links"]}, 201)
        return json_response(refund, 201)

    async def _get_refund(self, request: web.Request) -> web.Response:
        with self.lock:
            refund = self.refunds.get(request.match_info["id"])
        if refund is None:
            raise not_found("payments/v2")
        return json_response(refund)

    def complete_pending(self, capture_id: str) -> JSON:
        """A PENDING capture clears: COMPLETED, PAYMENT.CAPTURE.COMPLETED sent."""
        return self._settle_pending(capture_id, "COMPLETED", "PAYMENT.CAPTURE.COMPLETED")

    def decline_pending(self, capture_id: str) -> JSON:
        """A PENDING capture is refused after review: DECLINED, PAYMENT.CAPTURE.DECLINED sent (the invoice id
        may be paid again)."""
        return self._settle_pending(capture_id, "DECLINED", "PAYMENT.CAPTURE.DECLINED")

    def _settle_pending(self, capture_id: str, status: str, event_type: str) -> JSON:
        with self.lock:
            capture = self.captures[capture_id]
            if capture.body["status"] != "PENDING":
                raise ValueError(f"capture {capture_id} is {capture.body['status']}, not PENDING")
            capture.body["status"] = status
            capture.body.pop("status_details", None)
            capture.body["update_time"] = now_iso()
            if status == "DECLINED":
                self.paid_invoice_ids.discard(capture.body.get("invoice_id"))
            body = self._capture_resource(capture_id)
        self.emit(event_type, "capture", body)
        return body

    # -- webhooks ----------------------------------------------------------------------------------------------
    def add_webhook(self, url: str, event_types: tuple[str, ...] = ("*",)) -> str:
        webhook_id = paypal_id()
        with self.lock:
            self.webhooks[webhook_id] = Webhook(webhook_id, url, event_types)
        return webhook_id

    def sign(self, webhook_id: str, event: JSON) -> tuple[dict[str, str], bytes]:
        """The headers and raw body PayPal would POST for `event` to the webhook `webhook_id`; the
        transmission is remembered, so verify-webhook-signature answers SUCCESS for exactly this one."""
        body = orjson.dumps(event)
        transmission_id = str(uuid.uuid4())
        time = now_iso()
        sig = self.signer.sign(signed_message(transmission_id, time, webhook_id, body))
        cert_url = f"{self.base_url}/v1/notifications/certs/{self.signer.cert_name}"
        with self.lock:
            self.transmissions[transmission_id] = Transmission(webhook_id, time, sig, cert_url, event, body)
        headers = {"Content-Type": "application/json", "PAYPAL-TRANSMISSION-ID": transmission_id,
                   "PAYPAL-TRANSMISSION-TIME": time, "PAYPAL-TRANSMISSION-SIG": sig, "PAYPAL-CERT-URL": cert_url,
                   "PAYPAL-AUTH-ALGO": AUTH_ALGO, "User-Agent": "PayPal/AUHD-214.0-fake"}
        return headers, body

    def make_event(self, event_type: str, resource_type: str, resource: JSON) -> JSON:
        event_id = f"WH-{paypal_id()}-{paypal_id()}"
        amount = resource.get("amount") or {}
        verb = {"PAYMENT.CAPTURE.COMPLETED": "completed", "PAYMENT.CAPTURE.PENDING": "is pending",
                "PAYMENT.CAPTURE.REFUNDED": "refunded"}.get(event_type, event_type)
        event: JSON = {
            "id": event_id, "event_version": "1.0", "create_time": now_iso(), "resource_type": resource_type,
            "resource_version": "2.0", "event_type": event_type,
            "summary": f"Payment {verb} for {amount.get('value', '')} {amount.get('currency_code', '')}".strip(),
            "resource": resource,
            "links": [self._link(f"/v1/notifications/webhooks-events/{event_id}", "self"),
                      self._link(f"/v1/notifications/webhooks-events/{event_id}/resend", "resend", "POST")],
        }
        with self.lock:
            self.events[event_id] = event
        return event

    def emit(self, event_type: str, resource_type: str, resource: JSON) -> JSON:
        """Makes the event and POSTs it (in the background) to every webhook subscribed to its type."""
        event = self.make_event(event_type, resource_type, orjson.loads(orjson.dumps(resource)))
        with self.lock:
            targets = [w for w in self.webhooks.values() if w.wants(event_type)]
        for webhook in targets:
            headers, body = self.sign(webhook.id, event)
            delivery = Delivery(webhook.id, webhook.url, event, headers, body)
            with self.lock:
                self.deliveries.append(delivery)
            self._schedule(delivery)
        return event

    def _schedule(self, delivery: Delivery) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            delivery.error = "not serving"
            return

        def start() -> None:
            task = loop.create_task(self._deliver(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            start()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(start)

    async def _deliver(self, delivery: Delivery) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._session.post(delivery.url, data=delivery.body, headers=delivery.headers) as response:
                await response.read()
                delivery.status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"

    async def _verify_signature(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        required = ("auth_algo", "cert_url", "transmission_id", "transmission_sig", "transmission_time",
                    "webhook_id", "webhook_event")
        for name in required:
            if name not in body or body[name] in (None, ""):
                raise PayPalError(400, "VALIDATION_ERROR", "Invalid request - see details", "MISSING_REQUIRED_FIELD"
                                  if name not in body else "INVALID_PARAMETER_VALUE", f"/{name}",
                                  "webhooks/v1")
        with self.lock:
            sent = self.transmissions.get(str(body["transmission_id"]))
        ok = (
            sent is not None
            and body["webhook_id"] == sent.webhook_id
            and body["transmission_time"] == sent.time
            and body["transmission_sig"] == sent.sig
            and body["cert_url"] == sent.cert_url
            and body["auth_algo"] == AUTH_ALGO
            and body["webhook_event"] == sent.event
            and self.signer.verify(signed_message(str(body["transmission_id"]), sent.time,
                                                  str(body["webhook_id"]), sent.body), str(body["transmission_sig"]))
        )
        return json_response({"verification_status": "SUCCESS" if ok else "FAILURE"})

    async def _get_event(self, request: web.Request) -> web.Response:
        with self.lock:
            event = self.events.get(request.match_info["id"])
        if event is None:
            raise not_found("webhooks/v1")
        return json_response(event)

    async def _cert(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != self.signer.cert_name:
            return web.Response(status=404)
        return web.Response(body=self.signer.cert_pem, content_type="application/x-pem-file")
