"""Held payments reviewed through the public API, on the real broker, in `payorch up`'s
default plan of stage processes: the intake publishes each decision to the reviews
topic, routing applies maker-checker and releases or rejects, and the rest of the flow
runs as for any routed payment.

Tenant files are the shipped ones, except that latam turns maker-checker off and apac
has a 5 s review time limit, so the three rules can be seen in one system.
"""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
import yaml

from orchestrator.samples import sample_body
from orchestrator.settings import REPO_ROOT, Settings
from tests.harness import System

pytestmark = pytest.mark.integration

APAC_TIME_LIMIT_S = 5


@pytest.fixture(scope="module")
def system(kafka_bootstrap, tmp_path_factory):
    work = tmp_path_factory.mktemp("reviews")
    tenants = work / "tenants"
    shutil.copytree(REPO_ROOT / "tenants", tenants)
    for tenant, review in (("latam", {"maker_checker": False}), ("apac", {"time_limit_s": APAC_TIME_LIMIT_S})):
        path = tenants / f"{tenant}.yaml"
        config = yaml.safe_load(path.read_text())
        config["review"] = review
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    plan = Settings(kafka={"bootstrap_servers": "127.0.0.1:1"}).stage_processes
    running = System(kafka_bootstrap, work, extra_env={"PAYORCH_TENANTS_DIR": str(tenants)}, stage_processes=plan)
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


def post_held(system: System, tenant: str, body: dict) -> str:
    answer = system.post(tenant, body)
    assert answer.status_code == 202, answer.text
    payment_id = answer.json()["payment_id"]
    wait_until(system, tenant, payment_id, lambda record: record["status"] == "HELD")
    return payment_id


def wait_until(system: System, tenant: str, payment_id: str, done, timeout_s: float = 45) -> dict:
    deadline = time.monotonic() + timeout_s
    record: dict = {}
    while time.monotonic() < deadline:
        answer = system.get(tenant, payment_id)
        if answer.status_code == 200:
            record = answer.json()
            if done(record):
                return record
        time.sleep(0.25)
    raise AssertionError(f"payment {payment_id} did not get there in {timeout_s} s: {record}; "
                         f"processes {system.process_states()}")


def entries(record: dict, event_type: str) -> list[dict]:
    return [step for step in record["timeline"] if step["event_type"] == event_type]


def review(system: System, tenant: str, payment_id: str, decision: str, reviewer: str, comment: str):
    return httpx.post(f"{system.base_url}/v1/payments/{payment_id}/review",
                      json={"decision": decision, "comment": comment},
                      headers={**system.auth(tenant), "X-Reviewer": reviewer}, timeout=30)


def submitted(answer: httpx.Response) -> dict:
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "HELD" and body["review"]["state"] == "submitted"
    return body


def queue(system: System, tenant: str) -> dict[str, dict]:
    answer = httpx.get(f"{system.base_url}/v1/reviews", headers=system.auth(tenant), timeout=30)
    assert answer.status_code == 200, answer.text
    return {item["payment_id"]: item for item in answer.json()["reviews"]}


def ledger_verifies(system: System) -> None:
    result = system.cli("ledger", "verify")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_fraud_hold_approved_by_maker_then_checker_settles_and_the_ledger_verifies(system):
    payment_id = post_held(system, "emea", sample_body("emea", 0, amount="60123.45"))
    listed = queue(system, "emea")[payment_id]
    assert listed["reason"]["code"] == "fraud_review_required"
    assert listed["fraud"] == {"outcome": "REVIEW", "score": 50, "rules_triggered": ["amount_above_review"]}
    assert listed["review"]["state"] == "awaiting_review" and listed["review"]["requires_checker"] is True

    submitted(review(system, "emea", payment_id, "approve", "alice", "invoice 42 seen, payer called back"))
    wait_until(system, "emea", payment_id, lambda r: entries(r, "PaymentReviewed"))
    waiting = wait_until(system, "emea", payment_id,
                         lambda r: queue(system, "emea").get(payment_id, {}).get("review", {}).get("maker"))
    assert waiting["status"] == "HELD"
    assert queue(system, "emea")[payment_id]["review"]["state"] == "awaiting_checker"
    # The maker cannot confirm their own approval.
    same = review(system, "emea", payment_id, "approve", "Alice", "me again")
    assert same.status_code == 409 and same.json()["type"].endswith("/same-reviewer"), same.text

    submitted(review(system, "emea", payment_id, "approve", "bob", "confirmed against the contract"))
    record = wait_until(system, "emea", payment_id,
                        lambda r: r["status"] == "SETTLED" and entries(r, "FundsPosted"))
    decisions = [(e["reviewer"], e["decision"], e["review_step"], e["outcome"], e["comment"])
                 for e in entries(record, "PaymentReviewed")]
    assert decisions == [("alice", "approve", "maker", "awaiting_checker", "invoice 42 seen, payer called back"),
                         ("bob", "approve", "checker", "approved", "confirmed against the contract")]
    assert [(e["stage"], e["reviewer"]) for e in entries(record, "ReviewSubmitted")] == [("intake", "alice"),
                                                                                          ("intake", "bob")]
    assert len(entries(record, "PaymentRouted")) == 1
    assert payment_id not in queue(system, "emea")
    late = review(system, "emea", payment_id, "reject", "carol", "too late")
    assert late.status_code == 409 and late.json()["type"].endswith("/payment-not-held"), late.text
    ledger_verifies(system)


