"""The CLEARING SIMULATOR's settlement report (window filter, SIMULATOR-ONLY discrepancies)
and the HTTP report port settlement reads it through."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from adapters.clearing_report import HttpReportSource, ReportUnavailable, parse_report
from adapters.clearing_simulator import create_simulator_app
from adapters.iso20022 import parse_pacs002
from tests.unit.test_clearing_simulator import RAILS, TENANTS, pacs008, payment_for, submit


@pytest.fixture
def client():
    with TestClient(create_simulator_app(TENANTS, seed=99)) as test_client:
        yield test_client


def settle(client, rail: str, **changes):
    payment = payment_for(rail, **changes)
    report = parse_pacs002(submit(client, rail, pacs008(rail, payment)).content)
    assert report.statuses[0].status == "ACSC"
    return payment, report.statuses[0].accepted_at


def report(client, rail: str, **params) -> list[dict]:
    answer = client.get(f"/rails/{rail}/report", params={k: v.isoformat() for k, v in params.items()})
    assert answer.status_code == 200
    return answer.json()["transactions"]


def test_the_report_window_is_start_inclusive_and_end_exclusive(client):
    payment, _ = settle(client, "fednow")
    [row] = report(client, "fednow")
    settled_at = datetime.fromisoformat(row["settled_at"])
    assert row["uetr"] == payment.payment_id
    assert report(client, "fednow", since=settled_at, until=settled_at + timedelta(microseconds=1)) == [row]
    assert report(client, "fednow", since=settled_at - timedelta(seconds=1), until=settled_at) == []
    assert report(client, "fednow", since=settled_at + timedelta(microseconds=1)) == []
    assert report(client, "rtp", since=settled_at - timedelta(seconds=1)) == []  # another rail's report


def test_simulator_only_discrepancies_falsify_the_report_as_asked(client):
    kept, _ = settle(client, "sepa_inst")
    dropped, _ = settle(client, "sepa_inst")
    changed, _ = settle(client, "sepa_inst")
    doubled, _ = settle(client, "sepa_inst")
    base = "/admin/rails/sepa_inst/report-discrepancies"
    assert client.post(base, json={"kind": "omit", "uetr": dropped.payment_id}).status_code == 201
    assert client.post(base, json={"kind": "amount", "uetr": changed.payment_id, "amount_minor": 1}).status_code == 201
    assert client.post(base, json={"kind": "duplicate", "uetr": doubled.payment_id}).status_code == 201
    extra = client.post(base, json={"kind": "extra", "amount_minor": 4_200})
    assert extra.status_code == 201
    extra_uetr = extra.json()["uetr"]
    assert uuid.UUID(extra_uetr).version == 4 and extra.json()["currency"] == "EUR"
    rows = report(client, "sepa_inst")
    amounts = {}
    for row in rows:
        amounts.setdefault(row["uetr"], []).append(row["amount_minor"])
    assert amounts == {kept.payment_id: [kept.amount_minor], changed.payment_id: [1],
                       doubled.payment_id: [doubled.amount_minor] * 2, extra_uetr: [4_200]}
    assert len(client.get(base).json()["discrepancies"]) == 4
    # Settlement itself is untouched: only the report lies (the UETR is still answered from memory).
    assert client.delete(base).status_code == 204
    assert {row["uetr"] for row in report(client, "sepa_inst")} == {
        kept.payment_id, dropped.payment_id, changed.payment_id, doubled.payment_id}


def test_an_extra_line_lands_in_the_window_of_its_settled_at(client):
    when = datetime(2026, 11, 27, 10, 0, 5, tzinfo=UTC)
    answer = client.post("/admin/rails/fps/report-discrepancies",
                         json={"kind": "extra", "amount_minor": 10, "settled_at": when.isoformat()})
    assert answer.status_code == 201
    assert len(report(client, "fps", since=when, until=when + timedelta(seconds=1))) == 1
    assert report(client, "fps", since=when + timedelta(seconds=1)) == []


@pytest.mark.parametrize("body", [{"kind": "omit"}, {"kind": "amount", "uetr": "x"}, {"kind": "extra"},
                                  {"kind": "vanish", "uetr": "x"}, {"kind": "omit", "uetr": "x", "colour": 1},
                                  {"kind": "extra", "amount_minor": 0}])
def test_discrepancies_that_say_nothing_are_refused(client, body):
    answer = client.post("/admin/rails/fps/report-discrepancies", json=body)
    assert answer.status_code == 422
    assert client.post("/admin/rails/nope/report-discrepancies", json={"kind": "omit", "uetr": "x"}).status_code == 404


def test_the_http_port_reads_the_window_and_refuses_what_it_cannot_trust(client):
    payment, accepted_at = settle(client, "npp")
    source = HttpReportSource(lambda rail, path: f"http://testserver{path}", client=client)
    rail = RAILS["npp"]
    start = accepted_at.replace(microsecond=0)
    [line] = source.fetch(rail, start, start + timedelta(seconds=1))
    assert (line.uetr, line.amount_minor, line.currency) == (payment.payment_id, payment.amount_minor, "AUD")
    assert line.settled_at.tzinfo is not None
    assert source.fetch(rail, start + timedelta(seconds=1), start + timedelta(seconds=2)) == []
    with pytest.raises(ReportUnavailable):
        source.fetch(RAILS["npp"].model_copy(update={"name": "nope"}), start, start + timedelta(seconds=1))


def test_an_unreachable_or_unreadable_report_is_unavailable_never_empty():
    refused = HttpReportSource(lambda rail, path: f"http://127.0.0.1:9{path}", timeout_s=1.0)
    with pytest.raises(ReportUnavailable):
        refused.fetch(RAILS["npp"], datetime.now(UTC), datetime.now(UTC))
    refused.close()
    for body in ({}, {"rail": "other", "transactions": []}, {"rail": "npp", "transactions": [{"uetr": "x"}]},
                 {"rail": "npp", "transactions": [{"uetr": "x", "amount_minor": 1.5, "currency": "AUD",
                                                   "settled_at": "2026-01-01T00:00:00+00:00"}]}):
        with pytest.raises(ReportUnavailable):
            parse_report(body, "npp")
    transport = httpx.MockTransport(lambda request: httpx.Response(503, json={"title": "outage"}))
    source = HttpReportSource(lambda rail, path: f"http://rail{path}", client=httpx.Client(transport=transport))
    with pytest.raises(ReportUnavailable, match="503"):
        source.fetch(RAILS["npp"], datetime.now(UTC), datetime.now(UTC))
