"""Settlement cycle events and their Avro wire format.

A cycle event is about one rail's clearing cycle, not about a payment, so it cannot use
the payment envelope (which requires a whole Payment). It has its own schema family,
`schemas/settlement_cycle_event.v*.avsc`, with the same envelope fields (correlation_id is
the cycle id) and the same Avro single-object encoding as payment events, so every
message still names its writer schema. The two families' fingerprints differ, so a
reader can tell them apart from the bytes alone.

Cycle events carry their encoded bytes (`encoded`): settlement stores the bytes it
emitted and re-emits exactly those until the runtime confirms them, and the runtime
produces a cycle event through `kafka_record`, which needs no codec.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.events import EVENT_ID_NAMESPACE, SchemaFamily, new_traceparent, split_union

CYCLES_TOPIC = "cycles"
CYCLE_EVENT_TYPES = frozenset({"CycleClosed", "ReconciliationException"})
_RECORD_NAMESPACE = "payorch.cycles"


@dataclass(frozen=True, slots=True)
class CycleEvent:
    event_id: str
    event_type: str
    occurred_at: datetime
    correlation_id: str  # the cycle id
    causation_id: str | None
    tenant_id: str
    region: str
    traceparent: str | None
    stage: str
    payload: dict[str, Any] = field(default_factory=dict)
    schema_version: int = field(default=0, compare=False)
    # The bytes this event travels as, once encoded or when decoded (see module doc).
    encoded: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def cycle_id(self) -> str:
        return self.correlation_id

    @property
    def payment_id(self) -> str | None:
        """The payment a reconciliation exception is about; None for a cycle close."""
        return self.payload.get("payment_id")

    def log_context(self) -> dict[str, str]:
        context = {"cycle_id": self.correlation_id, "correlation_id": self.correlation_id,
                   "tenant_id": self.tenant_id, "event_id": self.event_id, "event_type": self.event_type}
        if self.payment_id:
            context["payment_id"] = self.payment_id
        return context

    def kafka_record(self, namer) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
        """(topic, key, value, headers) for the runtime: keyed by cycle id, so all events
        of one cycle land on one partition in the order they were emitted."""
        from orchestrator.wire import (
            HEADER_CORRELATION_ID,
            HEADER_EVENT_TYPE,
            HEADER_SCHEMA_VERSION,
            HEADER_TENANT_ID,
            HEADER_TRACEPARENT,
        )

        if self.encoded is None:
            raise ValueError(f"cycle event {self.event_id} was never encoded")
        headers = [
            (HEADER_EVENT_TYPE, self.event_type.encode()),
            (HEADER_SCHEMA_VERSION, str(self.schema_version).encode()),
            (HEADER_CORRELATION_ID, self.correlation_id.encode()),
            (HEADER_TENANT_ID, self.tenant_id.encode()),
        ]
        if self.traceparent:
            headers.append((HEADER_TRACEPARENT, self.traceparent.encode()))
        return namer.topic(self.tenant_id, CYCLES_TOPIC), self.correlation_id.encode(), self.encoded, headers


def cycle_event(
    tenant_id: str,
    cycle_id: str,
    event_type: str,
    payload: dict[str, Any],
    *,
    discriminator: str,
    occurred_at: datetime,
    region: str,
    stage: str = "settlement",
) -> CycleEvent:
    """A cycle event whose id is the same every time the same close derives it, so a
    close repeated after a crash emits duplicates that consumers drop."""
    if event_type not in CYCLE_EVENT_TYPES:
        raise ValueError(f"unknown cycle event type {event_type}")
    event_id = uuid.uuid5(EVENT_ID_NAMESPACE, f"cycle/{tenant_id}/{cycle_id}/{event_type}/{discriminator}")
    return CycleEvent(
        event_id=str(event_id), event_type=event_type, occurred_at=occurred_at, correlation_id=cycle_id,
        causation_id=None, tenant_id=tenant_id, region=region, traceparent=new_traceparent(), stage=stage,
        payload=payload,
    )


class CycleEventCodec(SchemaFamily):
    """Encodes with the newest `settlement_cycle_event.vN.avsc`, decodes every version."""

    def __init__(self, schemas_dir: Path, *, writer_version: int | None = None, reader_version: int | None = None):
        super().__init__(schemas_dir, "settlement_cycle_event", writer_version=writer_version,
                         reader_version=reader_version)

    def encode(self, event: CycleEvent) -> CycleEvent:
        """The event with its bytes (and the writer version) filled in."""
        record = {
            "event_id": event.event_id,
            "event_type": event.event_type,
            "schema_version": self.writer.version,
            "occurred_at": event.occurred_at,
            "correlation_id": event.correlation_id,
            "causation_id": event.causation_id,
            "tenant_id": event.tenant_id,
            "region": event.region,
            "traceparent": event.traceparent,
            "stage": event.stage,
            # The union branch is named, never guessed from the payload's shape.
            "payload": (f"{_RECORD_NAMESPACE}.{event.event_type}", event.payload),
        }
        return replace(event, schema_version=self.writer.version, encoded=self.write(record))

    def decode(self, data: bytes) -> CycleEvent:
        version, record = self.read(data)
        _, body = split_union(record["payload"])
        return CycleEvent(
            event_id=str(record["event_id"]),
            event_type=record["event_type"],
            occurred_at=_aware(record["occurred_at"]),
            correlation_id=record["correlation_id"],
            causation_id=record["causation_id"],
            tenant_id=record["tenant_id"],
            region=record["region"],
            traceparent=record["traceparent"],
            stage=record["stage"],
            payload={k: (_aware(v) if isinstance(v, datetime) else v) for k, v in body.items()},
            schema_version=version,
            encoded=data,
        )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
