"""Exponential backoff with jitter, as a pure function so tests can pin it."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(attempt: int, base_s: float, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before retry number `attempt` (0-based): base * 2**attempt capped at `cap_s`, then
    "equal jitter" (between half and all of it) so that many workers do not retry in step."""
    ceiling = min(cap_s, base_s * (2.0 ** min(attempt, 32)))
    return ceiling / 2 + ceiling / 2 * rand()
