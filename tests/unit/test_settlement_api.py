"""The intake's settlement endpoints and the exceptions on a payment, read from a real
tracking store and statement that a real settlement close produced (no broker needed)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from lxml import etree

from adapters.iso20022 import schemas
from adapters.iso20022.camt053 import MESSAGE_VERSION as CAMT053
from orchestrator.intake.app import create_app
from orchestrator.intake.credentials import bearer, ensure_local_keys, read_local_keys
from orchestrator.settings import Settings
from orchestrator.stages.settlement import statement_path
from orchestrator.stages.tracking import TrackingStage
from tests.unit.stage_fixtures import TENANTS, at
from tests.unit.test_settlement_cycles import (
    CODEC,
    CYCLE_CODEC,
    CYCLE_S,
    GRACE_S,
    FakeReports,
    close_all,
    executed,
    new_stage,
)

CYCLE = "sepa_inst:20261127T100000:rtgs10"


class NoPublisher:
    """The intake's reads need no broker; nothing here publishes."""

    def close(self) -> None:
        pass


@pytest.fixture
def world(tmp_path):
    reports = FakeReports()
    settlement = new_stage(tmp_path, reports)
    tracking = TrackingStage(TENANTS, "test", tmp_path, codec=CODEC, cycle_codec=CYCLE_CODEC)
    settlement.tick(at(0))
    good, bad = executed(1), executed(2)
    settled = settlement.handle_batch([good, bad], at(3))
    reports.settle(good)  # the rail never reports `bad`: missing_at_rail
    outputs = close_all(settlement, at(CYCLE_S + GRACE_S))
    tracking.handle_batch([good, bad, *settled, *outputs], at(20))
    settings = Settings(data_dir=tmp_path, kafka={"bootstrap_servers": "127.0.0.1:9"})
    ensure_local_keys(tmp_path, sorted(TENANTS))
    with TestClient(create_app(settings, TENANTS, publisher=NoPublisher()), base_url="http://127.0.0.1") as client:
        client.api_keys = read_local_keys(tmp_path)  # tenant id -> key
        yield client, good, bad, tmp_path
    settlement.close()
    tracking.close()


def get(client, path: str, tenant: str = "emea"):
    return client.get(path, headers=bearer(client.api_keys[tenant]))


def test_the_tenant_lists_its_closed_cycles_and_nobody_else_does(world):
    client, *_ = world
    answer = get(client, "/v1/settlement/cycles")
    assert answer.status_code == 200
    cycles = {c["cycle_id"]: c for c in answer.json()["cycles"]}
    assert set(cycles) == {CYCLE, "fps:20261127T100000:net10"}
    assert (cycles[CYCLE]["payment_count"], cycles[CYCLE]["exception_count"]) == (2, 1)
    assert cycles[CYCLE]["links"]["statement"] == f"/v1/settlement/cycles/{CYCLE}/statement"
    assert [c["rail"] for c in get(client, "/v1/settlement/cycles?rail=fps").json()["cycles"]] == ["fps"]
    assert get(client, "/v1/settlement/cycles", tenant="na").json()["cycles"] == []
    assert get(client, "/v1/settlement/cycles?limit=0").status_code == 422


def test_a_cycle_shows_its_summary_and_exceptions_tenant_scoped(world):
    client, good, bad, _ = world
    answer = get(client, f"/v1/settlement/cycles/{CYCLE}")
    assert answer.status_code == 200
    body = answer.json()
    [exception] = body["exceptions"]
    assert (exception["kind"], exception["payment_id"]) == ("missing_at_rail", bad.payment_id)
    assert body["totals"] == [{"currency": "EUR", "count": 2,
                               "amount_minor": good.payment.amount_minor + bad.payment.amount_minor}]
    assert body["rail_totals"] == [{"currency": "EUR", "count": 1, "amount_minor": good.payment.amount_minor}]
    for tenant, path in (("na", f"/v1/settlement/cycles/{CYCLE}"), ("emea", "/v1/settlement/cycles/nope:1:rtgs"),
                         ("na", f"/v1/settlement/cycles/{CYCLE}/statement")):
        refused = get(client, path, tenant)
        assert refused.status_code == 404
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/cycle-not-found")
    assert client.get(f"/v1/settlement/cycles/{CYCLE}").json()["type"].endswith("/unauthenticated")


def test_the_statement_is_served_as_stored_and_refused_when_it_no_longer_matches(world):
    client, good, bad, data_dir = world
    answer = get(client, f"/v1/settlement/cycles/{CYCLE}/statement")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/xml")
    root = etree.fromstring(answer.content)
    schemas.validate(root, CAMT053)
    assert sorted(root.xpath("//d:UETR/text()", namespaces={"d": schemas.namespace_of(CAMT053)})) == sorted(
        [good.payment_id, bad.payment_id])
    path = statement_path(data_dir, "emea", CYCLE)
    path.write_bytes(path.read_bytes().replace(b"<MsgId>", b"<MsgId>X", 1))
    tampered = get(client, f"/v1/settlement/cycles/{CYCLE}/statement")
    assert tampered.status_code == 500 and tampered.json()["type"].endswith("/internal-error")


def test_a_payment_shows_its_reconciliation_exceptions(world):
    client, good, bad, _ = world
    record = get(client, f"/v1/payments/{bad.payment_id}").json()
    assert record["status"] == "SETTLED"
    [exception] = record["exceptions"]
    assert (exception["kind"], exception["cycle_id"], exception["our_amount_minor"]) == (
        "missing_at_rail", CYCLE, bad.payment.amount_minor)
    assert get(client, f"/v1/payments/{good.payment_id}").json()["exceptions"] == []
    assert get(client, f"/v1/payments/{bad.payment_id}", tenant="na").status_code == 404
