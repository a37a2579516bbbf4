"""A fake of the PayPal REST endpoints billing uses, for tests (`FakePayPal().start()`, or `python -m fakes.paypal`).

Wire contract (shapes as in PayPal's API reference; ids are 17 upper-case letters/digits like PayPal's):

- `POST /v1/oauth2/token`: Basic auth with the client id and secret, form `grant_type=client_credentials` →
  {scope, access_token, token_type: "Bearer", app_id, expires_in, nonce}; bad credentials → 401
  {error: "invalid_client"}. Every other API call needs `Authorization: Bearer <token>`: missing → 401
  AUTHENTICATION_FAILURE, unknown or expired (`expire_tokens()`) → 401 {error: "invalid_token"}.
- `POST /v2/checkout/orders`: intent CAPTURE, one purchase unit {reference_id, amount {currency_code, value as a
  decimal string}, invoice_id, custom_id, description}, payment_source {paypal|card|venmo: {vault_id}} or
  {token: {id, type}} naming a vaulted instrument (`add_payment_token()`; unknown → 422 TOKEN_ID_NOT_FOUND).
  With a vaulted source the order is captured by this call (single-step, status COMPLETED, 201) unless the fake
  was made with capture_on_create=False (then APPROVED, captured by `POST .../{id}/capture`). Without a
  source: CREATED with a payer-action link (not approvable here: capture → 422 ORDER_NOT_APPROVED).
  Validation: 400 INVALID_REQUEST (MISSING_REQUIRED_PARAMETER, INVALID_PARAMETER_VALUE, DECIMAL_PRECISION: at
  most 2 decimals, none for HUF/JPY/TWD), 422 CURRENCY_NOT_SUPPORTED, CANNOT_BE_ZERO_OR_NEGATIVE.
  An instrument made with issue=... is refused: 422 UNPROCESSABLE_ENTITY, details[0].issue = that issue
  (e.g. INSTRUMENT_DECLINED). A second capture for an invoice_id already paid → 422 DUPLICATE_INVOICE_ID.
- `POST /v2/checkout/orders/{id}/capture` → 201, status COMPLETED, purchase_units[0].payments.captures[0]
  {id, status COMPLETED (PENDING with status_details.reason PENDING_REVIEW for a pending instrument), amount,
  final_capture, seller_protection, seller_receivable_breakdown, invoice_id, custom_id, links}; a second
  capture → 422 ORDER_ALREADY_CAPTURED.
- `POST /v2/payments/captures/{id}/refund` {amount?} (none: the rest of the capture) → 201 {id, status
  COMPLETED, amount, seller_payable_breakdown.total_refunded_amount, ...}; more than is left → 422
  REFUND_AMOUNT_EXCEEDED, nothing left → 422 CAPTURE_FULLY_REFUNDED. The capture becomes PARTIALLY_REFUNDED or
  REFUNDED.
- `GET /v2/checkout/orders/{id}`, `/v2/payments/captures/{id}`, `/v2/payments/refunds/{id}`,
  `/v3/vault/payment-tokens/{id}`, `/v1/notifications/webhooks-events/{id}`; unknown → 404 RESOURCE_NOT_FOUND.
  A capture read on its own (GET, webhook resources) carries `supplementary_data.related_ids.order_id`, as
  PayPal's does. A PENDING capture clears with `complete_pending()` (COMPLETED) or `decline_pending()` (DECLINED),
  each sending its webhook event; polling the capture shows the new status.
- `Prefer: return=representation` gives the full resource on POSTs; the default is PayPal's minimal
  {id, status, links}.
- `PayPal-Request-Id` on a POST: a repeat with the same id (same method and path) gets the first answer again,
  errors included, and changes nothing.
- `PayPal-Mock-Response: {"mock_application_codes": "ISSUE"}` (PayPal's sandbox negative testing) → 422 ISSUE.
- Webhooks (`add_webhook(url, event_types)`): PAYMENT.CAPTURE.COMPLETED / PENDING / REFUNDED are POSTed to
  every subscribed URL with PAYPAL-TRANSMISSION-ID, -TIME, -SIG, PAYPAL-CERT-URL and PAYPAL-AUTH-ALGO
  (SHA256withRSA over "id|time|webhook_id|crc32(body)", with the fake's own key; its certificate is served at the
  cert URL). `POST /v1/notifications/verify-webhook-signature` answers {verification_status: SUCCESS} only for a
  transmission the fake really sent, with the same webhook_id, headers and event; otherwise FAILURE.
"""

from fakes.paypal.app import Delivery, PaymentToken, PayPalApp
from fakes.paypal.server import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakePayPal

__all__ = ["DEFAULT_CLIENT_ID", "DEFAULT_CLIENT_SECRET", "Delivery", "FakePayPal", "PayPalApp", "PaymentToken"]
