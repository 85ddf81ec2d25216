"""How the flow is keeping up, as tracking sees it, and the intake's admission rule.

Tracking sees every event of every payment, so it knows how many payments are in flight
(received, not yet terminal, not waiting for a person) and how long the payments that
just ended took from `PaymentReceived` to their terminal event, by the product's own
timestamps. It writes that as one row (`FlowHealth`) a few times a second; the intake
reads the row and refuses new payments with 503 and `Retry-After` while the flow cannot
give them a fair chance to meet their rail's time limit. Refusing before accepting is
the point: a payment accepted into a queue that outlasts its scheme's deadline ends
FAILED, which is worse for the payer than a clear "try again in a second".

Both halves are pure (time comes in as arguments) so they are tested without a broker.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime

# The latency figure is the 90th percentile of the payments that ended in this window.
LATENCY_WINDOW_S = 5.0
# At most this many recent latencies are kept for the percentile (memory is bounded
# whatever the rate).
_LATENCY_SAMPLES_MAX = 20_000
# Payments whose received time tracking remembers for their latency; past this (a
# flood of payments that never end) the oldest are forgotten and count as in flight only.
# A payment that ended before its PaymentReceived arrived leaves an entry until then.
_RECEIVED_MAX = 500_000


@dataclass(frozen=True)
class FlowHealth:
    """One reading: what the intake's admission rule needs."""

    in_flight: int
    latency_p90_s: float | None  # of the payments that ended in the last window; None if none did
    tracking_lag_s: float  # how far behind tracking itself is (the newest event's age when recorded)
    measured_at: float  # epoch seconds


class FlowHealthMeter:
    """Tracking's running account of payments in flight and the latency of those ending."""

    def __init__(self, in_flight: int = 0) -> None:
        self.in_flight = in_flight
        self._received_at: dict[str, float] = {}
        self._ended: deque[tuple[float, float]] = deque(maxlen=_LATENCY_SAMPLES_MAX)  # (ended at, latency)
        self._newest_event_at = 0.0
        self._lag_s = 0.0  # how old the newest event was when tracking recorded it

    def entered(self, payment_id: str, first_seen_at: float) -> None:
        """A payment got its first status (its `PaymentReceived` time, if known, stays)."""
        self.in_flight += 1
        self._remember(payment_id, self._received_at.get(payment_id, first_seen_at))

    def received(self, payment_id: str, received_at: float) -> None:
        """The `PaymentReceived` time of a payment, whenever its event arrives."""
        self._remember(payment_id, received_at)

    def _remember(self, payment_id: str, received_at: float) -> None:
        if payment_id not in self._received_at and len(self._received_at) >= _RECEIVED_MAX:
            self._received_at.pop(next(iter(self._received_at)))
        self._received_at[payment_id] = received_at

    def left(self, payment_id: str, ended_at: float) -> None:
        """A payment reached a terminal status, or HELD (it then waits for a person)."""
        self.in_flight = max(0, self.in_flight - 1)
        received_at = self._received_at.pop(payment_id, None)
        if received_at is not None:
            self._ended.append((ended_at, max(0.0, ended_at - received_at)))

    def saw(self, occurred_at: float, recorded_at: float) -> None:
        """Tracking recorded an event that occurred at `occurred_at`, at `recorded_at`.

        Tracking is behind by the age of the newest event when it records it. Measured
        against the reading's time instead, a quiet flow looked further behind with every
        idle second, and the intake refused the first payment after a pause.
        """
        if occurred_at >= self._newest_event_at:
            self._newest_event_at = occurred_at
            self._lag_s = max(0.0, recorded_at - occurred_at)

    def reading(self, now: float) -> FlowHealth:
        while self._ended and self._ended[0][0] < now - LATENCY_WINDOW_S:
            self._ended.popleft()
        latencies = sorted(latency for _, latency in self._ended)
        p90 = latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))] if latencies else None
        return FlowHealth(in_flight=self.in_flight, latency_p90_s=p90, tracking_lag_s=self._lag_s, measured_at=now)


@dataclass(frozen=True)
class Shed:
    """The intake's refusal: why, and when to try again."""

    reason: str
    retry_after_s: int


def admission(health: FlowHealth | None, *, accepted_since_reading: int, time_limit_s: float, now: float,
              max_in_flight: int, latency_fraction: float, stale_after_s: float) -> Shed | None:
    """None to admit the payment, or why not.

    `time_limit_s` is the tightest time limit of the tenant's rails: while payments take
    more than `latency_fraction` of it end to end (or tracking, which measures that, is
    itself that far behind), a new payment would queue behind them past a fair chance.
    `max_in_flight` is the hard bound on the queue whatever the latency says. A reading
    older than `stale_after_s` (tracking down or not started) admits: payments flow
    without tracking, and refusing them all would turn a monitoring fault into an outage.
    """
    if health is None or now - health.measured_at > stale_after_s:
        return None
    budget_s = latency_fraction * time_limit_s
    retry_after_s = max(1, min(30, round(budget_s / 2)))
    if health.in_flight + accepted_since_reading >= max_in_flight:
        return Shed(f"{health.in_flight + accepted_since_reading} payments in flight (limit {max_in_flight})",
                    retry_after_s)
    if health.latency_p90_s is not None and health.latency_p90_s > budget_s:
        return Shed(f"payments take {health.latency_p90_s:.1f} s end to end (p90), over {budget_s:.1f} s "
                    f"({latency_fraction:.0%} of the {time_limit_s:g} s rail time limit)", retry_after_s)
    if health.tracking_lag_s > budget_s:
        return Shed(f"the flow is {health.tracking_lag_s:.1f} s behind", retry_after_s)
    return None


def epoch_s(moment: datetime | str) -> float:
    return (datetime.fromisoformat(moment) if isinstance(moment, str) else moment).timestamp()
