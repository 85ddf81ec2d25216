"""The rail circuit breaker: every transition, driven by an explicit clock."""

from __future__ import annotations

import pytest

from orchestrator.circuit_breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from orchestrator.tenants import BreakerConfig

CONFIG = BreakerConfig(window_s=10, min_calls=4, failure_rate_threshold=0.5, slow_call_ms=1_000,
                       slow_call_rate_threshold=0.75, open_s=5, half_open_probes=2)


def tripped(now: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker(CONFIG, now)
    for failed in (False, True, False, True):
        assert breaker.acquire(now)
        breaker.record(now, failed=failed, duration_s=0.01)
    assert breaker.state == OPEN
    return breaker


def test_stays_closed_below_min_calls_whatever_the_failures():
    breaker = CircuitBreaker(CONFIG, 0.0)
    for _ in range(3):
        assert breaker.acquire(0.0)
        assert breaker.record(0.0, failed=True, duration_s=0.01) is None
    assert breaker.state == CLOSED


def test_opens_at_the_failure_rate_and_refuses_calls_until_open_s():
    breaker = tripped()
    assert breaker.trips == 1
    assert not breaker.acquire(1.0)
    assert breaker.retry_at(1.0) == pytest.approx(5.0)
    assert not breaker.acquire(4.99)


def test_below_the_failure_rate_it_stays_closed():
    breaker = CircuitBreaker(CONFIG, 0.0)
    for failed in (False, True, False, False, False, True, False, False):
        breaker.acquire(0.0)
        breaker.record(0.0, failed=failed, duration_s=0.01)
    assert breaker.state == CLOSED


def test_old_outcomes_leave_the_window():
    breaker = CircuitBreaker(CONFIG, 0.0)
    for _ in range(3):
        breaker.record(0.0, failed=True, duration_s=0.01)
    # 20 s later the three failures are out of the 10 s window: one more is not enough.
    breaker.record(20.0, failed=True, duration_s=0.01)
    assert breaker.state == CLOSED
    assert breaker.snapshot(20.0).calls == 1


def test_slow_calls_open_it_even_when_all_succeed():
    breaker = CircuitBreaker(CONFIG, 0.0)
    changes = [breaker.record(0.0, failed=False, duration_s=1.5) for _ in range(4)]
    assert changes == [None, None, None, OPEN]


def test_half_open_lets_exactly_the_probes_through_and_closes_when_they_succeed():
    breaker = tripped()
    assert breaker.acquire(5.0) and breaker.state == HALF_OPEN
    assert breaker.acquire(5.0)
    assert not breaker.acquire(5.0), "only half_open_probes calls while half-open"
    assert breaker.record(5.1, failed=False, duration_s=0.01) is None
    assert breaker.record(5.1, failed=False, duration_s=0.01) == CLOSED
    assert breaker.acquire(5.2)


@pytest.mark.parametrize("failed, duration_s", [(True, 0.01), (False, 2.0)])
def test_a_failed_or_slow_probe_reopens_it(failed, duration_s):
    breaker = tripped()
    assert breaker.acquire(6.0)
    assert breaker.record(6.5, failed=failed, duration_s=duration_s) == OPEN
    assert breaker.trips == 2
    assert breaker.retry_at(7.0) == pytest.approx(11.5)


def test_outcomes_of_calls_started_before_it_opened_change_nothing():
    breaker = tripped()
    assert breaker.record(1.0, failed=False, duration_s=0.01) is None
    assert breaker.state == OPEN
