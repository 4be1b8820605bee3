"""How late the event loop runs its timers: the time it spent on something it could not put down.

A timer re-armed every INTERVAL_S records how late each wake-up is. Everything the server
does for requests shares this one loop, so a late wake-up of L ms means every request,
probe and cache hit due then waited up to L ms too. /metrics exports the largest lateness
of the last minute and a histogram of all of them.
"""

from __future__ import annotations

import asyncio
import bisect

INTERVAL_S = 0.005
WINDOW_S = 60.0
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class LoopLagMonitor:
    def __init__(self, interval: float = INTERVAL_S, window: float = WINDOW_S) -> None:
        self.interval = interval
        self._half_window = window / 2
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        # The largest lateness in the current and the previous half-window: their max covers
        # between one half and one whole window.
        self._slot_start = 0.0
        self._current_max = 0.0
        self._previous_max = 0.0
        self.bucket_counts = [0] * (len(BUCKETS_S) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slot_start = loop.time()
        self._arm(loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _arm(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.record(max(0.0, now - self._due), now)
        self._arm(now)

    def record(self, late: float, now: float) -> None:
        if now - self._slot_start >= self._half_window:
            # One half-window passed: shift; two or more: the older maxima are out of the window.
            skipped = now - self._slot_start >= 2 * self._half_window
            self._previous_max = 0.0 if skipped else self._current_max
            self._current_max = 0.0
            self._slot_start = now
        self._current_max = max(self._current_max, late)
        self.bucket_counts[bisect.bisect_left(BUCKETS_S, late)] += 1
        self.count += 1
        self.total += late

    @property
    def recent_max(self) -> float:
        """The largest lateness (seconds) seen in the last half to whole window."""
        return max(self._current_max, self._previous_max)
