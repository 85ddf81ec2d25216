"""Every schema version in schemas/ reads what every other version writes.

Backward (a new reader reads old data) and forward (an old reader reads new data)
compatibility are both proven on real encoded bytes of every event type, by Avro
schema resolution, not by comparing schema text.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import pytest

from orchestrator.domain import Account, Agent, Party, Payment, payment_from_record, payment_to_record
from orchestrator.events import (EVENT_TYPES, Event, EventCodec, UndecodableEvent, derive_event, received_event,
                                 split_union)
from orchestrator.settings import REPO_ROOT

SCHEMAS = REPO_ROOT / "schemas"
VERSIONS = EventCodec(SCHEMAS).versions

SAMPLE_PAYLOADS = {
    "PaymentReceived": {"channel": "json", "idempotency_key": "k-1"},
    "PaymentInitiated": {"rail_hint": "sepa_inst"},
    "PaymentRejected": {"reason_code": "invalid_iban", "iso_reason_code": "AC01", "reason_detail": "bad", "field": "x"},
    "PaymentHeld": {"reason_code": "sanctions_possible_match", "reason_detail": "review"},
    "SanctionsScreened": {"outcome": "CLEAR", "best_score": 12.5, "matched_list": None, "matched_entry_id": None,
                          "matched_party": None},
    "FraudScored": {"outcome": "ALLOW", "score": 3, "rules_triggered": ["velocity_count"]},
    "PaymentRouted": {"rail": "sepa_inst", "clearing_system_code": "TGT", "settlement_mode": "rtgs"},
    "PaymentExecuted": {"rail": "sepa_inst", "clearing_message_id": "M1", "clearing_status": "ACSC",
                        "accepted_at": datetime(2026, 11, 27, 10, 0, tzinfo=UTC)},
    "PaymentFailed": {"rail": "fps", "reason_code": "clearing_rejected", "iso_reason_code": "AC03",
                      "reason_detail": "unknown account", "clearing_message_id": "M2"},
    "FundsReserved": {"account_id": "cust:a", "amount_minor": 12550, "available_after_minor": 1},
    "FundsPosted": {"debit_account_id": "cust:a", "credit_account_id": "clearing:b", "amount_minor": 12550},
    "FundsReleased": {"account_id": "cust:a", "amount_minor": 12550, "reason_code": "clearing_rejected"},
    "PaymentSettled": {"rail": "sepa_inst", "cycle_id": "c1", "settlement_mode": "rtgs", "settlement_date": "2026-11-27"},
    "PaymentDeferred": {"rail": "fednow", "reason_code": "rail_circuit_open", "reason_detail": "breaker open",
                        "breaker_state": "open", "attempt": 2,
                        "retry_at": datetime(2026, 11, 27, 10, 0, 5, tzinfo=UTC),
                        "deadline_at": datetime(2026, 11, 27, 10, 0, 30, tzinfo=UTC)},
    "ReviewSubmitted": {"decision": "approve", "reviewer": "alice", "comment": "known customer, invoice seen",
                        "credential_id": "3f2a9c0d1e4b"},
    "PaymentReviewed": {"decision": "approve", "reviewer": "bob", "comment": "confirmed", "review_step": "checker",
                        "outcome": "approved", "reason_detail": "approved by alice, confirmed by bob",
                        "refusal_reason": None, "maker": "alice"},
}


def sample_payment(purpose_code: str | None = "SALA") -> Payment:
    return Payment(
        payment_id="0b6f2a4e-7d3c-4f7a-9a51-3e8d2c1b0a99", tenant_id="emea", end_to_end_id="INV-2026-0042",
        amount_minor=12550, currency="EUR",
        debtor=Party("Muller GmbH", Account(iban="DE89370400440532013000"), Agent(bic="COBADEFFXXX"), "DE"),
        creditor=Party("Dupont SA", Account(iban="FR1420041010050500013M02606"), Agent(bic="BNPAFRPPXXX")),
        remittance_information="Invoice 42", requested_execution_date="2026-11-27", purpose_code=purpose_code)


def sample_events(purpose_code: str | None = "SALA") -> list[Event]:
    root = received_event(sample_payment(purpose_code), channel="json", idempotency_key="k-1",
                          occurred_at=datetime(2026, 11, 27, 9, 59, tzinfo=UTC), region="eu-west-1")
    events = [root]
    for event_type in EVENT_TYPES[1:]:
        events.append(derive_event(root, event_type, "test", SAMPLE_PAYLOADS[event_type],
                                   occurred_at=datetime(2026, 11, 27, 10, 0, tzinfo=UTC), region="eu-west-1"))
    return events


def test_sample_payloads_cover_every_event_type():
    assert set(SAMPLE_PAYLOADS) == set(EVENT_TYPES)


def test_event_types_are_only_ever_added():
    codec = EventCodec(SCHEMAS)
    for older, newer in itertools.pairwise(VERSIONS):
        assert codec.event_types(older) <= codec.event_types(newer)
    assert codec.event_types(VERSIONS[-1]) == set(EVENT_TYPES)


def test_every_schema_file_is_a_version_the_codec_loads():
    from orchestrator.cycle_events import CycleEventCodec

    files = sorted(p.name for p in SCHEMAS.glob("*.avsc"))
    # Two families: payment events (EventCodec) and settlement cycle events
    # (CycleEventCodec, checked in test_settlement_cycles.py).
    assert files == sorted([f"payment_event.v{v}.avsc" for v in VERSIONS]
                           + [f"settlement_cycle_event.v{v}.avsc" for v in CycleEventCodec(SCHEMAS).versions])
    assert len(VERSIONS) >= 2, "schema evolution needs at least two versions to prove anything"


@pytest.mark.parametrize(("writer", "reader"), list(itertools.product(VERSIONS, VERSIONS)))
def test_each_version_reads_every_other_versions_events(writer: int, reader: int):
    write_codec = EventCodec(SCHEMAS, writer_version=writer)
    read_codec = EventCodec(SCHEMAS, reader_version=reader)
    writable = write_codec.event_types(writer)
    readable = read_codec.event_types(reader)
    checked = 0
    for event in sample_events():
        if event.event_type not in writable:
            continue
        if event.event_type not in readable:
            # An event type added after the reader's version: refused cleanly (a poison
            # message, never a wrong decode). Consumers filter by header first, so a
            # stage only meets this if it subscribes to the new type without knowing it.
            with pytest.raises(UndecodableEvent):
                read_codec.decode(write_codec.encode(event))
            continue
        checked += 1
        decoded = read_codec.decode(write_codec.encode(event))
        assert decoded.schema_version == writer
        assert decoded.event_id == event.event_id
        assert decoded.event_type == event.event_type
        assert decoded.payload == event.payload
        assert decoded.correlation_id == event.payment.payment_id
        # Everything v1 knows survives every direction; purpose_code only where both know it.
        expected = event.payment if min(writer, reader) >= 2 else event.payment.replace(purpose_code=None)
        assert decoded.payment == expected
    assert checked >= 13, "every event type of v1 must travel between every pair of versions"


def test_new_fields_always_carry_defaults():
    """The rule that keeps forward compatibility: a field added in vN has a default."""
    def fields(schema: dict, prefix: str = "") -> dict[str, dict]:
        found = {}
        for f in schema.get("fields", []):
            found[prefix + f["name"]] = f
            t = f["type"]
            if isinstance(t, dict) and t.get("type") == "record":
                found.update(fields(t, prefix + f["name"] + "."))
        return found

    schemas = {v: json.loads((SCHEMAS / f"payment_event.v{v}.avsc").read_text()) for v in VERSIONS}
    for older, newer in itertools.pairwise(VERSIONS):
        added = set(fields(schemas[newer])) - set(fields(schemas[older]))
        removed = set(fields(schemas[older])) - set(fields(schemas[newer]))
        assert not removed, f"v{newer} removed fields {removed}"
        for name in added:
            assert "default" in fields(schemas[newer])[name], f"v{newer} added {name} without a default"


def test_money_is_never_a_float_in_any_schema():
    def amount_types(node):
        if isinstance(node, dict):
            if "name" in node and "amount" in str(node["name"]) and "type" in node:
                yield node["name"], node["type"]
            for value in node.values():
                yield from amount_types(value)
        elif isinstance(node, list):
            for value in node:
                yield from amount_types(value)

    for version in VERSIONS:
        found = list(amount_types(json.loads((SCHEMAS / f"payment_event.v{version}.avsc").read_text())))
        assert found, "the schema has amount fields"
        for name, avro_type in found:
            assert avro_type == "long", f"v{version} {name} is {avro_type}, not exact minor units"


@pytest.mark.parametrize("data", [b"", b"not avro", b"\xc3\x01" + b"\x00" * 8 + b"x", b"\xc3\x01"])
def test_garbage_is_an_undecodable_event_not_a_crash(data: bytes):
    with pytest.raises(UndecodableEvent):
        EventCodec(SCHEMAS).decode(data)


def test_truncated_body_is_undecodable():
    codec = EventCodec(SCHEMAS)
    data = codec.encode(sample_events()[0])
    with pytest.raises(UndecodableEvent):
        codec.decode(data[:30])


def test_derived_event_ids_are_deterministic_and_chain_causation():
    root = sample_events()[0]
    at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    first = derive_event(root, "PaymentInitiated", "initiation", {"rail_hint": None}, occurred_at=at, region="x")
    again = derive_event(root, "PaymentInitiated", "initiation", {"rail_hint": None}, occurred_at=at, region="y")
    other = derive_event(root, "PaymentRejected", "initiation", SAMPLE_PAYLOADS["PaymentRejected"], occurred_at=at,
                         region="x")
    assert first.event_id == again.event_id != other.event_id
    assert first.causation_id == root.event_id
    assert first.correlation_id == root.correlation_id == root.payment.payment_id
    assert first.traceparent[3:35] == root.traceparent[3:35]  # same W3C trace
    assert first.traceparent != root.traceparent  # new span


def test_an_event_is_encoded_once_and_a_changed_copy_anew():
    import dataclasses

    codec = EventCodec(SCHEMAS)
    event = sample_events()[6]
    data = codec.encode(event)
    assert codec.encode(event) is data  # a stage that stored it and the runtime share the bytes
    decoded = codec.decode(data)
    assert decoded.wire == data and codec.encode(decoded) is decoded.wire
    changed = dataclasses.replace(decoded, traceparent=None)
    assert changed.wire is None and codec.decode(codec.encode(changed)).traceparent is None
    # Bytes of an older writer are never re-sent as they are: the current writer encodes anew.
    older = EventCodec(SCHEMAS, writer_version=VERSIONS[0]).encode(event)
    assert codec.encode(codec.decode(older))[2:10] == codec.writer.fingerprint


# The payment record is encoded and decoded once per process (PaymentBytesCache); every
# test below holds that path to the whole-record codec, byte for byte and value for value.

def whole_record_bytes(codec: EventCodec, event: Event) -> bytes:
    return codec.write({
        "event_id": event.event_id, "event_type": event.event_type, "schema_version": codec.writer.version,
        "occurred_at": event.occurred_at, "correlation_id": event.correlation_id,
        "causation_id": event.causation_id, "tenant_id": event.tenant_id, "region": event.region,
        "traceparent": event.traceparent, "stage": event.stage, "payment": payment_to_record(event.payment),
        "payload": (f"payorch.events.{event.event_type}", event.payload)})


@pytest.mark.parametrize("version", VERSIONS)
def test_events_encoded_around_a_known_payment_are_the_whole_records_bytes(version: int):
    codec = EventCodec(SCHEMAS, writer_version=version, reader_version=version)
    events = [e for e in sample_events(purpose_code=None if version == 1 else "SALA")
              if e.event_type in codec.event_types(version)]
    first = codec.encode(events[0])
    assert len(codec.payments) == 1  # the payment's bytes are kept ...
    for event in events:
        # ... and reused for every later event of the payment (the same Payment object)
        assert codec.encode(event) == whole_record_bytes(codec, event)
    assert first == whole_record_bytes(codec, events[0])


@pytest.mark.parametrize("version", VERSIONS)
def test_events_decoded_around_a_known_payment_equal_the_whole_records_values(version: int):
    writer = EventCodec(SCHEMAS, writer_version=version, reader_version=version)
    events = [e for e in sample_events(purpose_code=None if version == 1 else "SALA")
              if e.event_type in writer.event_types(version)]
    data = [writer.encode(e) for e in events]
    reader = EventCodec(SCHEMAS, writer_version=version, reader_version=version)
    decoded = [reader.decode(d) for d in data]  # the first reads the payment, the rest reuse it
    assert decoded == events
    assert all(d.payment is decoded[0].payment for d in decoded)
    for d, raw in zip(decoded, data):
        _, record = reader.read(raw)
        assert payment_from_record(record["payment"]) == d.payment
        assert split_union(record["payload"])[1] == d.payload
        assert record["occurred_at"] == d.occurred_at and str(record["event_id"]) == d.event_id


def test_a_changed_payment_is_read_and_written_anew_not_taken_from_the_cache():
    import dataclasses

    codec = EventCodec(SCHEMAS)
    original, later = sample_events()[0], sample_events()[6]
    assert codec.decode(codec.encode(original)).payment.amount_minor == 12550
    # Same payment id, other amount: bytes at the payment's offset differ from the kept ones.
    richer = dataclasses.replace(later, payment=dataclasses.replace(later.payment, amount_minor=99_999))
    data = codec.encode(richer)
    assert data == whole_record_bytes(codec, richer)
    fresh = EventCodec(SCHEMAS)
    fresh.decode(codec.encode(original))
    assert fresh.decode(data).payment.amount_minor == 99_999
    assert fresh.decode(data).payload == richer.payload


def test_a_corrupt_envelope_around_a_known_payment_is_undecodable():
    codec = EventCodec(SCHEMAS)
    events = sample_events()
    codec.decode(codec.encode(events[0]))
    data = codec.encode(events[6])
    with pytest.raises(UndecodableEvent):
        codec.decode(data[:-3])  # the payload cut short, after the kept payment bytes
    # the payload's union index (the first byte after the payment) names no branch
    import io

    import fastavro

    tail = io.BytesIO()
    fastavro.schemaless_writer(tail, codec._parts[codec.writer.version].tail,
                               {"payload": (f"payorch.events.{events[6].event_type}", events[6].payload)})
    at = len(data) - len(tail.getvalue())
    with pytest.raises(UndecodableEvent):
        codec.decode(data[:at] + b"\x7e" + data[at + 1:])


def test_the_payment_bytes_cache_is_bounded_oldest_first():
    from orchestrator.events import PaymentBytesCache, _CachedPayment

    cache = PaymentBytesCache(max_entries=3)
    payment = sample_payment()
    for key in "abcd":
        cache.put(key, _CachedPayment(3, key.encode(), payment))
    assert len(cache) == 3 and cache.get("a") is None and cache.get("d").data == b"d"
    cache.put("b", _CachedPayment(3, b"b2", payment))  # a refreshed entry becomes the newest
    cache.put("e", _CachedPayment(3, b"e", payment))
    assert cache.get("c") is None and cache.get("b").data == b"b2"


def test_an_event_as_read_is_what_decoding_its_bytes_gives():
    codec = EventCodec(SCHEMAS)
    for event in sample_events():
        handed = codec.as_read(event)
        decoded = EventCodec(SCHEMAS).decode(codec.encode(event))
        assert handed == decoded and handed.payload == decoded.payload
        assert handed.schema_version == decoded.schema_version == codec.writer.version
        assert handed.wire == decoded.wire == codec.encode(event) and handed.wire_tail_at == decoded.wire_tail_at
        assert handed.payment is event.payment
        assert type(handed.occurred_at.tzinfo) is type(decoded.occurred_at.tzinfo)


def test_as_read_fills_and_converts_the_payload_as_the_schema_says():
    root = sample_events()[0]
    at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    # The stage left out an optional field and gave an int for a double.
    screened = derive_event(root, "SanctionsScreened", "sanctions", {"outcome": "CLEAR", "best_score": 12},
                            occurred_at=at, region="x")
    handed = EventCodec(SCHEMAS).as_read(screened)
    assert handed.payload == {"outcome": "CLEAR", "best_score": 12.0, "matched_list": None,
                              "matched_entry_id": None, "matched_party": None}
    assert isinstance(handed.payload["best_score"], float)


def test_as_read_decodes_in_full_what_avro_would_not_carry_unchanged():
    import dataclasses
    from datetime import timedelta, timezone

    codec = EventCodec(SCHEMAS)
    event = sample_events()[6]
    elsewhere = dataclasses.replace(event, occurred_at=event.occurred_at.astimezone(timezone(timedelta(hours=2))))
    handed = codec.as_read(elsewhere)
    assert handed.occurred_at.tzinfo is UTC and handed.occurred_at == elsewhere.occurred_at
    upper = dataclasses.replace(event, event_id=event.event_id.upper())
    assert codec.as_read(upper).event_id == event.event_id  # the uuid type's canonical form


def test_a_codec_that_keeps_no_payments_writes_the_same_bytes_and_keeps_nothing():
    writer, keeper = EventCodec(SCHEMAS, keep_payments=False), EventCodec(SCHEMAS)
    for event in sample_events():
        assert writer._encode(event)[0] == keeper._encode(event)[0] == whole_record_bytes(writer, event)
    assert len(writer.payments) == 0 and len(keeper.payments) == 1
