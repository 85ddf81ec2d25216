"""Tracking's review queue: what it records of held payments and how it lists them."""

from __future__ import annotations

from orchestrator.events import EventCodec
from orchestrator.settings import REPO_ROOT
from orchestrator.stages.routing import RoutingStage
from orchestrator.stages.tracking import TrackedEvent, TrackingStore
from tests.unit.stage_fixtures import ALLOW, CLEAR, TENANTS, at, follow, received
from tests.unit.test_review_routing import FRAUD_REVIEW, POSSIBLE_MATCH, submit
from tests.unit.test_tracking_and_settlement import wire_form

CODEC = EventCodec(REPO_ROOT / "schemas")


def held_journey(stage: RoutingStage, tenant: str = "emea", *, sanctions=CLEAR, fraud=FRAUD_REVIEW,
                 seconds: float = 0.0) -> list:
    """Every event of a payment up to its hold, as tracking reads them off the wire."""
    rec = received(tenant)
    ini = follow(rec, "PaymentInitiated", "initiation", {"rail_hint": None}, seconds)
    san = follow(ini, "SanctionsScreened", "sanctions", sanctions, seconds)
    fra = follow(ini, "FraudScored", "fraud", fraud, seconds)
    stage.handle_batch([fra], at(seconds))
    [held] = stage.handle_batch([san], at(seconds))
    return [rec, ini, san, fra, held]


def from_wire(events) -> list[TrackedEvent]:
    return [TrackedEvent.from_message(*wire_form(e), CODEC) for e in events]


def test_held_payments_are_listed_oldest_first_with_their_verdicts_and_no_accounts(tmp_path):
    stage = RoutingStage(TENANTS, "test", tmp_path, CODEC)
    store = TrackingStore(tmp_path / "tracking.sqlite", codec=CODEC)
    late = held_journey(stage, seconds=30)
    early = held_journey(stage, sanctions=POSSIBLE_MATCH, fraud=ALLOW, seconds=10)
    elsewhere = held_journey(stage, "na", seconds=5)
    store.record(from_wire(late + early + elsewhere))
    listed = store.held_for_review("emea", limit=10)
    assert [h["payment_id"] for h in listed] == [early[0].payment_id, late[0].payment_id]
    first = listed[0]
    assert first["reason_code"] == "sanctions_possible_match" and first["hold_event_id"] == early[-1].event_id
    assert first["held_at"] == at(10).isoformat() and first["maker"] is None
    assert first["sanctions"] == {"outcome": "POSSIBLE_MATCH", "best_score": 88.0, "matched_list": "SAMPLE-EU-CFSP",
                                  "matched_entry_id": "EU-2001", "matched_party": "creditor"}
    assert first["fraud"] == {"outcome": "ALLOW", "score": 0, "rules_triggered": []}
    assert listed[1]["fraud"] == FRAUD_REVIEW
    assert first["parties"] == {"debtor": {"name": "Muller GmbH"}, "creditor": {"name": "Dupont SA"}}
    assert "DE89370400440532013000" not in str(listed)
    # Pages follow the last one seen; another tenant's holds are not listed.
    assert [h["payment_id"] for h in store.held_for_review("emea", limit=1, after=(first["held_at_s"],
                                                                                  first["payment_id"]))] == [
        late[0].payment_id]
    assert [h["payment_id"] for h in store.held_for_review("na", limit=10)] == [elsewhere[0].payment_id]


def test_a_maker_step_is_shown_and_a_released_or_rejected_payment_leaves_the_queue(tmp_path):
    stage = RoutingStage(TENANTS, "test", tmp_path, CODEC)
    store = TrackingStore(tmp_path / "tracking.sqlite", codec=CODEC)
    released, rejected = held_journey(stage), held_journey(stage, seconds=1)
    store.record(from_wire(released + rejected))
    maker = submit(released[-1], "approve", "alice", "invoice seen", 2)
    maker_out = stage.handle_batch([maker], at(2))
    store.record(from_wire([maker, *maker_out]))
    [waiting, _] = store.held_for_review("emea", limit=10)
    assert (waiting["maker"], waiting["maker_at"]) == ("alice", at(2).isoformat())
    assert store.held_review(released[0].payment_id)["maker"] == "alice"
    checker = submit(released[-1], "approve", "bob", "confirmed", 3)
    refusal = submit(rejected[-1], "reject", "carol", "payer denies it", 3)
    outputs = stage.handle_batch([checker, refusal], at(3))
    store.record(from_wire([checker, refusal, *outputs]))
    assert store.held_for_review("emea", limit=10) == []
    assert store.held_review(released[0].payment_id) is None
    assert store.status_of(released[0].payment_id) == ("emea", "ROUTED")
    record = store.get(rejected[0].payment_id)
    assert (record["status"], record["reason"]["code"]) == ("REJECTED", "review_rejected")
    # Every decision is on the timeline: who, what and why.
    timeline = store.get(released[0].payment_id)["timeline"]
    decisions = [(t["stage"], t["event_type"], t["reviewer"], t["decision"], t["comment"], t.get("outcome"))
                 for t in timeline if "reviewer" in t]
    assert decisions == [("intake", "ReviewSubmitted", "alice", "approve", "invoice seen", None),
                         ("routing", "PaymentReviewed", "alice", "approve", "invoice seen", "awaiting_checker"),
                         ("intake", "ReviewSubmitted", "bob", "approve", "confirmed", None),
                         ("routing", "PaymentReviewed", "bob", "approve", "confirmed", "approved")]
    submitted = next(t for t in timeline if t["event_type"] == "ReviewSubmitted")
    assert submitted["credential_id"] == "k1" and submitted["causation_id"] == released[-1].event_id


def test_a_released_hold_counts_as_in_flight_again(tmp_path):
    stage = RoutingStage(TENANTS, "test", tmp_path, CODEC)
    store = TrackingStore(tmp_path / "tracking.sqlite", codec=CODEC)
    journey = held_journey(stage)
    store.record(journey)
    assert store.meter.in_flight == 0  # held: waiting for a person, not for the flow
    stage.handle_batch([submit(journey[-1], "approve", "alice")], at(1))
    outputs = stage.handle_batch([submit(journey[-1], "approve", "bob", seconds=2)], at(2))
    store.record(outputs)
    assert store.meter.in_flight == 1


def test_a_store_from_before_the_queue_lists_its_held_payments(tmp_path):
    stage = RoutingStage(TENANTS, "test", tmp_path, CODEC)
    path = tmp_path / "tracking.sqlite"
    store = TrackingStore(path, codec=CODEC)
    journey = held_journey(stage)
    store.record(journey)
    store.db.execute("DROP TABLE review_queue")
    store.close()
    upgraded = TrackingStore(path, codec=CODEC)
    [held] = upgraded.held_for_review("emea", limit=10)
    assert (held["payment_id"], held["hold_event_id"]) == (journey[0].payment_id, journey[-1].event_id)
