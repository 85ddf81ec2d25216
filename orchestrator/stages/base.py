"""What every stage shares: its tenants, its region, and how it derives events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from orchestrator.domain import Payment
from orchestrator.events import Event, derive_event
from orchestrator.tenants import TenantConfig


class Stage:
    name: str = ""
    input_topics: tuple[str, ...] = ()
    input_event_types: frozenset[str] | None = None

    def __init__(self, tenants: dict[str, TenantConfig], region: str) -> None:
        self.tenants = tenants
        self.region = region

    def emit(
        self,
        cause: Event,
        event_type: str,
        payload: dict[str, Any],
        now: datetime,
        *,
        payment: Payment | None = None,
        discriminator: str = "",
    ) -> Event:
        return derive_event(cause, event_type, self.name, payload, occurred_at=now, region=self.region,
                            payment=payment, discriminator=discriminator)

    def tenant(self, event: Event) -> TenantConfig:
        try:
            return self.tenants[event.tenant_id]
        except KeyError:
            # An event for a tenant this process has no file for is a configuration
            # fault, not a business outcome: the runtime dead-letters it.
            raise LookupError(f"no configuration for tenant {event.tenant_id!r}") from None

    def handle_batch(self, events: Sequence[Event], now: datetime) -> list[Event]:
        return [out for event in events for out in self.handle(event, now)]

    def handle(self, event: Event, now: datetime) -> list[Event]:
        raise NotImplementedError

    def tick(self, now: datetime) -> list[Event]:
        return []

    def close(self) -> None:
        pass
