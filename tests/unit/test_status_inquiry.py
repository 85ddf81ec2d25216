"""Status inquiry: the pacs.028 we send (XSD-validated), the pacs.002 answers we read,
the decision table with its bounds, and the CLEARING SIMULATOR's answers."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from lxml import etree

from adapters.clearing_client import ClearingProtocolError, ClearingTimeout, ClearingUnavailable
from adapters.clearing_simulator import ClearingSimulator, create_simulator_app
from adapters.iso20022 import IsoDocumentError, parse_pacs002, validate
from adapters.iso20022.pacs002 import TransactionStatus, build_pacs002
from adapters.iso20022.pacs028 import StatusRequest, build_pacs028, parse_pacs028
from orchestrator.status_inquiry import Action, AnswerKind, decide, read_answer
from orchestrator.tenants import StatusInquiryConfig
from tests.unit.test_clearing_simulator import TENANTS, XML, pacs008, payment_for, submit

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
UETR = str(uuid.uuid4())


def inquiry(*uetrs: str, message_id: str = "IQ-1") -> bytes:
    return build_pacs028([StatusRequest("E2E-1", uetr) for uetr in uetrs], message_id=message_id, created_at=T0,
                         original_message_id="PO-ORIGINAL")


# -- pacs.028 ------------------------------------------------------------------------


def test_pacs028_is_valid_against_the_official_xsd_and_round_trips():
    document = inquiry(UETR, str(uuid.uuid4()))
    root = etree.fromstring(document)
    validate(root, "pacs.028.001.05")  # raises on any violation
    assert etree.QName(root).namespace == "urn:iso:std:iso:20022:tech:xsd:pacs.028.001.05"
    parsed = parse_pacs028(document)
    assert parsed.message_id == "IQ-1" and parsed.created_at == T0
    assert (parsed.original_message_id, parsed.original_message_type) == ("PO-ORIGINAL", "pacs.008.001.08")
    assert parsed.requests[0] == StatusRequest("E2E-1", UETR)
    # The UETR travels as OrgnlTxId = its 32 hex digits (the TxId of our pacs.008).
    assert root.find(".//{*}OrgnlTxId").text == uuid.UUID(UETR).hex


def test_pacs028_refuses_what_the_schema_refuses():
    with pytest.raises(IsoDocumentError) as error:
        build_pacs028([StatusRequest("E2E-1", UETR)], message_id="M" * 36, created_at=T0)
    assert error.value.problem_type == "schema-violation"
    with pytest.raises(IsoDocumentError):
        build_pacs028([], message_id="IQ", created_at=T0)
    tampered = inquiry(UETR).replace(b"<MsgId>IQ-1</MsgId>", b"<MsgId></MsgId>")
    with pytest.raises(IsoDocumentError) as error:
        parse_pacs028(tampered)
    assert error.value.problem_type == "schema-violation"
    not_a_uetr = inquiry(UETR).replace(uuid.UUID(UETR).hex.encode(), b"SOMETXID")
    with pytest.raises(IsoDocumentError) as error:
        parse_pacs028(not_a_uetr)
    assert error.value.problem_type == "unknown-transaction-reference"


# -- reading the pacs.002 answer -----------------------------------------------------


def answer(status: str, reason: str | None = None, uetr: str = UETR) -> bytes:
    document = build_pacs002("IQ-1", "pacs.028.001.05", [TransactionStatus("E2E-1", uetr, status, reason)],
                             message_id="SIM-1", created_at=T0)
    validate(etree.fromstring(document), "pacs.002.001.12")
    return document


@pytest.mark.parametrize(("raw", "kind"), [
    (answer("ACSC"), AnswerKind.settled),
    (answer("RJCT", "AC04"), AnswerKind.rejected),
    (answer("RJCT", "NOOR"), AnswerKind.not_received),
    (answer("PDNG"), AnswerKind.pending),
    (answer("ACSC", uetr=str(uuid.uuid4())), AnswerKind.unreadable),  # about another payment
    (b"<not-xml", AnswerKind.unreadable),
    (ClearingTimeout("no answer"), AnswerKind.unreachable),
    (ClearingUnavailable("503"), AnswerKind.unreachable),
    (ClearingProtocolError("problem+json"), AnswerKind.unreadable),
])
def test_each_answer_is_read_as_what_it_says(raw, kind):
    read = read_answer(raw, UETR)
    assert read.kind is kind, read.detail
    if kind in (AnswerKind.settled, AnswerKind.rejected):
        assert read.status is not None and read.status.original_uetr == UETR


# -- the decision table --------------------------------------------------------------

CONFIG = StatusInquiryConfig(not_found_margin_s=2.0, rounds_max=3, backoff_s=(1.0, 5.0), early_retry_s=1.0)
DEADLINE = T0 + timedelta(seconds=10)
FINAL_AT = DEADLINE + timedelta(seconds=2)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(("kind", "now", "rounds", "expected"), [
    (AnswerKind.settled, at(1), 0, (Action.settled, 0, None)),
    (AnswerKind.settled, at(60), 2, (Action.settled, 2, None)),
    (AnswerKind.rejected, at(1), 0, (Action.failed, 0, None)),
    # Not received: sent again before the time limit, asked again at limit + margin, then failed.
    (AnswerKind.not_received, at(3), 0, (Action.resend, 0, at(3))),
    (AnswerKind.not_received, at(10), 0, (Action.ask_again, 0, FINAL_AT)),
    (AnswerKind.not_received, at(11.999), 0, (Action.ask_again, 0, FINAL_AT)),
    (AnswerKind.not_received, at(12), 0, (Action.failed, 0, None)),
    (AnswerKind.not_received, at(40), 2, (Action.failed, 2, None)),
    # Pending or unanswered before limit + margin: asked again soon, never past final_at, no round used.
    (AnswerKind.pending, at(3), 0, (Action.ask_again, 0, at(4))),
    (AnswerKind.unreachable, at(11.5), 0, (Action.ask_again, 0, FINAL_AT)),
    (AnswerKind.unreadable, at(11.5), 0, (Action.ask_again, 0, FINAL_AT)),
    # After it: each answer uses a round, delays from the schedule, the last repeating ...
    (AnswerKind.pending, at(12), 0, (Action.ask_again, 1, at(13))),
    (AnswerKind.unreachable, at(13), 1, (Action.ask_again, 2, at(18))),
    # ... and after rounds_max rounds the payment is given up to a person.
    (AnswerKind.unreachable, at(18), 2, (Action.give_up, 3, None)),
    (AnswerKind.pending, at(99), 7, (Action.give_up, 8, None)),
])
def test_the_decision_table(kind, now, rounds, expected):
    decision = decide(kind, now=now, deadline=DEADLINE, config=CONFIG, rounds=rounds)
    assert (decision.action, decision.rounds, decision.retry_at) == expected


def test_a_rail_that_never_answers_is_given_up_within_the_longest_wait():
    """Walk the decisions as the runtime would: every wait is bounded, none is lost."""
    now, rounds, steps = at(0.5), 0, 0
    while True:
        decision = decide(AnswerKind.unreachable, now=now, deadline=DEADLINE, config=CONFIG, rounds=rounds)
        steps += 1
        if decision.action is Action.give_up:
            break
        assert decision.action is Action.ask_again and decision.retry_at > now
        now, rounds = decision.retry_at, decision.rounds
    assert now <= DEADLINE + timedelta(seconds=CONFIG.longest_wait_after_limit_s())
    assert CONFIG.longest_wait_after_limit_s() == 2.0 + 1.0 + 5.0
    assert steps < 20


def test_a_lost_payment_fails_at_its_first_inquiry_after_the_limit_plus_margin():
    """The lesson of a lost branch: waiting for the limit uses no rounds, so "not
    received" at final_at fails the payment whatever rounds_max is."""
    tight = StatusInquiryConfig(not_found_margin_s=1.0, rounds_max=1, backoff_s=(1.0,))
    early = decide(AnswerKind.unreachable, now=at(10.5), deadline=DEADLINE, config=tight, rounds=0)
    assert (early.action, early.rounds) == (Action.ask_again, 0)
    late = decide(AnswerKind.not_received, now=early.retry_at, deadline=DEADLINE, config=tight, rounds=early.rounds)
    assert late.action is Action.failed


