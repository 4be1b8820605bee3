"""Pauses for following work that runs on another node through the shared store.

A node waiting for another node's OCR result, document or task state has nothing to
be woken by: it reads the shared store again after a pause. The pause grows (by half
each time, up to `max_pause`) so that many waiters do not become many Redis reads per
second each, and the polling ends at `deadline` (time.monotonic()) when one is given.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

FIRST_PAUSE_S = 0.05
MAX_PAUSE_S = 0.5


async def poll_pauses(
    deadline: float | None = None,
    first_pause: float = FIRST_PAUSE_S,
    max_pause: float = MAX_PAUSE_S,
    *,
    now: bool = False,
) -> AsyncIterator[None]:
    """Yield after each pause (the caller reads the store then) until `deadline` passes; with
    `now`, also once at once, before the first pause (the first read)."""
    if now:
        yield
    pause = first_pause
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        await asyncio.sleep(pause if remaining is None else min(pause, remaining))
        pause = min(pause * 1.5, max_pause)
        yield
