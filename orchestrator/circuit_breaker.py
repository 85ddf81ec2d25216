"""A circuit breaker per rail: pure state, an injected clock, no I/O.

closed    every call goes through; outcomes are counted over a sliding window of
          `window_s`. With at least `min_calls` in the window, a failure rate at or
          above `failure_rate_threshold`, or a slow-call rate at or above
          `slow_call_rate_threshold`, opens the breaker.
open      no call goes through until `open_s` has passed; callers wait (the execution
          stage parks their payments in retry topics until `retry_at`).
half_open up to `half_open_probes` calls go through; if they all succeed (and are not
          slow) the breaker closes, and the first failure re-opens it.

Resilience libraries for Python (pybreaker, aiobreaker) count consecutive failures only;
a rate over a window, slow calls and a bounded number of probes are what a clearing
connection needs, and the whole machine is small enough to own and test exhaustively.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from orchestrator.tenants import BreakerConfig

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    state: str
    since_s: float
    retry_at_s: float | None
    calls: int
    failure_rate: float
    slow_rate: float
    trips: int


class CircuitBreaker:
    def __init__(self, config: BreakerConfig, now_s: float) -> None:
        self.config = config
        self.state = CLOSED
        self.since_s = now_s
        self.trips = 0
        # (time, failed, slow) of each finished call in the window.
        self._window: deque[tuple[float, bool, bool]] = deque()
        self._probes_started = 0
        self._probes_succeeded = 0

    # -- asking -------------------------------------------------------------------------
    def retry_at(self, now_s: float) -> float | None:
        """When a call refused now may be tried; None when a call may go now."""
        self._advance(now_s)
        if self.state == CLOSED:
            return None
        if self.state == OPEN:
            return self.since_s + self.config.open_s
        if self._probes_started < self.config.half_open_probes:
            return None
        # All probes are out: ask again once they have had time to answer.
        return now_s + min(self.config.open_s, 1.0)

    def acquire(self, now_s: float) -> bool:
        """Take permission for one call; False while open or while the probes are out."""
        if self.retry_at(now_s) is not None:
            return False
        if self.state == HALF_OPEN:
            self._probes_started += 1
        return True

    def release(self) -> None:
        """Give back the permission of a call whose outcome will never be recorded (its
        batch was given up before the answer came), so a half-open breaker's probe is
        not counted as out for ever."""
        if self.state == HALF_OPEN and self._probes_started > self._probes_succeeded:
            self._probes_started -= 1

    # -- telling ------------------------------------------------------------------------
    def record(self, now_s: float, *, failed: bool, duration_s: float) -> str | None:
        """Count one finished call; the new state when this call changed it."""
        slow = duration_s * 1000 >= self.config.slow_call_ms
        before = self.state
        if self.state == HALF_OPEN:
            if failed or slow:
                self._open(now_s)
            else:
                self._probes_succeeded += 1
                if self._probes_succeeded >= self.config.half_open_probes:
                    self._close(now_s)
        elif self.state == CLOSED:
            self._window.append((now_s, failed, slow))
            self._trim(now_s)
            calls = len(self._window)
            if calls >= self.config.min_calls:
                failures = sum(1 for _, f, _ in self._window if f)
                slows = sum(1 for _, _, s in self._window if s)
                if failures / calls >= self.config.failure_rate_threshold or \
                        slows / calls >= self.config.slow_call_rate_threshold:
                    self._open(now_s)
        # Outcomes of calls that started before the breaker opened change nothing.
        return self.state if self.state != before else None

    def snapshot(self, now_s: float) -> BreakerSnapshot:
        self._advance(now_s)
        self._trim(now_s)
        calls = len(self._window)
        failures = sum(1 for _, f, _ in self._window if f)
        slows = sum(1 for _, _, s in self._window if s)
        return BreakerSnapshot(
            state=self.state, since_s=self.since_s,
            retry_at_s=self.since_s + self.config.open_s if self.state == OPEN else None,
            calls=calls, failure_rate=failures / calls if calls else 0.0,
            slow_rate=slows / calls if calls else 0.0, trips=self.trips)

    # -- transitions --------------------------------------------------------------------
    def _advance(self, now_s: float) -> None:
        if self.state == OPEN and now_s >= self.since_s + self.config.open_s:
            self.state = HALF_OPEN
            self.since_s = now_s
            self._probes_started = self._probes_succeeded = 0

    def _open(self, now_s: float) -> None:
        self.state = OPEN
        self.since_s = now_s
        self.trips += 1
        self._window.clear()

    def _close(self, now_s: float) -> None:
        self.state = CLOSED
        self.since_s = now_s
        self._window.clear()

    def _trim(self, now_s: float) -> None:
        horizon = now_s - self.config.window_s
        while self._window and self._window[0][0] < horizon:
            self._window.popleft()
