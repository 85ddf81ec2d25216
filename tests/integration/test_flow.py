"""The whole flow on the real broker: every stage its own process, the public API in front.

One system (processes and topics of its own) serves this module's tests; each test
creates its own payments, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime

import httpx
import pytest
from confluent_kafka import Producer

from orchestrator.samples import TENANTS, sample_body
from orchestrator.topics import TopicNamer
from tests.harness import System
from tests.openapi_check import assert_answer_matches

pytestmark = pytest.mark.integration

ALL_STAGES = {"intake", "initiation", "sanctions", "fraud", "routing", "execution", "ledger", "settlement"}


@pytest.fixture(scope="module")
def system(kafka_bootstrap, tmp_path_factory):
    running = System(kafka_bootstrap, tmp_path_factory.mktemp("flow"))
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


def wait_for_event(system: System, tenant: str, payment_id: str, event_type: str, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        record = system.get(tenant, payment_id).json()
        if any(step["event_type"] == event_type for step in record["timeline"]) or time.monotonic() > deadline:
            return record
        time.sleep(0.2)


def post_ok(system: System, tenant: str, body: dict, **kwargs) -> str:
    answer = system.post(tenant, body, **kwargs)
    assert answer.status_code == 202, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    return answer.json()["payment_id"]


def test_a_payment_of_every_tenant_and_rail_settles_with_a_full_timeline(system):
    tenant_of = {}
    for tenant in TENANTS:
        for index in range(2):
            tenant_of[post_ok(system, tenant, sample_body(tenant, index))] = tenant
    records = system.wait_terminal(tenant_of, timeout_s=60)
    assert len(records) == len(tenant_of), f"unfinished; execution log:\n{system.log_tail('execution')}"
    # The ledger posts concurrently with settlement, so its event may trail SETTLED a little.
    records = {pid: wait_for_event(system, tenant_of[pid], pid, "FundsPosted") for pid in records}
    # Every field of a settled payment's answer is one the OpenAPI document describes.
    document = httpx.get(f"{system.base_url}/openapi.json").json()
    for payment_id, tenant in tenant_of.items():
        assert_answer_matches(document, "/v1/payments/{payment_id}", system.get(tenant, payment_id))
    for tenant in TENANTS:
        summary = httpx.get(f"{system.base_url}/v1/ledger/summary", headers=system.auth(tenant))
        assert_answer_matches(document, "/v1/ledger/summary", summary)
        assert summary.json()["transfers"], (tenant, summary.json())
    for payment_id, record in records.items():
        label = f"{record['tenant_id']} {payment_id}"
        assert record["status"] == "SETTLED", (label, record)
        assert record["tenant_id"] == tenant_of[payment_id]
        stages = {step["stage"] for step in record["timeline"]}
        assert stages == ALL_STAGES, (label, stages)
        assert {step["correlation_id"] for step in record["timeline"]} == {payment_id}
        for step in record["timeline"]:
            assert datetime.fromisoformat(step["occurred_at"]).tzinfo is not None
        types = [step["event_type"] for step in record["timeline"]]
        for event_type in ("PaymentReceived", "PaymentInitiated", "SanctionsScreened", "FraudScored",
                           "PaymentRouted", "PaymentExecuted", "FundsPosted", "PaymentSettled"):
            assert types.count(event_type) == 1, (label, types)
        # Reservation races execution by design: when the execution result reaches the
        # ledger first, it posts directly and no reservation is recorded.
        assert types.count("FundsReserved") <= 1, (label, types)


def test_a_gbp_payment_to_a_uk_iban_settles_on_faster_payments(system):
    body = sample_body("emea", 1)  # the Faster Payments sample
    assert body["currency"] == "GBP"
    body["creditor"] = {"name": "Wessex Timber Ltd", "account": {"iban": "GB82 WEST 1234 5698 7654 32"}}
    payment_id = post_ok(system, "emea", body)
    record = system.wait_terminal({payment_id: "emea"})[payment_id]
    assert record["status"] == "SETTLED", record
    routed = next(step for step in record["timeline"] if step["event_type"] == "PaymentRouted")
    assert routed["rail"] == "fps", routed


def test_same_idempotency_key_same_body_gives_the_same_payment_and_other_body_422(system):
    body = sample_body("emea")
    first = system.post("emea", body, key="idem-1")
    again = system.post("emea", body, key="idem-1")
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert again.headers.get("idempotent-replayed") == "true"
    other = system.post("emea", {**body, "amount": "999.99"}, key="idem-1")
    assert other.status_code == 422
    assert other.headers["content-type"].startswith("application/problem+json")
    assert other.json()["type"].endswith("/idempotency-key-reused")
    # The same key under another tenant is another payment.
    assert system.post("na", sample_body("na"), key="idem-1").json()["payment_id"] != first.json()["payment_id"]
    records = system.wait_terminal({first.json()["payment_id"]: "emea"})
    assert records[first.json()["payment_id"]]["status"] == "SETTLED"


def test_another_tenants_payment_answers_404(system):
    payment_id = post_ok(system, "emea", sample_body("emea"))
    assert system.get("emea", payment_id).status_code == 200
    answer = system.get("na", payment_id)
    assert answer.status_code == 404
    assert answer.json()["type"].endswith("/payment-not-found")
    assert system.get("na", "00000000-0000-4000-8000-000000000000").status_code == 404


BAD_BODIES = [
    ("negative amount", lambda b: {**b, "amount": "-5.00"}, 422),
    ("zero amount", lambda b: {**b, "amount": "0"}, 422),
    ("float amount", lambda b: {**b, "amount": 125.5}, 422),
    ("too many decimals", lambda b: {**b, "amount": "1.001"}, 422),
    ("exponent amount", lambda b: {**b, "amount": "1e3"}, 422),
    ("unknown currency", lambda b: {**b, "currency": "ZZZ"}, 422),
    ("currency of another region", lambda b: {**b, "currency": "JPY", "amount": "100"}, 422),
    ("bad IBAN checksum", lambda b: {**b, "debtor": {**b["debtor"], "account": {"iban": "DE89370400440532013001"}}}, 422),
    ("missing creditor", lambda b: {k: v for k, v in b.items() if k != "creditor"}, 422),
    ("missing amount", lambda b: {k: v for k, v in b.items() if k != "amount"}, 422),
    ("unknown field", lambda b: {**b, "surprise": 1}, 422),
    ("over tenant limit", lambda b: {**b, "amount": "100000000.00"}, 422),
    ("bad BIC", lambda b: {**b, "debtor": {**b["debtor"], "agent": {"bic": "NOTABIC!"}}}, 422),
    ("end-to-end id too long", lambda b: {**b, "end_to_end_id": "X" * 36}, 422),
]


@pytest.mark.parametrize(("case", "mutate", "status"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_input_answers_problem_json(system, case, mutate, status):
    answer = system.post("emea", mutate(sample_body("emea")))
    assert answer.status_code == status, (case, answer.text)
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["status"] == status and problem["type"].startswith("https://") and problem["detail"]
    assert "DE89370400440532013001" not in answer.text, "no account number echoed back"


@pytest.mark.parametrize(("case", "content", "headers", "key_of", "status", "kind"), [
    ("malformed json", b'{"amount": ', {"Content-Type": "application/json"}, "emea", 400, "malformed-json"),
    ("json array", b"[1,2]", {"Content-Type": "application/json"}, "emea", 422, "validation-error"),
    ("no credential", b"{}", {"Content-Type": "application/json"}, None, 401, "unauthenticated"),
    ("another tenant named", b"{}", {"X-Tenant-Id": "mars", "Content-Type": "application/json"}, "emea", 403,
     "forbidden"),
    ("wrong media type", b"<x/>", {"Content-Type": "text/plain"}, "emea", 415, "unsupported-media-type"),
    ("oversize body", b"{" + b" " * 70_000 + b"}", {"Content-Type": "application/json"}, "emea", 413,
     "payload-too-large"),
])
def test_bad_requests_answer_problem_json(system, case, content, headers, key_of, status, kind):
    headers = {**headers, **(system.auth(key_of) if key_of else {})}
    answer = httpx.post(f"{system.base_url}/v1/payments", content=content, headers=headers, timeout=10)
    assert answer.status_code == status, (case, answer.text)
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"].endswith("/" + kind)


def test_sanctions_hit_is_rejected_with_reason(system):
    body = sample_body("emea")
    body["creditor"] = {**body["creditor"], "name": "CRIMSON HARBOUR SHIPPING LIMITED"}
    payment_id = post_ok(system, "emea", body)
    record = system.wait_terminal({payment_id: "emea"})[payment_id]
    assert record["status"] == "REJECTED"
    assert record["reason"]["code"] == "sanctions_match"
    assert not any(step["event_type"] == "PaymentRouted" for step in record["timeline"])


def test_clearing_reject_fails_the_payment_with_the_iso_reason_and_releases_funds(system):
    body = sample_body("na", 0)
    body["creditor"] = {**body["creditor"], "account": {"number": "99999999", "bank_code": "021000021"}}
    payment_id = post_ok(system, "na", body)
    record = system.wait_terminal({payment_id: "na"})[payment_id]
    assert record["status"] == "FAILED"
    assert record["reason"]["iso_code"] == "AC03"
    record = wait_for_event(system, "na", payment_id, "FundsReleased")
    types = [step["event_type"] for step in record["timeline"]]
    assert "FundsReleased" in types and "FundsPosted" not in types


def test_sanctions_and_fraud_screen_the_same_payment_concurrently(system):
    """Both consume `initiated` in their own groups: stopping fraud does not stop sanctions."""
    system.kill("fraud", signal.SIGSTOP)
    try:
        payment_id = post_ok(system, "apac", sample_body("apac"))
        deadline = time.monotonic() + 20
        types: list[str] = []
        while time.monotonic() < deadline and "SanctionsScreened" not in types:
            answer = system.get("apac", payment_id)
            types = [s["event_type"] for s in answer.json()["timeline"]] if answer.status_code == 200 else []
            time.sleep(0.1)
        assert "SanctionsScreened" in types and "FraudScored" not in types
        assert answer.json()["status"] == "SCREENED"
    finally:
        system.kill("fraud", signal.SIGCONT)
    record = system.wait_terminal({payment_id: "apac"})[payment_id]
    assert record["status"] == "SETTLED"
    by_type = {s["event_type"]: s for s in record["timeline"]}
    initiated = by_type["PaymentInitiated"]["event_id"]
    # Both verdicts were caused by the same initiated event: fan-out, not a chain.
    assert by_type["SanctionsScreened"]["causation_id"] == initiated
    assert by_type["FraudScored"]["causation_id"] == initiated


def test_poison_message_is_dead_lettered_and_listed(system):
    settings = system.settings()
    topic = TopicNamer(settings.topic_template).topic("latam", "received")
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for n in range(3):
        producer.produce(topic, key=f"poison-{n}".encode(), value=b"\x00garbage" * n,
                         headers=[("event_type", b"PaymentReceived"), ("tenant_id", b"latam")])
    producer.flush(10)
    # A good payment behind the poison still goes through.
    payment_id = post_ok(system, "latam", sample_body("latam"))
    assert system.wait_terminal({payment_id: "latam"})[payment_id]["status"] == "SETTLED"
    listing = system.cli("dlq", "list")
    assert listing.returncode == 0, listing.stderr
    assert "latam" in listing.stdout and "initiation" in listing.stdout and "UndecodableEvent" in listing.stdout
    shown = system.cli("dlq", "show", "poison-1")
    assert "payorch.dlq.origin_topic: " + topic in shown.stdout
    assert "undecodable" in shown.stdout


def test_metrics_and_probes(system):
    document = httpx.get(f"{system.base_url}/openapi.json").json()
    assert httpx.get(f"{system.base_url}/healthz").json() == {"status": "ok"}
    assert_answer_matches(document, "/healthz", httpx.get(f"{system.base_url}/healthz"))
    assert httpx.get(f"{system.base_url}/readyz").status_code == 200
    assert_answer_matches(document, "/readyz", httpx.get(f"{system.base_url}/readyz"))
    assert httpx.get(f"{system.base_url}/metrics").status_code == 401
    metrics = httpx.get(f"{system.base_url}/metrics", headers=system.auth("emea")).text
    assert "payorch_intake_payments_received_total" in metrics


def _pacs008_document(count: int) -> bytes:
    import uuid as _uuid
    from datetime import UTC, datetime as _dt

    from adapters.iso20022.pacs008 import build_pacs008
    from orchestrator.intake.models import CreditTransferIn
    from orchestrator.settings import REPO_ROOT
    from orchestrator.tenants import load_tenants
    from orchestrator.validation import normalise_payment

    tenant = load_tenants(REPO_ROOT / "tenants")["emea"]
    payments = [normalise_payment(CreditTransferIn.model_validate(sample_body("emea")).to_payment(
        str(_uuid.uuid4()), "emea")) for _ in range(count)]
    return build_pacs008(payments, tenant.rails_by_name["sepa_inst"], message_id=f"MSG{_uuid.uuid4().hex[:20]}",
                         created_at=_dt.now(UTC))


def test_iso20022_pacs008_document_becomes_one_payment_per_transaction(system):
    document = _pacs008_document(3)
    headers = {**system.auth("emea"), "Content-Type": "application/xml"}
    answer = httpx.post(f"{system.base_url}/v1/payments/iso20022", content=document, headers=headers, timeout=10)
    assert answer.status_code == 202, answer.text
    payment_ids = answer.json()["payment_ids"]
    assert len(payment_ids) == 3
    again = httpx.post(f"{system.base_url}/v1/payments/iso20022", content=document, headers=headers, timeout=10)
    assert again.json()["payment_ids"] == payment_ids, "the same document maps to the same payments"
    records = system.wait_terminal({pid: "emea" for pid in payment_ids})
    assert [records[pid]["status"] for pid in payment_ids] == ["SETTLED"] * 3


@pytest.mark.parametrize(("case", "document", "status"), [
    ("xxe", b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><d>&x;</d>', 400),
    ("billion laughs", b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><l>&b;</l>',
     400),
    ("not xml", b"hello", 400),
    ("wrong namespace", b'<Document xmlns="urn:example:other"><x/></Document>', 422),
    ("external dtd", b'<?xml version="1.0"?><!DOCTYPE d SYSTEM "http://127.0.0.1:9/x.dtd"><d/>', 400),
    ("deep nesting", b"<a>" * 10_000 + b"</a>" * 10_000, 400),
    ("oversize body", b"<a>" + b"x" * (6 * 1024 * 1024) + b"</a>", 413),
])
def test_hostile_or_wrong_xml_is_refused_quickly(system, case, document, status):
    started = time.monotonic()
    answer = httpx.post(f"{system.base_url}/v1/payments/iso20022", content=document,
                        headers={**system.auth("emea"), "Content-Type": "application/xml"}, timeout=10)
    assert time.monotonic() - started < 2
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "root:" not in answer.text
    assert httpx.get(f"{system.base_url}/healthz").status_code == 200


def test_settled_payment_has_camt054_notifications_for_both_parties(system):
    from lxml import etree

    from adapters.iso20022 import schemas

    payment_id = post_ok(system, "emea", sample_body("emea"))
    assert system.wait_terminal({payment_id: "emea"})[payment_id]["status"] == "SETTLED"
    for party, direction in (("debtor", "DBIT"), ("creditor", "CRDT")):
        answer = httpx.get(f"{system.base_url}/v1/payments/{payment_id}/notification", params={"party": party},
                           headers=system.auth("emea"))
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/xml")
        root = etree.fromstring(answer.content)
        schemas.validate(root, "camt.054.001.08")
        ns = {"c": "urn:iso:std:iso:20022:tech:xsd:camt.054.001.08"}
        assert root.findtext(".//c:Ntry/c:CdtDbtInd", namespaces=ns) == direction
        assert root.findtext(".//c:Ntry/c:Amt", namespaces=ns) == "125.50"
        assert payment_id in answer.text  # the UETR
    # Another tenant's credential cannot tell it from a payment that does not exist.
    assert httpx.get(f"{system.base_url}/v1/payments/{payment_id}/notification",
                     headers=system.auth("na")).status_code == 404