def test_a_possible_sanctions_match_rejected_on_review_ends_rejected(system):
    body = sample_body("emea", 0)
    body["creditor"] = {**body["creditor"], "name": "Sorokin Trading Company"}
    payment_id = post_held(system, "emea", body)
    hit = queue(system, "emea")[payment_id]["sanctions"]
    assert (hit["outcome"], hit["matched_list"], hit["matched_entry_id"]) == (
        "POSSIBLE_MATCH", "SAMPLE-EU-CFSP", "EU-2001")
    assert 85 <= hit["best_score"] < 92

    submitted(review(system, "emea", payment_id, "reject", "carol", "same owner as the listed entity"))
    record = wait_until(system, "emea", payment_id, lambda r: r["status"] == "REJECTED")
    assert (record["reason"]["code"], record["reason"]["iso_code"]) == ("review_rejected", "MS03")
    [decision] = entries(record, "PaymentReviewed")
    assert (decision["reviewer"], decision["decision"], decision["outcome"], decision["comment"]) == (
        "carol", "reject", "rejected", "same owner as the listed entity")
    assert not entries(record, "PaymentRouted")
    assert payment_id not in queue(system, "emea")


def test_with_maker_checker_off_one_approval_releases_but_a_sanctions_match_still_needs_two(system):
    fraud_hold = post_held(system, "latam", sample_body("latam", 0, amount="250123.45"))
    body = sample_body("latam", 0)
    body["creditor"] = {**body["creditor"], "name": "Mateo Quintana"}
    sanctions_hold = post_held(system, "latam", body)
    listed = queue(system, "latam")
    assert listed[fraud_hold]["review"]["requires_checker"] is False
    assert listed[sanctions_hold]["review"]["requires_checker"] is True

    submitted(review(system, "latam", fraud_hold, "approve", "dora", "regular supplier"))
    submitted(review(system, "latam", sanctions_hold, "approve", "dora", "different person, other birth date"))
    settled = wait_until(system, "latam", fraud_hold, lambda r: r["status"] == "SETTLED" and entries(r, "FundsPosted"))
    assert [e["outcome"] for e in entries(settled, "PaymentReviewed")] == ["approved"]
    waiting = wait_until(system, "latam", sanctions_hold, lambda r: entries(r, "PaymentReviewed"))
    assert waiting["status"] == "HELD"
    assert entries(waiting, "PaymentReviewed")[0]["outcome"] == "awaiting_checker"

    submitted(review(system, "latam", sanctions_hold, "approve", "emil", "confirmed: not the listed person"))
    released = wait_until(system, "latam", sanctions_hold,
                          lambda r: r["status"] == "SETTLED" and entries(r, "FundsPosted"))
    assert [(e["reviewer"], e["outcome"]) for e in entries(released, "PaymentReviewed")] == [
        ("dora", "awaiting_checker"), ("emil", "approved")]
    ledger_verifies(system)


def test_a_hold_nobody_releases_within_the_time_limit_ends_rejected(system):
    payment_id = post_held(system, "apac", sample_body("apac", 0, amount="250123.45"))
    record = wait_until(system, "apac", payment_id, lambda r: r["status"] == "REJECTED",
                        timeout_s=APAC_TIME_LIMIT_S + 30)
    assert record["reason"]["code"] == "review_time_limit_exceeded"
    assert payment_id not in queue(system, "apac")
