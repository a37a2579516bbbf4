"""The request-header allow-list: what the proxy reads and what it would forward."""

from __future__ import annotations

import pytest

from gateway.errors import HeadersTooLarge
from gateway.headers import FORWARDED, MAX_FORWARDED_VALUE, MAX_HEADERS, encoded, read_headers

ALLOWED = encoded(FORWARDED)


@pytest.mark.parametrize("value", [b"a\x01b", b"a\x7fb", b"a\x1bb", b"a\rb", b"a\nb", b"a\x00b"])
def test_a_value_with_a_control_character_is_not_forwarded(value: bytes) -> None:
    found = read_headers([(b"openai-beta", value), (b"accept-language", b"en\tGB")], ALLOWED)
    assert found.forwarded == {b"accept-language": b"en\tGB"}


def test_allowed_headers_are_forwarded_and_others_are_not() -> None:
    found = read_headers([(b"authorization", b"Bearer sk-1"), (b"cookie", b"a=1"), (b"user-agent", b"sdk/1 \xc3\xa9"),
                          (b"x-api-key", b"k"), (b"content-length", b"12"), (b"authorization", b"Bearer sk-2")],
                         ALLOWED)
    assert found.authorization == b"Bearer sk-1" and found.content_length == b"12"
    assert found.forwarded == {b"user-agent": b"sdk/1 \xc3\xa9"}


def test_a_value_longer_than_the_limit_is_not_forwarded() -> None:
    found = read_headers([(b"user-agent", b"u" * (MAX_FORWARDED_VALUE + 1)),
                          (b"openai-beta", b"b" * MAX_FORWARDED_VALUE)], ALLOWED)
    assert found.forwarded == {b"openai-beta": b"b" * MAX_FORWARDED_VALUE}


def test_more_header_fields_than_the_limit_are_refused() -> None:
    read_headers([(b"x-a", b"1")] * MAX_HEADERS, ALLOWED)
    with pytest.raises(HeadersTooLarge) as refused:
        read_headers([(b"x-a", b"1")] * (MAX_HEADERS + 1), ALLOWED)
    assert refused.value.status == 431