# -- the CLEARING SIMULATOR's answers --------------------------------------------------


@pytest.fixture
def client():
    with TestClient(create_simulator_app(TENANTS, seed=99)) as test_client:
        yield test_client


def ask(client: TestClient, rail: str, *uetrs: str):
    response = client.post(f"/rails/{rail}/pacs028", content=inquiry(*uetrs), headers=XML)
    assert response.status_code == 200, response.text
    return parse_pacs002(response.content)


def test_the_simulator_answers_from_what_it_recorded(client):
    settled = payment_for("sepa_inst")
    assert submit(client, "sepa_inst", pacs008("sepa_inst", settled)).status_code == 200
    client.post("/admin/rails/sepa_inst/behaviour", json={"unknown_creditor_accounts": ["FR1420041010050500013M02606"]})
    rejected = payment_for("sepa_inst")
    assert submit(client, "sepa_inst", pacs008("sepa_inst", rejected)).status_code == 200
    never = str(uuid.uuid4())
    report = ask(client, "sepa_inst", settled.payment_id, rejected.payment_id, never)
    assert report.original_message_type == "pacs.028.001.05"
    got = {s.original_uetr: (s.status, s.reason_code) for s in report.statuses}
    assert got == {settled.payment_id: ("ACSC", None), rejected.payment_id: ("RJCT", "AC03"),
                   never: ("RJCT", "NOOR")}
    # One settled payment is answered with its settlement time as the acceptance time.
    single = ask(client, "sepa_inst", settled.payment_id)
    row = next(r for r in client.get("/rails/sepa_inst/report").json()["transactions"]
               if r["uetr"] == settled.payment_id)
    # (CreDtTm carries milliseconds, as in the answer to the pacs.008.)
    settled_at = datetime.fromisoformat(row["settled_at"])
    assert settled_at - timedelta(milliseconds=1) < single.statuses[0].accepted_at <= settled_at
    # Another rail never received it.
    assert ask(client, "fednow", settled.payment_id).statuses[0].reason_code == "NOOR"


