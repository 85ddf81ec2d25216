"""Admission control: the intake refuses a payment (503, `Retry-After`) that the flow
could not give a fair chance to meet its rail's time limit.

The reading comes from tracking (see orchestrator/flow_health.py): payments in flight
and how long the ones that just ended took. It is read at most every
`_READING_CACHE_S`, so the check costs a dictionary lookup per request; payments this
intake accepted since the reading count as in flight too, so a burst cannot slip past
the in-flight bound between two readings.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator.flow_health import FlowHealth, Shed, admission
from orchestrator.settings import IntakeSettings
from orchestrator.tenants import TenantConfig

_READING_CACHE_S = 0.2


class AdmissionGate:
    def __init__(self, settings: IntakeSettings, read_health: Callable[[], FlowHealth | None], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._read_health = read_health
        self._clock = clock
        self._health: FlowHealth | None = None
        self._read_at = float("-inf")
        self._accepted_since_reading = 0
        self.shed_total = 0

    def check(self, tenant: TenantConfig, payments: int = 1) -> Shed | None:
        """None to go ahead with `payments` new payments of the tenant, or the refusal."""
        if not self.settings.admission_control:
            return None
        now = self._clock()
        if now - self._read_at >= _READING_CACHE_S:
            reading = self._read_health()
            if reading is None or self._health is None or reading.measured_at != self._health.measured_at:
                self._accepted_since_reading = 0
            self._health, self._read_at = reading, now
        shed = admission(self._health, accepted_since_reading=self._accepted_since_reading + payments - 1,
                         time_limit_s=min(rail.time_limit_s for rail in tenant.rails), now=now,
                         max_in_flight=self.settings.admission_max_in_flight,
                         latency_fraction=self.settings.admission_latency_fraction,
                         stale_after_s=self.settings.admission_stale_after_s)
        if shed is not None:
            self.shed_total += payments
        return shed

    def accepted(self, payments: int) -> None:
        self._accepted_since_reading += payments
