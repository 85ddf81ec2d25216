"""CLEARING SIMULATOR (local/test stand-in for the rails) and the clearing client."""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from orchestrator.domain import Account, Agent, Party, Payment
from orchestrator.tenants import RailConfig, TenantConfig, load_tenants

from adapters.clearing_client import (
    ClearingClient,
    ClearingProtocolError,
    ClearingTimeout,
    ClearingUnavailable,
)
from adapters.clearing_simulator import (
    RANDOM_REJECT_REASONS,
    BehaviourOverride,
    ClearingSimulator,
    TransactionRecord,
    create_simulator_app,
)
from adapters.iso20022 import build_pacs008, parse_pacs002
from adapters.iso20022.pacs002 import TransactionStatus

ROOT = Path(__file__).resolve().parents[2]
TENANTS = load_tenants(ROOT / "tenants")
RAILS: dict[str, RailConfig] = {rail.name: rail for tenant in TENANTS.values() for rail in tenant.rails}
TENANT_OF = {rail.name: tenant.tenant_id for tenant in TENANTS.values() for rail in tenant.rails}
XML = {"Content-Type": "application/xml"}


def payment_for(rail_name: str, **changes: object) -> Payment:
    rail = RAILS[rail_name]
    if rail.creditor_account == "iban":
        debtor = Party("Alice Example", Account(iban="DE89370400440532013000"), Agent(bic="COBADEFFXXX"))
        creditor = Party("Bob Example", Account(iban="FR1420041010050500013M02606"), Agent(bic="BNPAFRPPXXX"))
    else:
        debtor = Party("Alice Example", Account(number="12345678", bank_code="021000021"))
        creditor = Party("Bob Example", Account(number="87654321", bank_code="011000015"))
    payment = Payment(
        payment_id=str(uuid.uuid4()),
        tenant_id=TENANT_OF[rail_name],
        end_to_end_id="E2E-" + uuid.uuid4().hex[:8],
        amount_minor=10_000,
        currency=rail.currencies[0],
        debtor=debtor,
        creditor=creditor,
        remittance_information="test",
    )
    return payment.replace(**changes)


def pacs008(rail_name: str, *payments: Payment, message_id: str | None = None) -> bytes:
    return build_pacs008(
        list(payments) or [payment_for(rail_name)],
        RAILS[rail_name],
        message_id=message_id or "MSG-" + uuid.uuid4().hex[:12],
        created_at=datetime.now(UTC),
    )


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_simulator_app(TENANTS, seed=1234)
    with TestClient(app) as test_client:
        yield test_client


def submit(client: TestClient, rail: str, document: bytes) -> httpx.Response:
    return client.post(f"/rails/{rail}/pacs008", content=document, headers=XML)


# -- the pacs.008 endpoint ---------------------------------------------------------


