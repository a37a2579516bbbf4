"""The management API's settings, read once from the environment.

- AIHUB_OPERATOR_TOKEN: the operator's bearer token (at least 24 characters). Unset: no operator access over HTTP
  (the `aihub` CLI still works). `make up` makes one for its run and prints it.
- AIHUB_PUBLIC_URL: the address customers reach the dashboard at, used in invitation emails (default: the
  gateway's address).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from billing.errors import InvalidInput
from billing.notifications_settings import SmtpSettings


@dataclass(frozen=True)
class ApiSettings:
    operator_token: str | None
    public_url: str
    smtp: SmtpSettings | None = None      # invitations are emailed when set (SMTP_HOST, ...)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if environ is None else environ
        token = env.get("AIHUB_OPERATOR_TOKEN") or None
        if token is not None and (len(token) < 24 or not token.isprintable() or " " in token):
            raise InvalidInput("AIHUB_OPERATOR_TOKEN: at least 24 printable characters, no spaces.",
                               code="bad_setting")
        default_url = f"http://{env.get('AIHUB_HOST', '127.0.0.1')}:{env.get('AIHUB_PORT', '8080')}"
        return cls(token, env.get("AIHUB_PUBLIC_URL", default_url).rstrip("/"), SmtpSettings.from_env(env))
