"""Payment events and their Avro wire format.

Every message is Avro single-object encoded (0xC3 0x01, the writer schema's 8-byte
CRC-64-AVRO fingerprint, then the body), so each message names its writer schema
without a registry round trip. Readers resolve any known writer version into their own
reader version by Avro schema resolution; a fingerprint that no file in `schemas/`
produces is a poison message, not a crash.

Output event ids are derived from the event that caused them (uuid5), so a stage that
handles the same input twice after a crash emits byte-identical event ids and every
consumer can drop the duplicate.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import struct
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from orchestrator.domain import Payment, payment_from_record, payment_to_record

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
FINGERPRINT_BYTES = 8
_HEADER_BYTES = len(SINGLE_OBJECT_MAGIC) + FINGERPRINT_BYTES

# Namespace for deterministic event ids; changing it would break deduplication of
# events re-emitted after a restart, so it is fixed forever.
EVENT_ID_NAMESPACE = uuid.UUID("6f0c8f7e-3b1d-4c55-9b2e-5d1f5a9a0c42")

EVENT_TYPES = (
    "PaymentReceived",
    "PaymentInitiated",
    "PaymentRejected",
    "PaymentHeld",
    "SanctionsScreened",
    "FraudScored",
    "PaymentRouted",
    "PaymentExecuted",
    "PaymentFailed",
    "FundsReserved",
    "FundsPosted",
    "FundsReleased",
    "PaymentSettled",
    "PaymentDeferred",  # since v3
)


class UndecodableEvent(ValueError):
    """Bytes that are not a payment event this process can read (a poison message)."""


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    event_type: str
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None
    tenant_id: str
    region: str
    traceparent: str | None
    stage: str
    payment: Payment
    payload: dict[str, Any] = field(default_factory=dict)
    # Wire metadata filled by the codec; two events are the same event whatever wrote them.
    schema_version: int = field(default=0, compare=False)
    # The bytes this event was decoded from or last encoded to: a stage that stores an
    # event, and the runtime that then produces it, encode it once between them. Never
    # copied by dataclasses.replace (init=False), so a changed event is encoded anew.
    wire: bytes | None = field(default=None, init=False, compare=False, repr=False)

    @property
    def payment_id(self) -> str:
        return self.payment.payment_id

    def log_context(self) -> dict[str, str]:
        """The identifiers every log line about this event carries (never account data)."""
        return {
            "payment_id": self.payment.payment_id,
            "correlation_id": self.correlation_id,
            "tenant_id": self.tenant_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
        }


def deterministic_uuid4(name: str) -> str:
    """A UUID derived from `name` but shaped as version 4.

    Payment ids double as ISO 20022 UETRs, whose pattern demands version 4; deriving
    them (instead of drawing them at random) is what makes retries idempotent.
    """
    return str(uuid.UUID(bytes=uuid.uuid5(EVENT_ID_NAMESPACE, name).bytes, version=4))


def new_traceparent() -> str:
    """A fresh W3C trace context (version 00, sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: str | None) -> str:
    """Continue the parent's trace with a new span id, or start one."""
    if parent and len(parent) == 55 and parent[2] == "-":
        return f"00-{parent[3:35]}-{secrets.token_hex(8)}-{parent[53:55]}"
    return new_traceparent()


def derive_event(
    cause: Event,
    event_type: str,
    stage: str,
    payload: dict[str, Any],
    *,
    occurred_at: datetime,
    region: str,
    payment: Payment | None = None,
    discriminator: str = "",
) -> Event:
    """An event caused by `cause`, with an id that is the same every time it is derived."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type}")
    event_id = uuid.uuid5(EVENT_ID_NAMESPACE, f"{cause.event_id}/{stage}/{event_type}/{discriminator}")
    return Event(
        event_id=str(event_id),
        event_type=event_type,
        occurred_at=occurred_at,
        correlation_id=cause.correlation_id,
        causation_id=cause.event_id,
        tenant_id=cause.tenant_id,
        region=region,
        traceparent=child_traceparent(cause.traceparent),
        stage=stage,
        payment=payment or cause.payment,
        payload=payload,
    )


def received_event(
    payment: Payment, *, channel: str, idempotency_key: str | None, occurred_at: datetime, region: str
) -> Event:
    """The first event of a payment's life, written by the intake."""
    return Event(
        event_id=str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{payment.payment_id}/received")),
        event_type="PaymentReceived",
        occurred_at=occurred_at,
        correlation_id=payment.payment_id,
        causation_id=None,
        tenant_id=payment.tenant_id,
        region=region,
        traceparent=new_traceparent(),
        stage="intake",
        payment=payment,
        payload={"channel": channel, "idempotency_key": idempotency_key},
    )


@dataclass(frozen=True)
class SchemaVersion:
    version: int
    parsed: dict
    fingerprint: bytes


