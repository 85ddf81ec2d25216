"""Status inquiry on the real broker, through the public API, under load.

Two rails misbehave at once while load runs over every rail (CLEARING SIMULATOR faults):
- emea's SEPA Inst settles every payment but answers only after the execution stage's
  clearing timeout: each call times out, execution asks the rail (pacs.028), the rail
  answers ACSC (pacs.002), and the payment ends SETTLED, posted by the ledger.
- apac's NPP loses every pacs.008 on the way: each call times out, the rail answers
  "never received" (NOOR); execution sends again while the time limit allows, and once
  the time limit plus the inquiry margin has passed the payment ends FAILED
  `rail_time_limit_exceeded`, its reservation released.
Nothing may be lost, recorded twice or dead-lettered, and `payorch ledger verify` passes.
A second test has the rail answer no inquiry at all: the payment is dead-lettered for a
person after the bounded rounds, and a replay, once the rail answers, settles it.

The wait for the load's end is the product's own bound, computed from the same tenant
files the system runs with: each rail's time limit, plus the inquiry margin and every
inquiry delay, plus one clearing timeout and the runtime's retry jitter per round.
Breakers are made tolerant on the two rails (min_calls at its maximum) so that the test
sees the inquiry, not a breaker holding payments back until their time limit.
"""

from __future__ import annotations

import time

import httpx
import pytest

from orchestrator.settings import RetrySettings
from orchestrator.tenants import RailConfig, load_tenants
from orchestrator.samples import sample_body
from tests.integration.fault_support import check_after_fault, dead_lettered_payments, tenants_dir
from tests.integration.test_faults import finish_load, start_load
from tests.harness import System

pytestmark = pytest.mark.integration

RATE_PER_S = 20
DURATION_S = 6
# The time the other fault tests allow a load to drain, beyond the product's own bound:
# the flow from intake to routing and from execution to a terminal status, under load.
FLOW_ALLOWANCE_S = 150
NO_BREAKER = {"min_calls": 100_000}
FAULTS = {
    "emea.sepa_inst": {"time_limit_s": 20, "clearing": {"timeout_ms": 1000}, "breaker": NO_BREAKER,
                       "simulator": {"response_delay_ms": 2500}},
    "apac.npp": {"time_limit_s": 20, "clearing": {"timeout_ms": 1000}, "breaker": NO_BREAKER,
                 "simulator": {"loss_rate": 1.0}},
}


def longest_wait_after_routing_s(rail: RailConfig, retry: RetrySettings) -> float:
    """How long after routing a payment on `rail` can still be undecided, at most."""
    inquiry = rail.status_inquiry
    per_round_s = rail.clearing.timeout_ms / 1000 + retry.jitter
    return rail.time_limit_s + inquiry.longest_wait_after_limit_s() + inquiry.rounds_max * per_round_s


def timeline_of(record: dict, event_type: str) -> list[dict]:
    return [step for step in record["timeline"] if step["event_type"] == event_type]


def test_a_timeout_the_rail_settled_ends_settled_and_one_it_never_received_ends_failed_released(
        kafka_bootstrap, tmp_path):
    tenants = tenants_dir(tmp_path, rail_overrides=FAULTS)
    rails = {f"{t.tenant_id}.{r.name}": r for t in load_tenants(tenants).values() for r in t.rails}
    assert rails["apac.npp"].simulator.loss_rate == 1.0  # the faults are in the files the system reads
    system = System(kafka_bootstrap, tmp_path, extra_env={"PAYORCH_TENANTS_DIR": str(tenants)})
    system.start_all()
    try:
        retry = system.settings().runtime.retry
        product_wait_s = max(longest_wait_after_routing_s(rails[name], retry) for name in FAULTS)
        print(f"longest undecided time after routing, from the settings: {product_wait_s:.1f} s")
        thread, box = start_load(system, duration_s=DURATION_S, rate_per_s=RATE_PER_S,
                                 drain_timeout_s=DURATION_S + product_wait_s + FLOW_ALLOWANCE_S)
        result = finish_load(thread, box, system)
        offered = int(RATE_PER_S * DURATION_S)
        counts = check_after_fault(system, "status-inquiry-late-answer-and-lost-rail", result, offered=offered)
        assert counts["dead_lettered"] == 0

        with httpx.Client() as client:
            records = [system.get(t, p, client).json() for p, t in result.payments.items()]
        by_rail: dict[str, list[dict]] = {}
        for record in records:
            routed = timeline_of(record, "PaymentRouted")
            by_rail.setdefault(routed[0]["rail"] if routed else "-", []).append(record)
        late, lost = by_rail.get("sepa_inst", []), by_rail.get("npp", [])
        assert late and lost, f"the load must use both rails: {sorted(by_rail)}"

        # What each rail recorded: a FAILED payment must never be among them.
        with httpx.Client(timeout=30) as client:
            report = {rail: {row["uetr"] for row in client.get(f"{system.sim_url}/rails/{rail}/report").json()[
                "transactions"]} for rail in by_rail if rail != "-"}
        for rail, payments in by_rail.items():
            failed_yet_settled = [r["payment_id"] for r in payments
                                  if r["status"] == "FAILED" and r["payment_id"] in report.get(rail, ())]
            assert not failed_yet_settled, f"FAILED though {rail} settled them: {failed_yet_settled}"

        def was_sent(record: dict) -> bool:
            """A call went out and timed out. (On a machine slow enough that a payment
            reaches execution after its rail's time limit, it is never sent and ends
            FAILED rail_time_limit_exceeded at once, without an inquiry: also right.)"""
            return "clearing_timeout" in [w["reason_code"] for w in timeline_of(record, "PaymentDeferred")]

        # The rail settled them; its answer timed out; the inquiry found them settled.
        sent_late = [r for r in late if was_sent(r)]
        for record in sent_late:
            assert record["status"] == "SETTLED", record
            assert not timeline_of(record, "PaymentFailed") and not timeline_of(record, "FundsReleased")
            assert timeline_of(record, "PaymentExecuted") and timeline_of(record, "FundsPosted")
            assert record["payment_id"] in report["sepa_inst"]
        # The rail never received them: FAILED after the time limit, the funds released.
        sent_lost = [r for r in lost if was_sent(r)]
        for record in lost:
            assert record["status"] == "FAILED", record
            assert (record["reason"]["code"], record["reason"]["iso_code"]) == ("rail_time_limit_exceeded", "AB05")
            assert timeline_of(record, "FundsReleased"), record["timeline"]
            assert not timeline_of(record, "PaymentExecuted")
        for record in sent_lost:
            (failed,) = timeline_of(record, "PaymentFailed")
            assert "never received" in failed["reason_detail"], failed
            assert "status_inquiry_pending" in [w["reason_code"] for w in timeline_of(record, "PaymentDeferred")]
        for record in late + lost:
            if not was_sent(record):
                assert record["status"] == "FAILED" and record["reason"]["code"] == "rail_time_limit_exceeded"
        print(f"late answers: {len(sent_late)} of {len(late)} sent, all SETTLED; "
              f"lost: {len(sent_lost)} of {len(lost)} sent, all FAILED and released")
        assert sent_late and sent_lost, "no payment reached the faulty rails before its time limit"
        assert counts["settled"] + counts["failed"] + counts["rejected"] == offered
        assert counts["failed"] >= len(lost)
    finally:
        system.stop()


