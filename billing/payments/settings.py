"""Payment settings read once from the environment (providers read their own: stripe_provider, paypal_provider).

- `AIHUB_PAYMENT_ACTION_URL`: the operator's page where a customer confirms a payment their bank or PayPal asks
  them to authenticate, with `{invoice}` where the invoice number goes (e.g.
  `https://billing.example.com/pay/{invoice}`); the page gets the PaymentIntent's client secret from
  `PaymentService.pending_action(number)` and confirms it with Stripe.js. Used when the provider gives no page of
  its own (PayPal does: its payer-action link). Unset: the notification tells the customer to add another
  payment method or ask for a link.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import ConfigError
from gateway.settings import environment


@dataclass(frozen=True)
class PaymentSettings:
    action_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PaymentSettings:
        env = environment(environ)
        url = (env.get("AIHUB_PAYMENT_ACTION_URL") or "").strip() or None
        if url is not None and (not url.startswith(("https://", "http://")) or "{invoice}" not in url
                                or len(url) > 1900 or not url.isprintable() or " " in url):
            raise ConfigError(f"AIHUB_PAYMENT_ACTION_URL={url[:100]!r} must be an http(s) URL containing {{invoice}}, "
                              "e.g. https://billing.example.com/pay/{invoice}")
        return cls(action_url=url)