def test_healthz_lists_every_rail(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert set(response.json()["rails"]) == set(RAILS)


@pytest.mark.parametrize("rail", sorted(RAILS))
def test_acsc_settles_and_reports(client: TestClient, rail: str) -> None:
    payment = payment_for(rail)
    before = datetime.now(UTC) - timedelta(seconds=1)
    response = submit(client, rail, pacs008(rail, payment, message_id="MSG-ACSC"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    report = parse_pacs002(response.content)
    assert report.original_message_id == "MSG-ACSC"
    assert report.group_status == "ACSC"
    [status] = report.statuses
    assert (status.status, status.original_uetr, status.original_end_to_end_id) == (
        "ACSC", payment.payment_id, payment.end_to_end_id,
    )
    assert status.accepted_at is not None

    rows = client.get(f"/rails/{rail}/report", params={"since": before.isoformat()}).json()["transactions"]
    assert [(r["uetr"], r["end_to_end_id"], r["amount_minor"], r["currency"]) for r in rows] == [
        (payment.payment_id, payment.end_to_end_id, payment.amount_minor, payment.currency)
    ]
    later = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    assert client.get(f"/rails/{rail}/report", params={"since": later}).json()["transactions"] == []


def test_unknown_creditor_account_is_rejected_ac03(client: TestClient) -> None:
    unknown = Party("Nobody", Account(number="99999999", bank_code="011000015"))
    known = payment_for("fednow")
    payment = payment_for("fednow", creditor=unknown)
    report = parse_pacs002(submit(client, "fednow", pacs008("fednow", known, payment)).content)
    assert report.group_status == "PART"
    assert [(s.status, s.reason_code) for s in report.statuses] == [("ACSC", None), ("RJCT", "AC03")]
    assert report.statuses[1].original_uetr == payment.payment_id

    sepa_unknown = Party("Nobody", Account(iban="FR7630006000011234567890189"), Agent(bic="BNPAFRPPXXX"))
    document = pacs008("sepa_inst", payment_for("sepa_inst", creditor=sepa_unknown))
    report = parse_pacs002(submit(client, "sepa_inst", document).content)
    assert [(s.status, s.reason_code) for s in report.statuses] == [("RJCT", "AC03")]
    # Rejected transactions are not in the settlement report.
    rows = client.get("/rails/fednow/report").json()["transactions"]
    assert [row["uetr"] for row in rows] == [known.payment_id]


@pytest.mark.parametrize(
    ("changes", "reason_code"),
    [
        ({"amount_minor": 50_000_001}, "AM02"),  # FedNow's maximum is 500000.00 USD
        ({"currency": "CAD"}, "AM03"),
        ({"creditor": Party("Bob", Account(iban="DE89370400440532013000"))}, "AC01"),
        ({"creditor": Party("Bob", Account(number="123456"))}, "RC01"),
    ],
)
def test_rail_rules(client: TestClient, changes: dict[str, object], reason_code: str) -> None:
    report = parse_pacs002(submit(client, "fednow", pacs008("fednow", payment_for("fednow", **changes))).content)
    assert [(s.status, s.reason_code) for s in report.statuses] == [("RJCT", reason_code)]
    assert report.statuses[0].reason_text


def test_outage_answers_503_until_it_ends(client: TestClient) -> None:
    response = client.post("/admin/rails/fps/outage", json={"seconds": 30})
    assert response.status_code == 200 and response.json()["outage_remaining_s"] > 29
    down = submit(client, "fps", pacs008("fps"))
    assert down.status_code == 503
    assert down.headers["content-type"].startswith("application/problem+json")
    assert int(down.headers["retry-after"]) >= 29
    assert submit(client, "fednow", pacs008("fednow")).status_code == 200  # other rails unaffected
    client.post("/admin/rails/fps/outage", json={"seconds": 0})
    assert submit(client, "fps", pacs008("fps")).status_code == 200


def test_duplicate_uetr_is_answered_from_memory_and_settled_once(client: TestClient) -> None:
    payment = payment_for("sepa_inst")
    document = pacs008("sepa_inst", payment, message_id="MSG-DUP-1")
    first = submit(client, "sepa_inst", document)
    again = submit(client, "sepa_inst", document)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content  # the original pacs.002, byte for byte

    # The same payment inside a new message, next to a new one: replayed, not re-settled.
    other = payment_for("sepa_inst")
    document = pacs008("sepa_inst", payment, other, message_id="MSG-DUP-2")
    mixed = parse_pacs002(submit(client, "sepa_inst", document).content)
    assert mixed.original_message_id == "MSG-DUP-2"
    assert [s.status for s in mixed.statuses] == ["ACSC", "ACSC"]
    rows = client.get("/rails/sepa_inst/report").json()["transactions"]
    assert sorted(row["uetr"] for row in rows) == sorted([payment.payment_id, other.payment_id])

    # The same UETR twice in one message.
    document = pacs008("sepa_inst", other.replace(end_to_end_id="X"), other)
    twice = parse_pacs002(submit(client, "sepa_inst", document).content)
    assert [(s.status, s.reason_code) for s in twice.statuses] == [("ACSC", None), ("RJCT", "DUPL")]


def test_rejection_is_idempotent_too(client: TestClient) -> None:
    client.post("/admin/rails/fednow/behaviour", json={"reject_rate": 1.0})
    payment = payment_for("fednow")
    first = parse_pacs002(submit(client, "fednow", pacs008("fednow", payment)).content).statuses[0]
    assert first.status == "RJCT" and first.reason_code in RANDOM_REJECT_REASONS
    client.post("/admin/rails/fednow/behaviour", json={"reject_rate": 0.0})
    again = parse_pacs002(submit(client, "fednow", pacs008("fednow", payment)).content).statuses[0]
    assert (again.status, again.reason_code) == ("RJCT", first.reason_code)


def test_concurrent_submissions_of_one_uetr_settle_once() -> None:
    simulator = ClearingSimulator(TENANTS, seed=5)
    payment = payment_for("npp")

    async def both() -> list[bytes]:
        responses = await asyncio.gather(
            simulator.submit("npp", pacs008("npp", payment, message_id="A")),
            simulator.submit("npp", pacs008("npp", payment, message_id="B")),
        )
        return [bytes(response.body) for response in responses]

    first_body, second_body = asyncio.run(both())
    assert first_body == second_body  # the second waited for the first and got its report
    assert parse_pacs002(first_body).statuses[0].status == "ACSC"
    assert len(simulator.report("npp", None)) == 1


def test_xsd_invalid_body_gets_400_pacs002_ff01(client: TestClient) -> None:
    document = pacs008("fednow", message_id="MSG-BAD").replace(b"<ChrgBr>SLEV</ChrgBr>", b"<ChrgBr>NONE</ChrgBr>")
    response = submit(client, "fednow", document)
    assert response.status_code == 400
    report = parse_pacs002(response.content)
    assert (report.original_message_id, report.group_status, report.group_reason_code) == ("MSG-BAD", "RJCT", "FF01")
    assert "ChrgBr" in (report.group_reason_text or "")


def test_group_header_mismatch_gets_am18(client: TestClient) -> None:
    document = pacs008("fednow", message_id="MSG-CNT").replace(b"<NbOfTxs>1</NbOfTxs>", b"<NbOfTxs>2</NbOfTxs>")
    report = parse_pacs002(submit(client, "fednow", document).content)
    assert (report.group_status, report.group_reason_code) == ("RJCT", "AM18")


def test_message_for_another_clearing_system_is_rejected(client: TestClient) -> None:
    response = submit(client, "fednow", pacs008("rtp", payment_for("rtp"), message_id="MSG-RTP"))
    assert response.status_code == 400
    report = parse_pacs002(response.content)
    assert (report.original_message_id, report.group_reason_code) == ("MSG-RTP", "FF01")


@pytest.mark.parametrize(
    ("body", "problem_type"),
    [
        (b"definitely not xml", "malformed-xml"),
        (b'<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><Document>&x;</Document>', "forbidden-dtd"),
        (b"<a>" * 5000 + b"</a>" * 5000, "document-too-deep"),
        (b"<Document xmlns='urn:example'><x/></Document>", "unsupported-message"),
    ],
)
def test_unreadable_bodies_get_problem_json(client: TestClient, body: bytes, problem_type: str) -> None:
    response = submit(client, "fednow", body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == problem_type
    assert "root:" not in response.text


def test_unknown_rail_wrong_media_type_and_bad_admin_input(client: TestClient) -> None:
    assert submit(client, "swift", pacs008("fednow")).status_code == 404
    json_body = client.post("/rails/fednow/pacs008", content=b"{}", headers={"Content-Type": "application/json"})
    assert json_body.status_code == 415
    assert client.post("/admin/rails/fednow/outage", json={"seconds": -1}).status_code == 422
    inverted = {"latency_ms_p50": 50, "latency_ms_max": 10}
    assert client.post("/admin/rails/fednow/behaviour", json=inverted).status_code == 422
    assert client.post("/admin/rails/nope/outage", json={"seconds": 1}).status_code == 404


def test_oversize_body_is_refused_413() -> None:
    app = create_simulator_app(TENANTS, max_document_bytes=2_000)
    with TestClient(app) as small:
        document = pacs008("fednow", payment_for("fednow"), payment_for("fednow"))
        assert len(document) > 2_000
        response = submit(small, "fednow", document)
        assert response.status_code == 413
        assert response.json()["type"] == "document-too-large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
            yield document[:1_500]
            yield document[1_500:]

        assert small.post("/rails/fednow/pacs008", content=chunks(), headers=XML).status_code == 413
        assert submit(small, "fednow", pacs008("fednow")).status_code == 200


def test_behaviour_override_changes_latency(client: TestClient) -> None:
    response = client.post("/admin/rails/spei/behaviour", json={"latency_ms_p50": 150, "latency_ms_max": 200})
    assert response.json()["latency_ms_p50"] == 150
    started = time.perf_counter()
    for _ in range(6):
        assert submit(client, "spei", pacs008("spei")).status_code == 200
    assert time.perf_counter() - started >= 0.3  # median 150 ms: at least some were slow
    client.post("/admin/rails/spei/behaviour", json={"latency_ms_p50": 0, "latency_ms_max": 0})
    started = time.perf_counter()
    assert submit(client, "spei", pacs008("spei")).status_code == 200
    assert time.perf_counter() - started < 0.15


def test_latency_distribution_has_the_configured_median_and_bound() -> None:
    simulator = ClearingSimulator(TENANTS, seed=99)
    behaviour = simulator.rails["fednow"].behaviour  # p50 4 ms, max 25 ms
    samples = [simulator.latency_s(behaviour) for _ in range(4001)]
    assert all(0.0 <= s <= 0.025 for s in samples)
    assert statistics.median(samples) == pytest.approx(0.004, abs=0.0005)


def test_a_latency_floor_makes_every_answer_slow() -> None:
    from dataclasses import replace

    simulator = ClearingSimulator(TENANTS, seed=7)
    slow = replace(simulator.rails["fednow"].behaviour, latency_ms_min=3_000, latency_ms_p50=3_200,
                   latency_ms_max=3_500)
    samples = [simulator.latency_s(slow) for _ in range(2001)]
    assert all(3.0 <= s <= 3.5 for s in samples)
    assert statistics.median(samples) == pytest.approx(3.2, abs=0.02)


def test_rail_names_must_be_unique_across_tenants() -> None:
    na = TENANTS["na"]
    clash = TenantConfig.model_validate(
        {**TENANTS["emea"].model_dump(), "rails": [RAILS["fednow"].model_dump() | {"currencies": ["EUR"]}]}
    )
    with pytest.raises(ValueError, match="fednow"):
        create_simulator_app({"na": na, "emea": clash})


def test_state_is_bounded() -> None:
    simulator = ClearingSimulator(TENANTS, seed=3, max_transactions=3)
    simulator.override("fast", BehaviourOverride(latency_ms_p50=0, latency_ms_max=0))

    async def run() -> None:
        for _ in range(5):
            await simulator.submit("fast", pacs008("fast"))

    asyncio.run(run())
    assert len(simulator.report("fast", None)) == 3


# -- the clearing client, against the simulator on loopback ----------------------------


@pytest.fixture
def live_simulator() -> Iterator[tuple[str, ClearingSimulator]]:
    app = create_simulator_app(TENANTS, seed=42)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", app.state.simulator
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_client_submits_and_classifies_failures(live_simulator: tuple[str, ClearingSimulator]) -> None:
    base_url, simulator = live_simulator
    with ClearingClient(base_url, max_connections=4) as clearing:
        payment = payment_for("fednow")
        answer = clearing.submit("/rails/fednow/pacs008", pacs008("fednow", payment), timeout_s=5)
        assert parse_pacs002(answer).statuses[0].original_uetr == payment.payment_id

        # Many threads share one client.
        results: list[str] = []

        def worker() -> None:
            body = clearing.submit("/rails/fednow/pacs008", pacs008("fednow"), timeout_s=5)
            results.append(parse_pacs002(body).statuses[0].status)

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == ["ACSC"] * 16

        # A message-level rejection is an answer, not an error.
        bad = pacs008("fednow").replace(b"<ChrgBr>SLEV</ChrgBr>", b"<ChrgBr>NONE</ChrgBr>")
        assert parse_pacs002(clearing.submit("/rails/fednow/pacs008", bad, timeout_s=5)).group_reason_code == "FF01"

        simulator.start_outage("fednow", 20)
        with pytest.raises(ClearingUnavailable) as outage:
            clearing.submit("/rails/fednow/pacs008", pacs008("fednow"), timeout_s=5)
        assert outage.value.status_code == 503 and outage.value.retry_after_s and outage.value.transient
        simulator.start_outage("fednow", 0)

        simulator.rails["rtp"].behaviour.latency_ms_p50 = simulator.rails["rtp"].behaviour.latency_ms_max = 800
        with pytest.raises(ClearingTimeout) as slow:
            clearing.submit("/rails/rtp/pacs008", pacs008("rtp"), timeout_s=0.2)
        assert slow.value.transient

        with pytest.raises(ClearingProtocolError):
            clearing.submit("/rails/fednow/pacs008", b"not xml", timeout_s=5)  # problem+json 400
        with pytest.raises(ClearingProtocolError):
            clearing.submit("/healthz", b"", timeout_s=5)  # 405 from the framework


def test_client_connection_refused_is_unavailable() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with ClearingClient(f"http://127.0.0.1:{port}") as clearing:
        with pytest.raises(ClearingUnavailable):
            clearing.submit("/rails/fednow/pacs008", b"<x/>", timeout_s=1)


def test_client_refuses_a_200_that_is_not_xml() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}))
    with ClearingClient("http://clearing.test", transport=transport) as clearing:
        with pytest.raises(ClearingProtocolError):
            clearing.submit("/rails/x/pacs008", b"<x/>", timeout_s=1)
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="bad gateway"))
    with ClearingClient("http://clearing.test", transport=transport) as clearing:
        with pytest.raises(ClearingUnavailable) as caught:
            clearing.submit("/rails/x/pacs008", b"<x/>", timeout_s=1)
        assert caught.value.status_code == 502
    clearing.close()  # closing twice is harmless


