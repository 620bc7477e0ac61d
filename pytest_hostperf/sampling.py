"""Thinning raw samples to a bounded, evenly spaced subset. Stdlib only: the agent uses it."""

from __future__ import annotations

from typing import Sequence


def thin(samples: Sequence[float], limit: int) -> list[float]:
    """At most ``limit`` samples, evenly spaced in measurement order (drift stays visible)."""
    if len(samples) <= limit:
        return list(samples)
    step = len(samples) / limit
    return [samples[int(i * step)] for i in range(limit)]
