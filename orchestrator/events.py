"""Payment events and their Avro wire format.

Every message is Avro single-object encoded (0xC3 0x01, the writer schema's 8-byte
CRC-64-AVRO fingerprint, then the body), so each message names its writer schema
without a registry round trip. Readers resolve any known writer version into their own
reader version by Avro schema resolution; a fingerprint that no file in `schemas/`
produces is a poison message, not a crash.

Output event ids are derived from the event that caused them (uuid5), so a stage that
handles the same input twice after a crash emits byte-identical event ids and every
consumer can drop the duplicate.

A payment's `payment` record is the same in every event of its life and most of each
event's bytes, so the codec encodes and decodes it once per process (`PaymentBytesCache`)
and handles only the envelope around it for the payment's later events. That is exact,
not approximate: an Avro record is the concatenation of its fields, and a value's binary
encoding is self-delimiting, so bytes that start with a known encoding of `payment` at
that field's offset decode to that same value and end where it ends.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import struct
import threading
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
    "ReviewSubmitted",  # since v4
    "PaymentReviewed",  # since v4
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
    # Where the fields after `payment` begin in `wire`, when the codec knows it.
    wire_tail_at: int | None = field(default=None, init=False, compare=False, repr=False)

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


def review_submitted_event(
    payment: Payment, *, hold_event_id: str, decision: str, reviewer: str, comment: str, credential_id: str | None,
    occurred_at: datetime, region: str,
) -> Event:
    """A reviewer's decision on a held payment, as the intake publishes it to the reviews
    topic. Its cause is the payment's `PaymentHeld`; its id is new for every submission
    (each is a decision of its own), and what routing derives from it is keyed on that id,
    so a redelivered submission is acted on once."""
    return Event(
        event_id=str(uuid.uuid4()),
        event_type="ReviewSubmitted",
        occurred_at=occurred_at,
        correlation_id=payment.payment_id,
        causation_id=hold_event_id,
        tenant_id=payment.tenant_id,
        region=region,
        traceparent=new_traceparent(),
        stage="intake",
        payment=payment,
        payload={"decision": decision, "reviewer": reviewer, "comment": comment, "credential_id": credential_id},
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


# Payments whose `payment` bytes a codec keeps (about 3 KB each): a payment's events
# pass through a process within seconds, so this covers many seconds at 1,000/s; a
# payment that fell out is decoded in full once more, nothing else.
PAYMENT_BYTES_CACHE_MAX = 8192
# Flags of every fastavro read, whole or in parts, so both give the same values: a
# union of records answers (record name, body), other unions their plain value.
_READ_FLAGS = {"return_record_name": True, "return_record_name_override": True}


@dataclass(frozen=True, slots=True)
class _CachedPayment:
    version: int
    data: bytes
    payment: Payment


class PaymentBytesCache:
    """The last encoding of each recent payment's `payment` record, by correlation id
    (the payment id), with the `Payment` it encodes. Bounded: the oldest entry goes first.
    Writes take a lock so that a codec shared by threads keeps a consistent order; a
    read needs none (one dict lookup, and an entry is never changed once made)."""

    def __init__(self, max_entries: int = PAYMENT_BYTES_CACHE_MAX) -> None:
        self._entries: dict[str, _CachedPayment] = {}
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: str) -> _CachedPayment | None:
        return self._entries.get(key)

    def put(self, key: str, entry: _CachedPayment) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = entry
            if len(self._entries) > self._max_entries:
                del self._entries[next(iter(self._entries))]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class _EnvelopeParts:
    """One schema version cut around its `payment` field: the fields before it, the
    payment record, and the fields after it, each a schema fastavro reads and writes
    alone. The three encodings, concatenated, are the envelope's encoding."""

    head: dict
    payment: dict
    tail: dict

    @classmethod
    def of(cls, raw_schema: dict) -> _EnvelopeParts | None:
        """The parts of a schema, or None when its shape does not allow the cut (then
        the codec reads and writes the whole record, as before)."""
        fields = raw_schema.get("fields", [])
        names = [f["name"] for f in fields]
        if names.count("payment") != 1 or not isinstance(fields[names.index("payment")]["type"], dict):
            return None
        at = names.index("payment")
        namespace = raw_schema.get("namespace", "")
        try:
            head = parse_schema({"type": "record", "name": "EnvelopeHead", "namespace": namespace,
                                 "fields": fields[:at]}, _force=True)
            payment = parse_schema(dict(fields[at]["type"], namespace=namespace), _force=True)
            tail = parse_schema({"type": "record", "name": "EnvelopeTail", "namespace": namespace,
                                 "fields": fields[at + 1:]}, _force=True)
        except Exception:  # fastavro raises several types; a schema it cannot cut is read whole
            return None
        return cls(head, payment, tail)


