"""Cycle close and reconciliation on the real broker: every stage, the intake and the
CLEARING SIMULATOR as their own processes, the EMEA tenant on 10 s cycles.

The simulator's report is falsified through its SIMULATOR-ONLY admin endpoint before the
payments are sent (payment ids follow from the Idempotency-Key, so the discrepancy can
name a payment before it exists): one payment left out of the report, one reported with
another amount, one settlement we never sent. The test then checks that exactly those
three exceptions exist, on the right payments and cycles, through the public API, that
the simulator being unreachable at close time delays the close instead of skipping it,
and that each cycle's camt.053 is served and valid against the official XSD.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from lxml import etree

from adapters.iso20022 import schemas
from adapters.iso20022.camt053 import MESSAGE_VERSION as CAMT053
from orchestrator.samples import sample_body
from orchestrator.settings import REPO_ROOT
from orchestrator.stages.settlement import cycle_at
from orchestrator.tenants import load_tenants
from tests.harness import System
from tests.openapi_check import assert_answer_matches

pytestmark = pytest.mark.integration

CYCLE_S = 10
# Long enough that an execution result always reaches settlement before its cycle closes
# on two busy cores; a late one would show up as an extra `unknown_to_us`.
GRACE_S = 5


def short_cycle_tenants(directory: Path) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "tenants" / "emea.yaml").read_text())
    for rail in raw["rails"]:
        rail["settlement"] = {**rail.get("settlement", {}), "cycle_length_s": CYCLE_S, "close_grace_s": GRACE_S}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "emea.yaml").write_text(yaml.safe_dump(raw))
    return directory


@pytest.fixture(scope="module")
def system(kafka_bootstrap, tmp_path_factory):
    work = tmp_path_factory.mktemp("reconciliation")
    tenants_dir = short_cycle_tenants(work / "tenants")
    running = System(kafka_bootstrap, work, extra_env={"PAYORCH_TENANTS_DIR": str(tenants_dir)})
    running.tenants = load_tenants(tenants_dir)
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


def api(system: System, path: str, client: httpx.Client) -> httpx.Response:
    return client.get(f"{system.base_url}{path}", headers=system.auth("emea"), timeout=30)


def closed_cycles(system: System, client: httpx.Client) -> dict[str, dict]:
    answer = api(system, "/v1/settlement/cycles?limit=1000", client)
    assert answer.status_code == 200, answer.text
    return {cycle["cycle_id"]: cycle for cycle in answer.json()["cycles"]}


def wait_closed(system: System, cycle_ids: set[str], client: httpx.Client, timeout_s: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        closed = closed_cycles(system, client)
        if cycle_ids <= set(closed):
            return closed
        if time.monotonic() > deadline:
            raise AssertionError(f"cycles {sorted(cycle_ids - set(closed))} not closed within {timeout_s}s;"
                                 f" settlement log:\n{system.log_tail('settlement', 40)}")
        time.sleep(0.5)


def settled_cycle(record: dict) -> str:
    [step] = [s for s in record["timeline"] if s["event_type"] == "PaymentSettled"]
    return step["cycle_id"]


def test_injected_rail_discrepancies_give_exactly_their_exceptions_and_a_valid_statement(system):
    run = uuid.uuid4().hex[:8]
    sepa = system.tenants["emea"].rails_by_name["sepa_inst"]
    with httpx.Client() as client:
        # Warm up: the first payment waits for every consumer group to form.
        warm_key = f"recon-{run}-warm"
        assert system.post("emea", sample_body("emea", 0), key=warm_key).status_code == 202
        warm_id = system.payment_id("emea", warm_key)
        assert system.wait_terminal({warm_id: "emea"}, timeout_s=90)[warm_id]["status"] == "SETTLED"

        # Start at the beginning of a cycle, so its close is seconds away, not instants.
        while not 0.2 <= time.time() % CYCLE_S <= 1.5:
            time.sleep(0.05)
        keys = {name: f"recon-{run}-{name}" for name in ("clean", "omitted", "changed", "gbp")}
        ids = {name: system.payment_id("emea", key) for name, key in keys.items()}
        admin = f"{system.sim_url}/admin/rails/sepa_inst/report-discrepancies"
        assert client.post(admin, json={"kind": "omit", "uetr": ids["omitted"]}).status_code == 201
        assert client.post(admin, json={"kind": "amount", "uetr": ids["changed"],
                                        "amount_minor": 12_551}).status_code == 201
        extra = client.post(admin, json={"kind": "extra", "amount_minor": 4_200, "currency": "EUR"})
        assert extra.status_code == 201
        extra_id = extra.json()["uetr"]
        extra_cycle = cycle_at(sepa, datetime.fromisoformat(extra.json()["settled_at"])).cycle_id

        for name in ("clean", "omitted", "changed"):
            answer = system.post("emea", sample_body("emea", 0, amount="125.50"), key=keys[name])
            assert answer.status_code == 202 and answer.json()["payment_id"] == ids[name]
        assert system.post("emea", sample_body("emea", 1), key=keys["gbp"]).status_code == 202
        records = system.wait_terminal({payment_id: "emea" for payment_id in ids.values()}, timeout_s=60)
        assert {name: records[ids[name]]["status"] for name in ids} == dict.fromkeys(ids, "SETTLED"), records
        cycle_of = {name: settled_cycle(records[ids[name]]) for name in ids}
        sepa_cycles = {cycle_of[name] for name in ("clean", "omitted", "changed")}
        assert extra_cycle in sepa_cycles, "the stray settlement falls in the cycle of our payments"

        # The simulator stops answering before the close is due: the close waits for it.
        assert not sepa_cycles & set(closed_cycles(system, client)), "closed before its grace ended"
        system.kill("clearing-sim", signal.SIGSTOP)
        try:
            due_s = max(datetime.strptime(c.split(":")[1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC).timestamp()
                        for c in sepa_cycles) + CYCLE_S + GRACE_S
            time.sleep(max(0.0, due_s - time.time()) + 3 * 1.0 + 5)
            assert not sepa_cycles & set(closed_cycles(system, client)), "closed without the rail's report"
        finally:
            system.kill("clearing-sim", signal.SIGCONT)
        delays = [json.loads(line) for line in (system.log_dir / "settlement.log").read_text().splitlines()
                  if "report is unavailable" in line]
        # Cycles close in window order, so the delay is logged for the oldest due cycle
        # (maybe the warm-up's), which holds back ours.
        assert delays, system.log_tail("settlement", 40)
        assert all(d.get("cycle_id") and d.get("rail") for d in delays)
        assert {d.get("tenant_id") for d in delays} == {"emea"}

        closed = wait_closed(system, set(cycle_of.values()) | {cycle_of["gbp"]}, client, timeout_s=90)

        # Every field of these answers is one the OpenAPI document describes.
        document = client.get(f"{system.base_url}/openapi.json").json()
        assert_answer_matches(document, "/v1/settlement/cycles", api(system, "/v1/settlement/cycles", client))
        for name in ("omitted", "changed"):
            assert_answer_matches(document, "/v1/payments/{payment_id}", api(system, f"/v1/payments/{ids[name]}",
                                                                            client))

        # Exactly the injected discrepancies, on every closed cycle of the tenant.
        found = set()
        for cycle_id in closed:
            answer = api(system, f"/v1/settlement/cycles/{cycle_id}", client)
            assert_answer_matches(document, "/v1/settlement/cycles/{cycle_id}", answer)
            detail = answer.json()
            assert detail["exception_count"] == len(detail["exceptions"])
            found |= {(e["kind"], e["payment_id"], e["cycle_id"]) for e in detail["exceptions"]}
        assert found == {("missing_at_rail", ids["omitted"], cycle_of["omitted"]),
                         ("amount_differs", ids["changed"], cycle_of["changed"]),
                         ("unknown_to_us", extra_id, extra_cycle)}

        # Each payment shows its own exceptions, and only those.
        shown = {name: api(system, f"/v1/payments/{ids[name]}", client).json()["exceptions"] for name in ids}
        assert [e["kind"] for e in shown["omitted"]] == ["missing_at_rail"]
        [changed] = shown["changed"]
        assert (changed["kind"], changed["our_amount_minor"], changed["rail_amount_minor"]) == (
            "amount_differs", 12_550, 12_551)
        assert shown["clean"] == shown["gbp"] == []
        assert api(system, f"/v1/payments/{warm_id}", client).json()["exceptions"] == []

        # The cycle's figures and its statement.
        for cycle_id in sepa_cycles:
            summary = closed[cycle_id]
            ours = [name for name in ("clean", "omitted", "changed") if cycle_of[name] == cycle_id]
            assert summary["payment_count"] >= len(ours)
            for currency in {p["currency"] for p in summary["net_positions"]}:
                assert sum(p["net_minor"] for p in summary["net_positions"] if p["currency"] == currency) == 0
            statement = api(system, f"/v1/settlement/cycles/{cycle_id}/statement", client)
            assert statement.status_code == 200, statement.text
            assert statement.headers["content-type"].startswith("application/xml")
            assert hashlib.sha256(statement.content).hexdigest() == summary["statement_sha256"]
            root = etree.fromstring(statement.content)
            schemas.validate(root, CAMT053)
            uetrs = set(root.xpath("//d:UETR/text()", namespaces={"d": schemas.namespace_of(CAMT053)}))
            assert {ids[name] for name in ours} <= uetrs
            assert extra_id not in uetrs  # the statement is of our books, not of the rail's claim
        other_tenant = httpx.get(f"{system.base_url}/v1/settlement/cycles/{cycle_of['clean']}",
                                 headers=system.auth("na"), timeout=30)
        assert other_tenant.status_code in (400, 404)  # na is not even configured in this system
