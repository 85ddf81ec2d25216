"""Routing's review of held payments: maker-checker, refusals, rejection, the time limit
and redelivery, on real events and a real SQLite store (no broker)."""

from __future__ import annotations

import sqlite3

import pytest

from orchestrator.events import EventCodec, review_submitted_event
from orchestrator.reviews import ReviewState, decide_review, same_reviewer
from orchestrator.settings import REPO_ROOT
from orchestrator.stages.routing import RoutingStage
from orchestrator.tenants import ReviewConfig
from tests.unit.stage_fixtures import ALLOW, CLEAR, TENANTS, at, follow, received

CODEC = EventCodec(REPO_ROOT / "schemas")

POSSIBLE_MATCH = {"outcome": "POSSIBLE_MATCH", "best_score": 88.0, "matched_list": "SAMPLE-EU-CFSP",
                  "matched_entry_id": "EU-2001", "matched_party": "creditor"}
FRAUD_REVIEW = {"outcome": "REVIEW", "score": 50, "rules_triggered": ["amount_above_review"]}


def tenants_with(**review) -> dict:
    """The real tenant files, with emea's review settings changed."""
    emea = TENANTS["emea"].model_copy(update={"review": ReviewConfig(**review)})
    return {**TENANTS, "emea": emea}


def routing(tmp_path, tenants=TENANTS) -> RoutingStage:
    return RoutingStage(tenants, "test", tmp_path, CODEC)


def hold(stage: RoutingStage, *, sanctions=CLEAR, fraud=FRAUD_REVIEW, seconds: float = 0.0):
    """A payment the stage holds: its PaymentHeld."""
    initiated = follow(received("emea"), "PaymentInitiated", "initiation", {"rail_hint": None})
    stage.handle_batch([follow(initiated, "FraudScored", "fraud", fraud)], at(seconds))
    [held] = stage.handle_batch([follow(initiated, "SanctionsScreened", "sanctions", sanctions)], at(seconds))
    assert held.event_type == "PaymentHeld"
    return held


def submit(held, decision: str, reviewer: str, comment: str = "checked the invoice", seconds: float = 1.0):
    return review_submitted_event(held.payment, hold_event_id=held.event_id, decision=decision, reviewer=reviewer,
                                  comment=comment, credential_id="k1", occurred_at=at(seconds), region="test")


def reviewed(outputs) -> dict:
    assert outputs[0].event_type == "PaymentReviewed"
    return outputs[0].payload


def test_maker_then_checker_releases_the_payment_to_its_rail(tmp_path):
    stage = routing(tmp_path)
    held = hold(stage)
    [maker] = stage.handle_batch([submit(held, "approve", "alice")], at(1))
    assert maker.payload == {"decision": "approve", "reviewer": "alice", "comment": "checked the invoice",
                             "review_step": "maker", "outcome": "awaiting_checker",
                             "reason_detail": "approved by alice; a second reviewer must confirm",
                             "refusal_reason": None, "maker": None}
    checker, routed = stage.handle_batch([submit(held, "approve", "bob", "confirmed with the payer", 2)], at(2))
    assert (checker.payload["review_step"], checker.payload["outcome"], checker.payload["maker"]) == (
        "checker", "approved", "alice")
    assert checker.payload["reason_detail"] == "approved by alice, confirmed by bob"
    assert (routed.event_type, routed.payload["rail"]) == ("PaymentRouted", "sepa_inst")
    # Routing's own copy of the payment moves on, caused by the checker's submission.
    assert routed.payment == held.payment and routed.correlation_id == held.payment_id
    assert routed.occurred_at == at(2)  # the rail's time limit counts from the release


def test_the_maker_confirming_their_own_approval_is_refused_and_changes_nothing(tmp_path):
    stage = routing(tmp_path)
    held = hold(stage)
    stage.handle_batch([submit(held, "approve", "alice")], at(1))
    [refused] = stage.handle_batch([submit(held, "approve", "  ALICE ", seconds=2)], at(2))
    assert (refused.payload["outcome"], refused.payload["refusal_reason"]) == ("refused", "same_reviewer")
    # Still awaiting its checker: another reviewer releases it.
    outputs = stage.handle_batch([submit(held, "approve", "carol", seconds=3)], at(3))
    assert [o.event_type for o in outputs] == ["PaymentReviewed", "PaymentRouted"]


def test_a_possible_sanctions_match_needs_the_checker_even_with_maker_checker_off(tmp_path):
    stage = routing(tmp_path, tenants_with(maker_checker=False))
    held = hold(stage, sanctions=POSSIBLE_MATCH, fraud=ALLOW)
    assert held.payload["reason_code"] == "sanctions_possible_match"
    [maker] = stage.handle_batch([submit(held, "approve", "alice")], at(1))
    assert maker.payload["outcome"] == "awaiting_checker"
    assert "a possible sanctions match always needs one" in maker.payload["reason_detail"]
    [refused] = stage.handle_batch([submit(held, "approve", "alice", seconds=2)], at(2))
    assert refused.payload["refusal_reason"] == "same_reviewer"
    outputs = stage.handle_batch([submit(held, "approve", "bob", seconds=3)], at(3))
    assert [o.event_type for o in outputs] == ["PaymentReviewed", "PaymentRouted"]


def test_a_fraud_hold_is_released_by_one_approval_when_maker_checker_is_off(tmp_path):
    stage = routing(tmp_path, tenants_with(maker_checker=False))
    held = hold(stage)
    approval, routed = stage.handle_batch([submit(held, "approve", "alice")], at(1))
    assert (approval.payload["review_step"], approval.payload["outcome"]) == ("maker", "approved")
    assert routed.event_type == "PaymentRouted"


