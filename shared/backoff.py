"""Exponential backoff with jitter: one rule for every retry Spool makes (upstream
requests, upstream polls, webhook deliveries)."""

from __future__ import annotations

import random


def jittered_backoff(base_s: float, max_s: float, attempt: int) -> float:
    """The wait before retry `attempt` (1 for the first): `base_s` doubled per attempt, capped
    at `max_s`, then drawn from its upper half so that clients retrying together spread."""
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)
