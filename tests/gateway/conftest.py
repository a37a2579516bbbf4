"""Gateway fixtures: a gateway thread on a pinned clock (the month its counters land in is known)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.quota.conftest import PinnedClock
from tests.support import GatewayThread


@pytest.fixture
def clock() -> PinnedClock:
    return PinnedClock()


@pytest.fixture
def gw(make_gateway: Any, clock: PinnedClock) -> GatewayThread:
    return make_gateway(clock=clock)
