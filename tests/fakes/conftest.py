"""Fixtures: the session's fake upstream (tests/conftest.py), reset before every test."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from fakes.openai_upstream import FakeUpstream
from tests.fakes.support import API_KEY


@pytest.fixture
def fake(fake_upstream: FakeUpstream) -> FakeUpstream:
    return fake_upstream


@pytest.fixture
def url(fake: FakeUpstream) -> str:
    fake.reset()
    return fake.url


@pytest.fixture
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=5) as sdk:
        yield sdk
