"""Status webhooks through the public API, on the real broker: a local receiver (a real
HTTP server on loopback, verifying every Standard Webhooks signature and deduplicating by
`webhook-id`, as the README tells a bank's receiver to) gets each status of each payment
exactly once, despite an outage of the receiver, and despite a SIGKILL of the
notifications stage while its requests are in flight.

The system runs `payorch up`'s plan of stage processes plus the notifications stage in a
process of its own, as `payorch up` runs it when a tenant file configures webhooks. The
tenant files are the shipped ones with an endpoint added to emea and na (loopback, so
`allow_private_addresses`), and the secret in the environment is two secrets, as during a
rotation; the receiver knows only the old one.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from collections import Counter

import httpx
import pytest
import yaml

from orchestrator.samples import sample_body
from orchestrator.settings import REPO_ROOT, Settings
from orchestrator.webhooks import WebhookVerificationError, new_secret, parse_secret, verify
from tests.harness import PROCESS_READY_TIMEOUT_S, System, free_port

pytestmark = pytest.mark.integration

# Short retries so that the receiver's outage ends in seconds, not the production hour.
BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 1.0
# Attempts are bounded by count and age; at one a second, a bound the outage never reaches.
MAX_ATTEMPTS = 1_000
REQUEST_TIMEOUT_S = 5.0
# A delivery due now reaches a receiver that is up within one backoff, one request's time
# limit and the worker's poll; a restarted stage first joins its consumer group.
DELIVERY_DEADLINE_S = BACKOFF_MAX_S + REQUEST_TIMEOUT_S + PROCESS_READY_TIMEOUT_S
# The receiver's answer to each request comes this long after it has the webhook, in the
# kill phase: a SIGKILL sent once the receiver has one leaves that request unanswered.
SLOW_ANSWER_S = 2.0
WEBHOOK_TENANTS = ("emea", "na")


class Receiver:
    """A bank's webhook receiver: verifies the signature, keeps each webhook id once
    (recorded before it answers, as a receiver that commits then replies), answers 200.
    `start` and `stop` make the outage: while stopped nothing listens on the port."""

    def __init__(self, port: int, keys: tuple[bytes, ...]) -> None:
        self.port = port
        self.keys = keys
        self.url = f"http://127.0.0.1:{port}/payorch/webhooks"
        self.lock = threading.Lock()
        self.kept: dict[str, dict] = {}  # webhook id -> body, first copy
        self.copies: Counter[str] = Counter()  # webhook id -> copies received
        self.bodies: dict[str, set[bytes]] = {}
        self.refused: list[str] = []
        self.answer_delay_s = 0.0
        self.server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    webhook_id = verify(receiver.keys, headers, body, now_s=time.time())
                except WebhookVerificationError as exc:
                    with receiver.lock:
                        receiver.refused.append(str(exc))
                    self._answer(401)
                    return
                with receiver.lock:
                    receiver.copies[webhook_id] += 1
                    receiver.bodies.setdefault(webhook_id, set()).add(body)
                    receiver.kept.setdefault(webhook_id, json.loads(body))
                    delay = receiver.answer_delay_s
                if delay:
                    time.sleep(delay)
                self._answer(200)

            def _answer(self, code: int) -> None:
                try:
                    self.send_response(code)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone (killed): nothing to answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def statuses(self) -> Counter[tuple[str, str]]:
        """(payment id, status) -> how many distinct webhooks said it."""
        with self.lock:
            return Counter((body["data"]["payment_id"], body["data"]["status"]) for body in self.kept.values())


@pytest.fixture(scope="module")
def world(kafka_bootstrap, tmp_path_factory):
    work = tmp_path_factory.mktemp("notifications")
    tenants = work / "tenants"
    shutil.copytree(REPO_ROOT / "tenants", tenants)
    old, new = new_secret(), new_secret()
    receiver = Receiver(free_port(), (parse_secret(old),))
    for tenant in WEBHOOK_TENANTS:
        path = tenants / f"{tenant}.yaml"
        config = yaml.safe_load(path.read_text())
        config["notifications"] = {"allow_private_addresses": True, "endpoints": [
            {"name": "core-banking", "url": receiver.url, "secret_env": "PAYORCH_WEBHOOK_SECRET"}]}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    plan = Settings(kafka={"bootstrap_servers": "127.0.0.1:1"}).stage_processes + (("notifications",),)
    system = System(kafka_bootstrap, work, stage_processes=plan, extra_env={
        "PAYORCH_TENANTS_DIR": str(tenants),
        "PAYORCH_WEBHOOK_SECRET": f"{new} {old}",  # mid-rotation: both sign
        "PAYORCH_NOTIFICATIONS__BACKOFF_BASE_S": str(BACKOFF_BASE_S),
        "PAYORCH_NOTIFICATIONS__BACKOFF_MAX_S": str(BACKOFF_MAX_S),
        "PAYORCH_NOTIFICATIONS__REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "PAYORCH_NOTIFICATIONS__MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    })
    try:
        system.start_all()
        yield system, receiver
    finally:
        system.stop()
        receiver.stop()


def post_ok(system: System, tenant: str, body: dict) -> str:
    answer = system.post(tenant, body)
    assert answer.status_code == 202, answer.text
    return answer.json()["payment_id"]


def wait_status(system: System, tenant: str, payment_id: str, status: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    record: dict = {}
    while time.monotonic() < deadline:
        answer = system.get(tenant, payment_id)
        if answer.status_code == 200:
            record = answer.json()
            if record["status"] == status:
                return record
        time.sleep(0.25)
    raise AssertionError(f"{payment_id} not {status} within {timeout_s} s: {record.get('status')}; "
                         f"processes {system.process_states()}")


def review(system: System, tenant: str, payment_id: str, decision: str, reviewer: str) -> None:
    answer = httpx.post(f"{system.base_url}/v1/payments/{payment_id}/review",
                        json={"decision": decision, "comment": f"{decision} by {reviewer}"},
                        headers={**system.auth(tenant), "X-Reviewer": reviewer}, timeout=30)
    assert answer.status_code == 202, answer.text


def deliveries(system: System) -> list[dict]:
    """The delivery log, as an operator reads it."""
    result = system.cli("webhooks", "deliveries", "--json", "--limit", "10000")
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def wait_all_delivered(system: System, expected_count: int, timeout_s: float = DELIVERY_DEADLINE_S) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = deliveries(system)
        if len(rows) == expected_count and all(row["state"] == "delivered" for row in rows):
            return rows
        time.sleep(0.5)
    states = Counter(row["state"] for row in rows)
    raise AssertionError(f"{len(rows)} deliveries ({dict(states)}), expected {expected_count} delivered; "
                         f"notifications log: {system.log_problems('notifications')}")


def test_each_status_reaches_the_receiver_exactly_once_despite_its_outage(world):
    system, receiver = world
    expected: dict[str, set[str]] = {}
    tenant_of: dict[str, str] = {}

    def submit(tenant: str, body: dict, statuses: set[str]) -> str:
        payment_id = post_ok(system, tenant, body)
        expected[payment_id], tenant_of[payment_id] = statuses, tenant
        return payment_id

    # The receiver is down from the start.
    for index in range(3):
        submit("emea", sample_body("emea", index), {"SETTLED"})
    sanctioned = sample_body("emea")
    sanctioned["creditor"] = {**sanctioned["creditor"], "name": "CRIMSON HARBOUR SHIPPING LIMITED"}
    submit("emea", sanctioned, {"REJECTED"})
    unknown_creditor = sample_body("na", 0)
    unknown_creditor["creditor"] = {**unknown_creditor["creditor"],
                                    "account": {"number": "99999999", "bank_code": "021000021"}}
    submit("na", unknown_creditor, {"FAILED"})
    submit("na", sample_body("na", 1), {"SETTLED"})
    released = submit("emea", sample_body("emea", 0, amount="60123.45"), {"HELD", "SETTLED"})
    refused = submit("emea", sample_body("emea", 0, amount="61234.56"), {"HELD", "REJECTED"})
    for payment_id in (released, refused):
        wait_status(system, "emea", payment_id, "HELD")
    review(system, "emea", released, "approve", "alice")
    review(system, "emea", refused, "reject", "carol")
    wait_status(system, "emea", released, "HELD")  # still: the checker has not confirmed
    deadline = time.monotonic() + 60
    while not any(step["event_type"] == "PaymentReviewed" for step in system.get("emea", released).json()["timeline"]):
        assert time.monotonic() < deadline, "the maker's approval never reached the timeline"
        time.sleep(0.25)
    review(system, "emea", released, "approve", "bob")
    records = system.wait_terminal(tenant_of, timeout_s=90)
    assert {p: r["status"] for p, r in records.items()} == {
        p: next(iter(s - {"HELD"})) for p, s in expected.items()}, "the payments ended as planned"

    # Every status is queued and has been tried against the closed port.
    wanted = sum(len(statuses) for statuses in expected.values())
    deadline = time.monotonic() + DELIVERY_DEADLINE_S
    while True:
        rows = deliveries(system)
        if len(rows) == wanted and all(row["attempts"] >= 1 for row in rows):
            break
        assert time.monotonic() < deadline, f"{len(rows)} of {wanted} deliveries queued and tried"
        time.sleep(0.5)
    assert {row["state"] for row in rows} == {"pending"} and receiver.copies == Counter()
    attempts = system.cli("webhooks", "attempts", rows[0]["delivery_id"])
    assert attempts.returncode == 0 and "no answer" in attempts.stdout and "ConnectError" in attempts.stdout, \
        attempts.stdout

    receiver.start()  # the outage ends
    rows = wait_all_delivered(system, wanted)
    got = receiver.statuses()
    assert got == Counter({(p, s): 1 for p, statuses in expected.items() for s in statuses}), got
    assert receiver.refused == [], "every signature verifies with the old secret of the rotation"
    assert set(receiver.copies.values()) == {1}, "an answered webhook is never sent again"
    for webhook_id, body in receiver.kept.items():
        record = records[body["data"]["payment_id"]]
        assert webhook_id == body["data"]["event_id"]
        assert any(step["event_id"] == webhook_id for step in record["timeline"]), "the id is the event's"
        assert body["data"]["tenant_id"] == tenant_of[body["data"]["payment_id"]]
    failed = next(b for b in receiver.kept.values() if b["data"]["status"] == "FAILED")
    assert failed["type"] == "payment.failed" and failed["data"]["reason"]["iso_code"] == "AC03"
    assert any(row["attempts"] > 1 for row in rows), "the outage cost attempts"


def test_a_sigkill_of_the_notifications_stage_mid_delivery_loses_nothing_and_doubles_nothing(world):
    system, receiver = world
    if receiver.server is None:
        receiver.start()
    before = {row["delivery_id"] for row in deliveries(system)}
    seen_before = set(receiver.copies)
    receiver.answer_delay_s = SLOW_ANSWER_S
    expected: dict[str, str] = {}
    for index in range(4):
        expected[post_ok(system, "emea", sample_body("emea", index))] = "emea"

    # Kill the stage while the receiver holds a request it has not answered.
    deadline = time.monotonic() + DELIVERY_DEADLINE_S
    while set(receiver.copies) == seen_before:
        assert time.monotonic() < deadline, "no webhook reached the receiver"
        time.sleep(0.05)
    system.kill("notifications")
    in_flight = set(receiver.copies) - seen_before
    assert in_flight and all(receiver.copies[w] == 1 for w in in_flight), "received, not yet answered"
    # Payments that end while the stage is down.
    for index in range(3):
        expected[post_ok(system, "na", sample_body("na", index))] = "na"
    records = system.wait_terminal(expected, timeout_s=90)
    assert {r["status"] for r in records.values()} == {"SETTLED"}
    receiver.answer_delay_s = 0.0
    system.start("notifications")

    rows = [row for row in wait_all_delivered(system, len(before) + len(expected)) if row["delivery_id"] not in before]
    assert sorted(row["payment_id"] for row in rows) == sorted(expected), "one delivery per payment's status"
    got = receiver.statuses()
    for payment_id in expected:
        assert got[(payment_id, "SETTLED")] == 1, (payment_id, got)
    assert receiver.refused == []
    # The request the kill cut off came again after the restart, with the same id and body.
    assert all(receiver.copies[webhook_id] >= 2 for webhook_id in in_flight), receiver.copies
    assert all(len(bodies) == 1 for bodies in receiver.bodies.values()), "a copy is the same body"
    for row in rows:
        if row["webhook_id"] not in in_flight:
            assert receiver.copies[row["webhook_id"]] == 1, row