class EventCodec(SchemaFamily):
    """Payment events: encodes with one writer version and decodes every version found
    in `schemas/`. Schemas are parsed once at construction and reused."""

    def __init__(self, schemas_dir: Path, *, writer_version: int | None = None, reader_version: int | None = None,
                 keep_payments: bool = True):
        """`keep_payments=False` for a writer that only ever sees new payments (the intake):
        it encodes whole records and keeps no payment bytes."""
        super().__init__(schemas_dir, "payment_event", writer_version=writer_version, reader_version=reader_version)
        # The cut is used for the writer's own version, and for reading events of the
        # reader's version (any other writer version needs Avro schema resolution).
        self._parts: dict[int, _EnvelopeParts] = {}
        for version in {self.writer.version, self.reader.version} if keep_payments else ():
            raw = json.loads((schemas_dir / f"{self.family}.v{version}.avsc").read_text(encoding="utf-8"))
            parts = _EnvelopeParts.of(raw)
            if parts is not None:
                self._parts[version] = parts
        self.payments = PaymentBytesCache()

    def event_types(self, version: int) -> frozenset[str]:
        """The payload types a version knows; an older reader cannot decode newer types."""
        payload = next(f for f in self._versions[version].parsed["fields"] if f["name"] == "payload")
        return frozenset(branch["name"].rsplit(".", 1)[-1] for branch in payload["type"])

    def schema(self, version: int) -> dict:
        return self._versions[version].parsed

    def encode(self, event: Event) -> bytes:
        if event.wire is not None and event.wire[2:_HEADER_BYTES] == self.writer.fingerprint:
            return event.wire
        data, tail_at = self._encode(event)
        object.__setattr__(event, "wire", data)
        object.__setattr__(event, "wire_tail_at", tail_at)
        return data

    def as_read(self, event: Event) -> Event:
        """The event a reader of this codec's encoding of `event` decodes: what a hosted
        stage is handed, so it sees exactly what a consumer of the topic would. Only the
        fields after `payment` (the payload, whose defaults and types the schema decides)
        are read back from the bytes; the envelope's fields before it are strings and a
        UTC timestamp that Avro carries unchanged, and the payment is the one whose bytes
        were written. Anything else is decoded in full."""
        data = self.encode(event)
        tail_at = event.wire_tail_at
        parts = self._parts.get(self.writer.version)
        if (tail_at is None or parts is None or self.writer is not self.reader or event.occurred_at.tzinfo is not UTC
                or not _is_canonical_uuid(event.event_id)):
            return self.decode(data)
        try:
            tail = fastavro.schemaless_reader(io.BytesIO(data[tail_at:]), parts.tail, None, **_READ_FLAGS)
        except Exception as exc:  # fastavro raises several types for corrupt bodies
            raise UndecodableEvent(f"corrupt Avro body for {self.family} schema v{self.writer.version}: {exc!r}"
                                   ) from exc
        payload_name, payload = split_union(tail["payload"])
        if payload_name != event.event_type:
            raise UndecodableEvent(f"payload {payload_name} does not match event_type {event.event_type}")
        handed = Event(
            event_id=event.event_id, event_type=event.event_type, occurred_at=event.occurred_at,
            correlation_id=event.correlation_id, causation_id=event.causation_id, tenant_id=event.tenant_id,
            region=event.region, traceparent=event.traceparent, stage=event.stage, payment=event.payment,
            payload=payload, schema_version=self.writer.version)
        object.__setattr__(handed, "wire", data)
        object.__setattr__(handed, "wire_tail_at", tail_at)
        return handed

    def _encode(self, event: Event) -> tuple[bytes, int | None]:
        """The event's bytes, and where its fields after `payment` begin in them."""
        parts = self._parts.get(self.writer.version)
        if parts is None:
            return self._encode_whole(event), None
        buffer = io.BytesIO()
        buffer.write(SINGLE_OBJECT_MAGIC)
        buffer.write(self.writer.fingerprint)
        fastavro.schemaless_writer(buffer, parts.head, self._head_record(event))
        cached = self.payments.get(event.correlation_id)
        if cached is not None and cached.payment is event.payment and cached.version == self.writer.version:
            buffer.write(cached.data)
        else:
            payment_bytes = io.BytesIO()
            fastavro.schemaless_writer(payment_bytes, parts.payment, payment_to_record(event.payment))
            data = payment_bytes.getvalue()
            self.payments.put(event.correlation_id, _CachedPayment(self.writer.version, data, event.payment))
            buffer.write(data)
        tail_at = buffer.tell()
        fastavro.schemaless_writer(buffer, parts.tail, self._tail_record(event))
        return buffer.getvalue(), tail_at

    def _head_record(self, event: Event) -> dict:
        """The envelope's fields before `payment`."""
        return {
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
        }

    def _encode_whole(self, event: Event) -> bytes:
        return self.write({
            **self._head_record(event),
            "payment": payment_to_record(event.payment),
            **self._tail_record(event),
        })

    @staticmethod
    def _tail_record(event: Event) -> dict:
        """The envelope's fields after `payment`. The union branch is named explicitly so
        no guessing by shape can pick a wrong record whose fields happen to fit."""
        return {"payload": (f"payorch.events.{event.event_type}", event.payload)}

    def decode(self, data: bytes) -> Event:
        version = self.writer_version_of(data)
        parts = self._parts.get(version) if version == self.reader.version else None
        tail_at = None
        if parts is None:
            version, record = self.read(data)
            payment = payment_from_record(record["payment"])
        else:
            record, payment, tail_at = self._read_in_parts(data, version, parts)
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
            payment=payment,
            payload=payload,
            schema_version=version,
        )
        object.__setattr__(event, "wire", data)
        object.__setattr__(event, "wire_tail_at", tail_at)
        return event

    def _read_in_parts(self, data: bytes, version: int, parts: _EnvelopeParts) -> tuple[dict, Payment, int]:
        """The envelope's fields and its payment, reading the payment's bytes only when
        they are not the ones this codec last saw for the payment."""
        body = io.BytesIO(data)
        body.seek(_HEADER_BYTES)
        try:
            record = fastavro.schemaless_reader(body, parts.head, None, **_READ_FLAGS)
            start = body.tell()
            key = record["correlation_id"]
            cached = self.payments.get(key)
            if cached is not None and cached.version == version and data.startswith(cached.data, start):
                payment = cached.payment
                body.seek(start + len(cached.data))
            else:
                payment_record = fastavro.schemaless_reader(body, parts.payment, None, **_READ_FLAGS)
                payment = payment_from_record(payment_record)
                self.payments.put(key, _CachedPayment(version, data[start:body.tell()], payment))
            tail_at = body.tell()
            record.update(fastavro.schemaless_reader(body, parts.tail, None, **_READ_FLAGS))
        except Exception as exc:  # fastavro raises several types for corrupt bodies
            raise UndecodableEvent(f"corrupt Avro body for {self.family} schema v{version}: {exc!r}") from exc
        payload_name, _ = split_union(record["payload"])
        if payload_name != record["event_type"]:
            raise UndecodableEvent(f"payload {payload_name} does not match event_type {record['event_type']}")
        return record, payment, tail_at


def _is_canonical_uuid(value: str) -> bool:
    """Whether `value` reads back unchanged through the schema's uuid logical type."""
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, TypeError, AttributeError):
        return False


def split_union(value: Any) -> tuple[str, dict]:
    if isinstance(value, tuple):
        name, body = value
        return name.rsplit(".", 1)[-1], body
    raise UndecodableEvent("payload union without a record name")


def utc_now() -> datetime:
    return datetime.now(UTC)