GIVE_UP_FAULT = {"emea.sepa_inst": {
    "time_limit_s": 5, "clearing": {"timeout_ms": 1000}, "breaker": NO_BREAKER,
    "status_inquiry": {"not_found_margin_s": 1, "rounds_max": 2, "backoff_s": [1], "early_retry_s": 1},
    "simulator": {"response_delay_ms": 2500, "inquiry_outage": True}}}


def test_a_payment_whose_outcome_the_rail_never_confirms_is_dead_lettered_then_replayed_to_settled(
        kafka_bootstrap, tmp_path):
    """The rail settles the payment, its answer times out, and it answers no status
    inquiry (503): after the bounded rounds the payment is dead-lettered for a person,
    its funds still reserved, never FAILED. Once the rail answers inquiries again, a
    replay of the dead letter asks, and the payment ends SETTLED."""
    tenants = tenants_dir(tmp_path, rail_overrides=GIVE_UP_FAULT)
    rail = load_tenants(tenants)["emea"].rails_by_name["sepa_inst"]
    system = System(kafka_bootstrap, tmp_path, extra_env={"PAYORCH_TENANTS_DIR": str(tenants)})
    system.start_all()
    try:
        wait_s = longest_wait_after_routing_s(rail, system.settings().runtime.retry) + FLOW_ALLOWANCE_S
        answer = system.post("emea", sample_body("emea", 0))
        assert answer.status_code == 202, answer.text
        payment_id = answer.json()["payment_id"]

        deadline = time.monotonic() + wait_s
        while payment_id not in dead_lettered_payments(system):
            assert time.monotonic() < deadline, f"not dead-lettered within {wait_s:.0f} s: {system.get('emea', payment_id).json()}"
            time.sleep(1)
        assert dead_lettered_payments(system)[payment_id] == {"execution"}
        listing = system.cli("dlq", "list")
        assert "PaymentStatusUnknown" in listing.stdout, listing.stdout
        record = system.get("emea", payment_id).json()
        assert record["status"] == "ROUTED", record  # not terminal: a person decides
        waits = [w["reason_code"] for w in timeline_of(record, "PaymentDeferred")]
        assert waits[0] == "clearing_timeout" and waits[-1] == "clearing_status_unknown", waits
        assert not timeline_of(record, "PaymentFailed") and not timeline_of(record, "FundsReleased")

        ended = httpx.post(f"{system.sim_url}/admin/rails/sepa_inst/behaviour", json={"inquiry_outage": False},
                           timeout=30)
        assert ended.status_code == 200, ended.text
        replay = system.cli("dlq", "replay", "--payment-id", payment_id)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        done = system.wait_terminal({payment_id: "emea"}, timeout_s=wait_s)
        assert done.get(payment_id, {}).get("status") == "SETTLED", system.get("emea", payment_id).json()
        verify = system.cli("ledger", "verify")
        assert verify.returncode == 0 and "all invariants hold" in verify.stdout, verify.stdout + verify.stderr
    finally:
        system.stop()