def test_the_simulator_refuses_a_bad_inquiry_and_is_unavailable_in_an_outage(client):
    bad = client.post("/rails/sepa_inst/pacs028", content=b"<Document/>", headers=XML)
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    assert client.post("/rails/nowhere/pacs028", content=inquiry(UETR), headers=XML).status_code == 404
    client.post("/admin/rails/sepa_inst/behaviour", json={"inquiry_outage": True})
    assert client.post("/rails/sepa_inst/pacs028", content=inquiry(UETR), headers=XML).status_code == 503
    assert submit(client, "sepa_inst", pacs008("sepa_inst")).status_code == 200  # payments still go through
    client.post("/admin/rails/sepa_inst/behaviour", json={"inquiry_outage": False})
    assert client.post("/rails/sepa_inst/pacs028", content=inquiry(UETR), headers=XML).status_code == 200
    client.post("/admin/rails/sepa_inst/outage", json={"seconds": 30})
    assert client.post("/rails/sepa_inst/pacs028", content=inquiry(UETR), headers=XML).status_code == 503


def test_a_lost_message_is_never_recorded_and_a_late_answer_was_settled(client):
    client.post("/admin/rails/sepa_inst/behaviour", json={"loss_rate": 1.0, "loss_hold_ms": 0})
    lost = payment_for("sepa_inst")
    response = submit(client, "sepa_inst", pacs008("sepa_inst", lost))
    assert response.status_code == 504
    assert ask(client, "sepa_inst", lost.payment_id).statuses[0].reason_code == "NOOR"
    assert all(r["uetr"] != lost.payment_id for r in client.get("/rails/sepa_inst/report").json()["transactions"])

    client.post("/admin/rails/sepa_inst/behaviour", json={"loss_rate": 0.0, "response_delay_ms": 50})
    late = payment_for("sepa_inst")
    assert submit(client, "sepa_inst", pacs008("sepa_inst", late)).status_code == 200
    assert ask(client, "sepa_inst", late.payment_id).statuses[0].status == "ACSC"


def test_a_payment_being_processed_is_pending():
    simulator = ClearingSimulator(TENANTS, seed=3)
    simulator.override("sepa_inst", type("O", (), {"model_dump": lambda self, **_: {
        "latency_ms_min": 300, "latency_ms_p50": 300, "latency_ms_max": 300}})())
    payment = payment_for("sepa_inst")

    async def scenario():
        sending = asyncio.create_task(simulator.submit("sepa_inst", pacs008("sepa_inst", payment)))
        await asyncio.sleep(0.05)
        during = await simulator.inquire("sepa_inst", inquiry(payment.payment_id))
        await sending
        after = await simulator.inquire("sepa_inst", inquiry(payment.payment_id))
        return parse_pacs002(during.body), parse_pacs002(after.body)

    during, after = asyncio.run(scenario())
    assert during.statuses[0].status == "PDNG"
    assert after.statuses[0].status == "ACSC"
