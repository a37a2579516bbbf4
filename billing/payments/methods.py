"""Checks on a payment method id before anything is stored or sent: the shape each provider's ids have, and no
card number, ever.

`check_method_id(provider, value)` returns the id (stripped) or raises InvalidInput:
- `card_number_refused`: the value is, or contains, 12 to 19 digits in a row (spaces or dashes allowed between
  them), which is what a card number looks like. The message never repeats the value, so the number reaches no
  provider, log, audit entry or error output.
- `bad_payment_method`: not the provider's id format. Stripe: `pm_` and letters, digits or `_` (the id of a
  PaymentMethod made by a SetupIntent or Stripe.js). PayPal: a Vault v3 payment token id (letters, digits, `-`,
  `_`, up to 36), optionally as `card:<id>`, the form a vaulted card is stored in.
"""

from __future__ import annotations

import re

from billing.errors import InvalidInput

CARD_NUMBER_RE = re.compile(r"(?<!\d)\d(?:[ \-]?\d){11,18}(?!\d)")   # 12-19 digits, single spaces/dashes between
STRIPE_METHOD_RE = re.compile(r"^pm_[A-Za-z0-9_]{1,252}$")
PAYPAL_METHOD_RE = re.compile(r"^(card:)?[A-Za-z0-9_\-]{1,36}$")
FORMATS = {"stripe": (STRIPE_METHOD_RE, "a Stripe PaymentMethod id, pm_... (from a SetupIntent or Stripe.js)"),
           "paypal": (PAYPAL_METHOD_RE, "a PayPal vault id (payment method token)")}


def looks_like_card_number(value: str) -> bool:
    """True when `value` holds 12 to 19 digits in a row, single spaces or dashes allowed between them."""
    return CARD_NUMBER_RE.search(value) is not None


def check_method_id(provider: str, value: str) -> str:
    """The payment method id, stripped; InvalidInput (card_number_refused, bad_payment_method) otherwise."""
    if not isinstance(value, str):
        raise InvalidInput("A payment method is the provider's id, e.g. pm_...", code="bad_payment_method")
    if looks_like_card_number(value):
        raise InvalidInput("This looks like a card number: card numbers are never accepted, stored or sent. Add "
                           "the card with a SetupIntent (Stripe.js) and give its payment method id (pm_...).",
                           code="card_number_refused")
    value = value.strip()
    pattern, shape = FORMATS.get(provider, (None, ""))
    if pattern is None:
        raise InvalidInput(f"Payment methods by id are added for {', '.join(FORMATS)}.", code="bad_provider")
    if not pattern.match(value):
        raise InvalidInput(f"A {provider} payment method is {shape}.", code="bad_payment_method")
    return value