@pytest.mark.parametrize("maker_first", [False, True])
def test_a_reject_ends_the_review_and_later_decisions_are_refused(tmp_path, maker_first):
    stage = routing(tmp_path)
    held = hold(stage)
    if maker_first:
        stage.handle_batch([submit(held, "approve", "alice")], at(1))
    review, rejected = stage.handle_batch([submit(held, "reject", "bob", "payer denies it", 2)], at(2))
    assert review.payload["outcome"] == "rejected"
    assert review.payload["review_step"] == ("checker" if maker_first else "maker")
    assert (rejected.event_type, rejected.payload["reason_code"], rejected.payload["iso_reason_code"]) == (
        "PaymentRejected", "review_rejected", "MS03")
    assert rejected.payload["reason_detail"] == "rejected on review by bob"
    [late] = stage.handle_batch([submit(held, "approve", "carol", seconds=3)], at(3))
    assert (late.payload["outcome"], late.payload["refusal_reason"]) == ("refused", "review_closed")


def test_the_maker_may_withdraw_their_approval_by_rejecting(tmp_path):
    stage = routing(tmp_path)
    held = hold(stage)
    stage.handle_batch([submit(held, "approve", "alice")], at(1))
    review, rejected = stage.handle_batch([submit(held, "reject", "alice", "approved the wrong one", 2)], at(2))
    assert (review.payload["review_step"], review.payload["outcome"]) == ("maker", "rejected")
    assert rejected.payload["reason_code"] == "review_rejected"


def test_a_hold_past_the_tenants_time_limit_ends_rejected_once(tmp_path):
    stage = routing(tmp_path, tenants_with(time_limit_s=600))
    held = hold(stage, seconds=10)
    stage.handle_batch([submit(held, "approve", "alice", seconds=20)], at(20))
    assert stage.tick(at(10 + 599)) == []
    [expired] = stage.tick(at(10 + 601))
    assert (expired.event_type, expired.payload["reason_code"], expired.payload["iso_reason_code"]) == (
        "PaymentRejected", "review_time_limit_exceeded", "MS03")
    assert expired.payload["reason_detail"] == ("not released by a review within 600 s of its hold "
                                                "(approved by alice, never confirmed)")
    assert expired.causation_id == held.event_id
    # Not confirmed as published (a crash before the broker took it): emitted again, then not.
    assert stage.tick(at(10 + 602)) == [expired]
    stage.published([expired])
    assert stage.tick(at(10 + 10_000)) == []
    [late] = stage.handle_batch([submit(held, "approve", "bob", seconds=700)], at(700))
    assert late.payload["refusal_reason"] == "review_closed"


def test_the_time_limit_defaults_to_a_day():
    assert TENANTS["emea"].review.time_limit_s == 86_400 and TENANTS["emea"].review.maker_checker is True
    with pytest.raises(ValueError):
        ReviewConfig(time_limit_s=0)
    with pytest.raises(ValueError):
        ReviewConfig(time_limit_s=30 * 86_400)


def test_a_redelivered_submission_re_emits_exactly_what_it_caused_even_after_a_restart(tmp_path):
    stage = routing(tmp_path)
    held = hold(stage)
    maker = submit(held, "approve", "alice")
    first = stage.handle_batch([maker], at(1))
    checker = submit(held, "approve", "bob", seconds=2)
    second = stage.handle_batch([checker], at(2))
    stage.close()
    restarted = routing(tmp_path)
    # The same submissions again (a rewind, a replayed dead letter): the same events,
    # byte for byte, and the maker's redelivery is not mistaken for a self-confirmation.
    again = restarted.handle_batch([maker, checker], at(50))
    assert again == first + second
    assert [CODEC.encode(e) for e in again] == [CODEC.encode(e) for e in first + second]


def test_a_decision_on_a_payment_routing_does_not_hold_is_refused(tmp_path):
    stage = routing(tmp_path)
    initiated = follow(received("emea"), "PaymentInitiated", "initiation", {"rail_hint": None})
    stage.handle_batch([follow(initiated, "FraudScored", "fraud", ALLOW)], at(0))
    [routed] = stage.handle_batch([follow(initiated, "SanctionsScreened", "sanctions", CLEAR)], at(0))
    [refused] = stage.handle_batch([submit(routed, "approve", "alice")], at(1))
    assert (refused.payload["outcome"], refused.payload["refusal_reason"]) == ("refused", "not_held")


def test_holds_from_before_the_review_state_get_one_on_restart(tmp_path):
    stage = routing(tmp_path)
    held = hold(stage, seconds=5)
    stage.close()
    db = sqlite3.connect(tmp_path / "routing.sqlite")
    db.executescript("DROP TABLE reviews; DROP TABLE review_outputs;")
    db.close()
    upgraded = routing(tmp_path, tenants_with(time_limit_s=100))
    [maker] = upgraded.handle_batch([submit(held, "approve", "alice")], at(6))
    assert maker.payload["outcome"] == "awaiting_checker"
    [expired] = upgraded.tick(at(5 + 101))  # the limit counts from the original hold
    assert expired.payload["reason_code"] == "review_time_limit_exceeded"


def test_decide_review_is_pure_and_refuses_unknown_decisions():
    open_hold = ReviewState(hold_reason="fraud_review_required", maker=None, closed=False)
    assert decide_review(open_hold, "approve", "a", checker_required=True).outcome == "awaiting_checker"
    assert decide_review(open_hold, "approve", "a", checker_required=False).outcome == "approved"
    assert decide_review(None, "reject", "a", checker_required=True).refusal_reason == "not_held"
    with pytest.raises(ValueError):
        decide_review(open_hold, "maybe", "a", checker_required=True)
    assert same_reviewer("Alice  Smith", "alice smith") and not same_reviewer(None, "alice")