def test_foreign_message_with_readable_id_gets_pacs002(client: TestClient) -> None:
    long_ns = "urn:iso:std:iso:20022:tech:xsd:" + "x" * 60
    for namespace, expected_type in (
        ("urn:iso:std:iso:20022:tech:xsd:pacs.008.001.02", "pacs.008.001.02"),
        (long_ns, "unknown"),
    ):
        body = f'<Document xmlns="{namespace}"><M><GrpHdr><MsgId>OLD-1</MsgId></GrpHdr></M></Document>'.encode()
        response = submit(client, "fednow", body)
        assert response.status_code == 400
        report = parse_pacs002(response.content)
        assert (report.original_message_id, report.original_message_type) == ("OLD-1", expected_type)
        assert report.group_reason_code == "FF01"


def test_the_report_lists_a_window_of_settled_transactions_also_after_old_ones_were_forgotten():
    """The report reads the rail's settlement index: only its window, and never a
    transaction the simulator no longer remembers (its memory is bounded)."""
    start = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    simulator = _simulator_remembering(2_000, start, max_transactions=1_500)
    # The first 500 were forgotten; of the rest, npp has the odd ones.
    window = simulator.report("npp", start + timedelta(seconds=400), start + timedelta(seconds=610))
    assert [row["end_to_end_id"] for row in window] == [f"E2E-{i}" for i in range(501, 610, 2)]
    assert len(simulator.report("npp", None)) == 750
    assert simulator.report("npp", start + timedelta(seconds=2_000)) == []
    # Forgetting more than it remembers rebuilds the index from what is left.
    simulator = _simulator_remembering(2_000, start, max_transactions=300)
    assert [row["end_to_end_id"] for row in simulator.report("npp", None)] == [
        f"E2E-{i}" for i in range(1_701, 2_000, 2)]


