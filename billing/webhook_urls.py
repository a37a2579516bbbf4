"""Which webhook URLs the gateway will call: public http(s) endpoints only.

A webhook URL is chosen by a customer, so it must not reach the operator's own network (cloud metadata at
169.254.169.254, localhost, private ranges, ...). `check_url` runs when the URL is set (literal addresses and
local names are refused, as are credentials, spaces, control characters and bad ports); `check_resolved` runs
before each delivery on the addresses the host name resolves to. `AIHUB_WEBHOOK_ALLOW_PRIVATE=1` lifts the address
rules (tests and a private deployment whose receivers are internal). A name that resolves to a public address
when checked and to a private one when connected (DNS rebinding) is not covered.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from urllib.parse import urlsplit

from billing.errors import InvalidInput

LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


def allow_private() -> bool:
    return os.environ.get("AIHUB_WEBHOOK_ALLOW_PRIVATE", "0") == "1"


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:                                      # 2130706433, 0x7f000001, 127.1: what inet_aton (and curl) accept
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _refused(message: str) -> InvalidInput:
    return InvalidInput(message, code="bad_webhook_url")


def check_url(url: str, *, private_ok: bool | None = None) -> str:
    """The URL if it may be called; InvalidInput (bad_webhook_url) with the reason otherwise."""
    private_ok = allow_private() if private_ok is None else private_ok
    if len(url) > 2000 or any(c.isspace() or not c.isprintable() for c in url):
        raise _refused("A webhook URL is at most 2000 characters, without spaces or control characters.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refused("A webhook URL is an http:// or https:// URL with a host.")
    if parts.username is not None or parts.password is not None:
        raise _refused("A webhook URL must not carry credentials; the payload is signed instead.")
    try:
        parts.port                         # noqa: B018 (parses it)
    except ValueError:
        raise _refused("The webhook URL's port is not a TCP port (1 to 65535).") from None
    host = parts.hostname.rstrip(".").lower()
    if private_ok:
        return url
    address = _literal_address(host.strip("[]"))
    if address is not None and not address.is_global:
        raise _refused(f"The webhook URL points at a non-public address ({address}).")
    if host == "localhost" or host.endswith(LOCAL_SUFFIXES) or (address is None and "." not in host):
        raise _refused(f"The webhook URL's host {host!r} is a local name, not a public one.")
    return url


def check_resolved(url: str, *, private_ok: bool | None = None) -> None:
    """Before a delivery: every address the host resolves to must be public (OSError otherwise, which the
    delivery records as a failed attempt)."""
    private_ok = allow_private() if private_ok is None else private_ok
    if private_ok:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for *_, sockaddr in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP):
        address = ipaddress.ip_address(sockaddr[0])
        if not address.is_global:
            raise OSError(f"refused: {host} resolves to a non-public address ({address})")
