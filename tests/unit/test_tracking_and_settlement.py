from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime

from orchestrator.cycle_events import CycleEventCodec
import pytest

from orchestrator.events import EventCodec, UndecodableEvent
from orchestrator.settings import REPO_ROOT
from orchestrator.stages.initiation import InitiationStage
from orchestrator.stages.settlement import SettlementStage, cycle_of
from orchestrator.stages.tracking import TERMINAL_STATUSES, TrackedEvent, TrackingStore, next_status
from orchestrator.wire import HEADER_STAGE, event_headers
from tests.unit.stage_fixtures import ALLOW, CLEAR, TENANTS, at, follow, received

CODEC = EventCodec(REPO_ROOT / "schemas")


def journey():
    rec = received("emea")
    ini = follow(rec, "PaymentInitiated", "initiation", {"rail_hint": "sepa_inst"}, 1)
    san = follow(ini, "SanctionsScreened", "sanctions", CLEAR, 2)
    fra = follow(ini, "FraudScored", "fraud", ALLOW, 2)
    rou = follow(san, "PaymentRouted", "routing", {"rail": "sepa_inst", "clearing_system_code": "TGT",
                                                    "settlement_mode": "rtgs"}, 3)
    res = follow(rou, "FundsReserved", "ledger", {"account_id": "a", "amount_minor": 1, "available_after_minor": 1}, 4)
    exe = follow(rou, "PaymentExecuted", "execution", {"rail": "sepa_inst", "clearing_message_id": "M",
                                                       "clearing_status": "ACSC", "accepted_at": at(4)}, 4)
    pos = follow(exe, "FundsPosted", "ledger", {"debit_account_id": "a", "credit_account_id": "b",
                                                "amount_minor": 1}, 5)
    set_ = follow(exe, "PaymentSettled", "settlement", {"rail": "sepa_inst", "cycle_id": "c", "settlement_mode": "rtgs",
                                                         "settlement_date": "2026-11-27"}, 5)
    return [rec, ini, san, fra, rou, res, exe, pos, set_]


def test_status_only_moves_forward_and_terminal_is_final():
    assert next_status(None, "PaymentReceived") == "RECEIVED"
    assert next_status("ROUTED", "PaymentInitiated") is None
    assert next_status("ROUTED", "PaymentExecuted") == "EXECUTED"
    for terminal in TERMINAL_STATUSES:
        for event_type in ("PaymentReceived", "PaymentSettled", "PaymentRejected", "PaymentFailed"):
            assert next_status(terminal, event_type) is None
    assert next_status("SCREENED", "PaymentRejected") == "REJECTED"
    assert next_status("ROUTED", "FundsReserved") is None


def test_any_delivery_order_ends_settled_with_one_timeline_entry_per_event(tmp_path):
    events = journey()
    for n, order in enumerate(itertools.islice(itertools.permutations(events), 0, 5000, 997)):
        store = TrackingStore(tmp_path / f"t{n}.sqlite")
        store.record(list(order))
        store.record(list(order[:3]))  # redelivery
        record = store.get(events[0].payment_id)
        assert record["status"] == "SETTLED"
        assert sorted(t["event_id"] for t in record["timeline"]) == sorted(e.event_id for e in events)
        # The timeline reads in time order whatever order the topics delivered.
        assert [t["occurred_at"] for t in record["timeline"]] == sorted(t["occurred_at"] for t in record["timeline"])
        assert len(record["timeline"]) == len(events)
        assert {t["stage"] for t in record["timeline"]} == {"intake", "initiation", "sanctions", "fraud", "routing",
                                                            "ledger", "execution", "settlement"}
        assert {t["correlation_id"] for t in record["timeline"]} == {events[0].payment_id}
        store.close()