def _simulator_remembering(count: int, start: datetime, *, max_transactions: int) -> ClearingSimulator:
    simulator = ClearingSimulator(TENANTS, seed=1, max_transactions=max_transactions)
    for i in range(count):
        settled_at = start + timedelta(seconds=i)
        status = TransactionStatus(f"E2E-{i}", f"uetr-{i}", "ACSC")
        simulator._remember(TransactionRecord(
            key=f"uetr-{i}", rail="npp" if i % 2 else "fast", uetr=f"uetr-{i}", end_to_end_id=f"E2E-{i}",
            transaction_id=None, amount_minor=100 + i, currency="AUD", status=status, original_message_id="M",
            response_message_id="R", settled_at=settled_at))
    return simulator


def test_the_direct_submission_route_leaves_other_methods_and_paths_to_fastapi(client: TestClient) -> None:
    # Served ahead of FastAPI; anything that is not POST /rails/<one segment>/pacs008 is not.
    assert client.get("/rails/fednow/pacs008").status_code == 405
    assert client.post("/rails/fed/now/pacs008", content=b"<x/>",
                       headers={"content-type": "application/xml"}).status_code == 404
    assert client.post("/rails//pacs008", content=b"<x/>", headers={"content-type": "application/xml"}).status_code == 404
    documented = client.get("/openapi.json").json()["paths"]
    assert "post" in documented["/rails/{rail}/pacs008"]