class SchemaFamily:
    """Every version of one Avro schema family in `schemas/` (`<family>.v<N>.avsc`), and
    its single-object encoding: 0xC3 0x01, the writer's CRC-64-AVRO fingerprint
    (little-endian, as the spec stores it), then the body. Payment events and settlement
    cycle events are two families; their fingerprints tell them apart in the bytes."""

    def __init__(self, schemas_dir: Path, family: str, *, writer_version: int | None = None,
                 reader_version: int | None = None) -> None:
        self.family = family
        pattern = re.compile(rf"^{re.escape(family)}\.v(\d+)\.avsc$")
        self._versions: dict[int, SchemaVersion] = {}
        for path in sorted(schemas_dir.glob(f"{family}.v*.avsc")):
            match = pattern.match(path.name)
            if not match:
                continue
            version = int(match.group(1))
            parsed = parse_schema(json.loads(path.read_text(encoding="utf-8")), _force=True)
            raw_fp = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
            self._versions[version] = SchemaVersion(version, parsed, struct.pack("<Q", int(raw_fp, 16)))
        if not self._versions:
            raise FileNotFoundError(f"no {family}.v*.avsc schemas in {schemas_dir}")
        latest = max(self._versions)
        self.writer = self._versions[writer_version or latest]
        self.reader = self._versions[reader_version or latest]
        self._by_fingerprint = {v.fingerprint: v for v in self._versions.values()}

    @cached_property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._versions))

    def schema(self, version: int) -> dict:
        return self._versions[version].parsed

    def knows(self, data: bytes) -> bool:
        """Whether `data` was written by a schema of this family (by its fingerprint)."""
        return data[:2] == SINGLE_OBJECT_MAGIC and data[2:_HEADER_BYTES] in self._by_fingerprint

    def writer_version_of(self, data: bytes) -> int:
        if len(data) < _HEADER_BYTES or data[:2] != SINGLE_OBJECT_MAGIC:
            raise UndecodableEvent("not Avro single-object encoded (missing C3 01 marker)")
        writer = self._by_fingerprint.get(data[2:_HEADER_BYTES])
        if writer is None:
            raise UndecodableEvent(f"unknown {self.family} writer schema fingerprint {data[2:_HEADER_BYTES].hex()}")
        return writer.version

    def write(self, record: dict) -> bytes:
        buffer = io.BytesIO()
        buffer.write(SINGLE_OBJECT_MAGIC)
        buffer.write(self.writer.fingerprint)
        fastavro.schemaless_writer(buffer, self.writer.parsed, record)
        return buffer.getvalue()

    def read(self, data: bytes) -> tuple[int, dict]:
        """(writer version, record resolved into the reader version); UndecodableEvent if not."""
        writer = self._versions[self.writer_version_of(data)]
        # Schema resolution only between two versions: with the reader's own schema it
        # would only cost time (about 6 % of a decode).
        reader_schema = None if writer is self.reader else self.reader.parsed
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(data[_HEADER_BYTES:]), writer.parsed, reader_schema,
                return_record_name=True, return_record_name_override=True)
        except Exception as exc:  # fastavro raises several types for corrupt bodies
            raise UndecodableEvent(f"corrupt Avro body for {self.family} schema v{writer.version}: {exc!r}") from exc
        payload_name, _ = split_union(record["payload"])
        if payload_name != record["event_type"]:
            raise UndecodableEvent(f"payload {payload_name} does not match event_type {record['event_type']}")
        return writer.version, record


class EventCodec(SchemaFamily):
    """Payment events: encodes with one writer version and decodes every version found
    in `schemas/`. Schemas are parsed once at construction and reused."""

    def __init__(self, schemas_dir: Path, *, writer_version: int | None = None, reader_version: int | None = None):
        super().__init__(schemas_dir, "payment_event", writer_version=writer_version, reader_version=reader_version)

    def event_types(self, version: int) -> frozenset[str]:
        """The payload types a version knows; an older reader cannot decode newer types."""
        payload = next(f for f in self._versions[version].parsed["fields"] if f["name"] == "payload")
        return frozenset(branch["name"].rsplit(".", 1)[-1] for branch in payload["type"])

    def schema(self, version: int) -> dict:
        return self._versions[version].parsed

    def encode(self, event: Event) -> bytes:
        if event.wire is not None and event.wire[2:_HEADER_BYTES] == self.writer.fingerprint:
            return event.wire
        data = self._encode(event)
        object.__setattr__(event, "wire", data)
        return data

    def _encode(self, event: Event) -> bytes:
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
            "payment": payment_to_record(event.payment),
            # The union branch is named explicitly so no guessing by shape can pick a
            # wrong record whose fields happen to fit.
            "payload": (f"payorch.events.{event.event_type}", event.payload),
        }
        return self.write(record)

    def decode(self, data: bytes) -> Event:
        version, record = self.read(data)
        _, payload = split_union(record["payload"])
        event_type = record["event_type"]
        occurred_at = record["occurred_at"]
        event = Event(
            event_id=str(record["event_id"]),
            event_type=event_type,
            occurred_at=occurred_at if occurred_at.tzinfo else occurred_at.replace(tzinfo=UTC),
            correlation_id=record["correlation_id"],
            causation_id=record["causation_id"],
            tenant_id=record["tenant_id"],
            region=record["region"],
            traceparent=record["traceparent"],
            stage=record["stage"],
            payment=payment_from_record(record["payment"]),
            payload=payload,
            schema_version=version,
        )
        object.__setattr__(event, "wire", data)
        return event


def split_union(value: Any) -> tuple[str, dict]:
    if isinstance(value, tuple):
        name, body = value
        return name.rsplit(".", 1)[-1], body
    raise UndecodableEvent("payload union without a record name")


def utc_now() -> datetime:
    return datetime.now(UTC)
