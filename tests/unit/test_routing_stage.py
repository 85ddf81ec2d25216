from __future__ import annotations

from orchestrator.events import EventCodec
from orchestrator.settings import REPO_ROOT
from orchestrator.stages.routing import RoutingStage, decide_route
from tests.unit.stage_fixtures import ALLOW, CLEAR, TENANTS, at, follow, received

CODEC = EventCodec(REPO_ROOT / "schemas")


def verdicts(tenant="emea", index=0, sanctions=CLEAR, fraud=ALLOW):
    initiated = follow(received(tenant, index), "PaymentInitiated", "initiation", {"rail_hint": None})
    return (follow(initiated, "SanctionsScreened", "sanctions", sanctions),
            follow(initiated, "FraudScored", "fraud", fraud))


def stage(tmp_path):
    return RoutingStage(TENANTS, "test", tmp_path, CODEC)


def test_clear_payment_is_routed_to_the_tenants_rail_for_its_currency():
    for tenant, index, rail in [("emea", 0, "sepa_inst"), ("emea", 1, "fps"), ("na", 0, "fednow"),
                                ("latam", 0, "pix"), ("latam", 1, "spei"), ("apac", 0, "npp"), ("apac", 1, "fast")]:
        s, _ = verdicts(tenant, index)
        event_type, payload = decide_route(CLEAR, ALLOW, s.payment, TENANTS[tenant])
        assert (event_type, payload["rail"]) == ("PaymentRouted", rail)


def test_sanctions_hit_rejects_and_possible_match_holds():
    hit = {**CLEAR, "outcome": "HIT", "best_score": 97.0, "matched_list": "SAMPLE-SDN", "matched_entry_id": "SDN-1",
           "matched_party": "creditor"}
    s, _ = verdicts()
    assert decide_route(hit, ALLOW, s.payment, TENANTS["emea"])[1]["reason_code"] == "sanctions_match"
    event_type, payload = decide_route({**hit, "outcome": "POSSIBLE_MATCH"}, ALLOW, s.payment, TENANTS["emea"])
    assert (event_type, payload["reason_code"]) == ("PaymentHeld", "sanctions_possible_match")


def test_fraud_block_rejects_even_when_sanctions_only_holds():
    s, _ = verdicts()
    block = {"outcome": "BLOCK", "score": 95, "rules_triggered": ["amount_above_max"]}
    possible = {**CLEAR, "outcome": "POSSIBLE_MATCH", "matched_party": "debtor", "matched_list": "L",
                "matched_entry_id": "1", "best_score": 88.0}
    event_type, payload = decide_route(possible, block, s.payment, TENANTS["emea"])
    assert (event_type, payload["reason_code"]) == ("PaymentRejected", "fraud_score_too_high")


def test_join_waits_for_both_verdicts_in_either_order(tmp_path):
    routing = stage(tmp_path)
    s1, f1 = verdicts()
    assert routing.handle_batch([s1], at(1)) == []
    [first] = routing.handle_batch([f1], at(2))
    s2, f2 = verdicts()
    assert routing.handle_batch([f2], at(1)) == []
    [second] = routing.handle_batch([s2], at(2))
    assert first.event_type == second.event_type == "PaymentRouted"
    # Caused by the sanctions verdict whatever arrived last, so ids are order-independent.
    assert first.causation_id == s1.event_id and second.causation_id == s2.event_id


def test_join_survives_a_restart_and_redelivery_re_emits_the_same_decision(tmp_path):
    s, f = verdicts()
    routing = stage(tmp_path)
    routing.handle_batch([s], at(1))
    routing.close()
    restarted = stage(tmp_path)
    [decision] = restarted.handle_batch([f], at(2))
    assert restarted.handle_batch([f], at(3)) == [decision]
    assert restarted.handle_batch([s], at(4)) == [decision]


def test_missing_verdict_times_out_to_a_rejection_once(tmp_path):
    routing = stage(tmp_path)
    s, f = verdicts()
    routing.handle_batch([s], at(0))
    timeout_s = TENANTS["emea"].routing.verdict_timeout_s
    assert routing.tick(at(timeout_s - 1)) == []
    [rejected] = routing.tick(at(timeout_s + 1))
    assert rejected.event_type == "PaymentRejected"
    assert rejected.payload["reason_code"] == "screening_verdict_timeout"
    assert "fraud" in rejected.payload["reason_detail"]
    # Not confirmed as published (a crash before the broker took it): emitted again.
    assert routing.tick(at(timeout_s + 2)) == [rejected]
    routing.published([rejected])
    assert routing.tick(at(timeout_s + 100)) == []
    # The late verdict does not reopen the decision.
    assert routing.handle_batch([f], at(timeout_s + 2)) == [rejected]
