"""What every stage shares: its tenants, its region, and how it derives events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from orchestrator.domain import Payment
from orchestrator.events import Event, derive_event
from orchestrator.tenants import TenantConfig


class Stage:
    """A stage as the runtime sees it (orchestrator/runtime/handler.py, `StageHandler`),
    with a default for everything a stage need not write."""

    name: str = ""
    input_topics: tuple[str, ...] = ()
    input_event_types: frozenset[str] | None = None
    # None: the runtime decodes the stage's messages as payment events (shared with the
    # other hosted stages) and hands it the events of hosted stages. A stage that reads
    # another schema family or keeps bodies as bytes (tracking) defines
    # `decode_message(message)`, and reads everything from Kafka.
    decode_message: Callable[[Any], Any] | None = None

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

    def published(self, outputs: list[Event]) -> None:
        """`outputs` of `tick` are committed to Kafka. A stage that keeps timer outputs
        until they are confirmed (routing's timeouts, settlement's cycles) forgets them
        here; the others have nothing to do."""

    def close(self) -> None:
        pass
