"""Webhook URLs reach public endpoints only: no cloud metadata, localhost or private ranges, however spelled."""

from __future__ import annotations

import pytest

from billing.errors import InvalidInput
from billing.webhook_urls import check_resolved, check_url


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8080/x", "http://localhost/x",
    "http://10.0.0.5/x", "http://[::1]/x", "http://0x7f000001/x", "http://2130706433/x", "http://127.1/x",
    "http://192.168.1.10/h", "http://[fd00::1]/h", "http://metadata.google.internal/x", "http://printer.local/x",
    "http://intranet/x", "https://user:pass@example.com/h", "https://exa mple.com/x",
    "http://example.com/a\r\nX-Injected: 1", "https://example.com:99999/h", "file:///etc/passwd",
    "javascript:alert(1)", "gopher://example.com/", "", "https://example.com/" + "a" * 2000,
])
def test_refused(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_url(url, private_ok=False)
    assert caught.value.code == "bad_webhook_url"


@pytest.mark.parametrize("url", ["https://hooks.example.com/aihub", "http://93.184.215.14:8443/in",
                                 "https://[2606:4700::1111]/h"])
def test_public_urls_are_accepted(url: str) -> None:
    assert check_url(url, private_ok=False) == url


def test_a_name_resolving_to_a_private_address_is_refused_at_delivery() -> None:
    with pytest.raises(OSError, match="non-public"):
        check_resolved("http://localhost:9/x", private_ok=False)
    check_resolved("http://localhost:9/x", private_ok=True)
