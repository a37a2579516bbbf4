"""Notification delivery settings, read once from the environment (like billing/settings.py).

`SMTP_HOST` (unset: email deliveries wait, pending, until it is set), `SMTP_PORT` (25), `SMTP_FROM`
(required with SMTP_HOST), optional `SMTP_USER` / `SMTP_PASSWORD` (login), `SMTP_STARTTLS` (`1`: STARTTLS
before login). A malformed value fails with the variable's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import ConfigError
from gateway.settings import environment


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 25
    sender: str = ""
    user: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SmtpSettings | None:
        """The SMTP settings, or None when SMTP_HOST is not set (email is not sent)."""
        env = environment(environ)
        host = env.get("SMTP_HOST", "").strip()
        if not host:
            return None
        port = env.get("SMTP_PORT") or "25"
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"SMTP_PORT={port!r} must be a TCP port (1 to 65535)")
        sender = env.get("SMTP_FROM", "").strip()
        if "@" not in sender:
            raise ConfigError(f"SMTP_FROM={sender!r} must be an email address (required with SMTP_HOST)")
        starttls = env.get("SMTP_STARTTLS") or "0"
        if starttls not in ("0", "1"):
            raise ConfigError(f"SMTP_STARTTLS={starttls!r} must be 0 or 1")
        return cls(host=host, port=int(port), sender=sender, user=env.get("SMTP_USER") or None,
                   password=env.get("SMTP_PASSWORD") or None, starttls=starttls == "1")