def wire_form(event, drop: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The event as a consumer receives it: its bytes and its headers."""
    headers = {key: value.decode() for key, value in event_headers(event, CODEC.writer.version) if key != drop}
    return CODEC.encode(event), headers


def test_events_recorded_from_their_headers_match_events_recorded_decoded(tmp_path):
    events = journey()
    from_wire = [TrackedEvent.from_message(*wire_form(e), CODEC) for e in events]
    # Only the payment's facts, its rail and refusals are decoded while recording.
    assert {e.event_type for e in from_wire if e.decoded} == {"PaymentReceived", "PaymentInitiated", "PaymentRouted"}
    by_headers = TrackingStore(tmp_path / "wire.sqlite", codec=CODEC)
    by_headers.record(list(reversed(from_wire)))
    decoded = TrackingStore(tmp_path / "decoded.sqlite", codec=CODEC)
    decoded.record(list(reversed(events)))
    assert by_headers.get(events[0].payment_id) == decoded.get(events[0].payment_id)
    assert by_headers.get(events[0].payment_id)["status"] == "SETTLED"
    assert by_headers.snapshot(events[0].payment_id)[1:] == decoded.snapshot(events[0].payment_id)[1:]
    # The details of a header-only entry come from its bytes at query time.
    executed = next(t for t in by_headers.get(events[0].payment_id)["timeline"] if t["event_type"] == "PaymentExecuted")
    assert executed["clearing_status"] == "ACSC" and executed["rail"] == "sepa_inst"


def test_an_event_without_the_envelope_headers_is_decoded_and_a_bad_body_refused(tmp_path):
    screened = journey()[2]
    older_producer = TrackedEvent.from_message(*wire_form(screened, drop=HEADER_STAGE), CODEC)
    assert older_producer.decoded and older_producer.stage == "sanctions"
    value, headers = wire_form(screened)
    with pytest.raises(UndecodableEvent):
        TrackedEvent.from_message(b"\xc3\x01" + b"\x00" * 8 + value[10:], headers, CODEC)


def test_rejection_reason_is_kept(tmp_path):
    rec = received("emea")
    rej = follow(rec, "PaymentRejected", "initiation", {"reason_code": "invalid_iban", "iso_reason_code": "AC01",
                                                        "reason_detail": "bad check digits", "field": "x"}, 1)
    store = TrackingStore(tmp_path / "t.sqlite")
    store.record([rej, rec])
    record = store.get(rec.payment_id)
    assert record["status"] == "REJECTED"
    assert record["reason"] == {"code": "invalid_iban", "iso_code": "AC01", "detail": "bad check digits"}


def test_cycles_gross_per_day_and_net_per_window():
    rail_rtgs = TENANTS["emea"].rails_by_name["sepa_inst"]
    rail_net = TENANTS["emea"].rails_by_name["fps"]
    t = datetime(2026, 11, 27, 10, 0, 59, tzinfo=UTC)
    assert cycle_of(rail_rtgs, t) == ("sepa_inst:2026-11-27:rtgs", "2026-11-27")
    assert cycle_of(rail_net, t)[0] == "fps:20261127T100000:net60"
    assert cycle_of(rail_net, t.replace(second=0, minute=1))[0] == "fps:20261127T100100:net60"


def test_settlement_is_idempotent_and_assigns_the_cycle(tmp_path):
    # Cycle closes, net positions and reconciliation: tests/unit/test_settlement_cycles.py.
    from tests.unit.test_settlement_cycles import FakeReports

    stage = SettlementStage(TENANTS, "test", tmp_path, CODEC, cycle_codec=CycleEventCodec(REPO_ROOT / "schemas"),
                            reports=FakeReports())
    events = journey()
    executed = events[6]
    [settled] = stage.handle_batch([executed], at(6))
    assert stage.handle_batch([executed], at(7)) == [settled]
    assert settled.payload["cycle_id"] == "sepa_inst:2026-11-27:rtgs"
    row = stage.db.execute("SELECT cycle_id, amount_minor FROM settled_payments").fetchone()
    assert (row["cycle_id"], row["amount_minor"]) == ("sepa_inst:2026-11-27:rtgs", executed.payment.amount_minor)


def test_initiation_rejects_a_second_payment_with_the_same_instruction(tmp_path):
    stage = InitiationStage(TENANTS, "test", tmp_path)
    first = received("emea", end_to_end_id="INV-1")
    second = received("emea", end_to_end_id="INV-1")
    [ok] = stage.handle_batch([first], at(1))
    [again] = stage.handle_batch([first], at(2))
    [dup] = stage.handle_batch([second], at(3))
    assert ok.event_type == again.event_type == "PaymentInitiated" and ok.event_id == again.event_id
    assert (dup.event_type, dup.payload["reason_code"]) == ("PaymentRejected", "duplicate_payment")


def test_initiation_rejects_invalid_payment_with_reason_and_field(tmp_path):
    stage = InitiationStage(TENANTS, "test", tmp_path)
    bad = received("emea")
    bad = dataclasses.replace(bad, payment=bad.payment.replace(currency="JPY", amount_minor=100))
    [rejected] = stage.handle_batch([bad], at(1))
    assert rejected.event_type == "PaymentRejected"
    assert rejected.payload["reason_code"] == "currency_not_allowed_for_tenant"
    assert rejected.payload["iso_reason_code"] == "AM03"


def test_initiation_never_treats_the_no_reference_placeholder_as_a_duplicate(tmp_path):
    stage = InitiationStage(TENANTS, "test", tmp_path)
    first = received("emea", end_to_end_id="NOTPROVIDED")
    second = received("emea", end_to_end_id="NOTPROVIDED")
    outputs = stage.handle_batch([first, second], at(1))
    assert [o.event_type for o in outputs] == ["PaymentInitiated", "PaymentInitiated"]


def test_a_rejected_instruction_does_not_block_its_corrected_retry(tmp_path):
    stage = InitiationStage(TENANTS, "test", tmp_path)
    bad = received("emea", end_to_end_id="INV-9")
    bad = dataclasses.replace(bad, payment=bad.payment.replace(currency="JPY", amount_minor=100))
    fixed = received("emea", end_to_end_id="INV-9")
    assert [o.event_type for o in stage.handle_batch([bad, fixed], at(1))] == ["PaymentRejected", "PaymentInitiated"]


def test_a_reader_that_does_not_know_the_writer_schema_shows_the_entry_without_its_details(tmp_path):
    events = journey()
    newer = EventCodec(REPO_ROOT / "schemas")
    store = TrackingStore(tmp_path / "t.sqlite", codec=newer)
    store.record([TrackedEvent.from_message(*wire_form(e), newer) for e in events])
    older_schemas = tmp_path / "older-schemas"
    older_schemas.mkdir()
    for version in newer.versions[:-1]:
        name = f"payment_event.v{version}.avsc"
        (older_schemas / name).write_text((REPO_ROOT / "schemas" / name).read_text())
    older = EventCodec(older_schemas)
    reader = TrackingStore(tmp_path / "t.sqlite", read_only=True, codec=older)
    record = reader.get(events[0].payment_id)
    assert record["status"] == "SETTLED" and len(record["timeline"]) == len(events)
    executed = next(t for t in record["timeline"] if t["event_type"] == "PaymentExecuted")
    assert "details_unavailable" in executed and "clearing_status" not in executed
