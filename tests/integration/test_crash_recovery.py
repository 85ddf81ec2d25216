"""Stages SIGKILLed mid-flow lose no payment and post nothing twice.

Load runs through the intake while the routing, execution and ledger processes are
killed without warning and restarted; afterwards every payment has settled, the
ledger holds exactly one posting per payment and balances, and no payment's timeline
holds an event type twice.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from orchestrator.loadgen import offer_load
from orchestrator.topics import TopicNamer
from tests.harness import System

pytestmark = pytest.mark.integration

OFFERED_RATE_PER_S = 100
LOAD_DURATION_S = 6


def diagnose(system: System, payment_ids: list[str]) -> list[dict]:
    """For a payment that never ended: where the intake says the broker stored its first
    event, and what the broker holds there now (the evidence a lost event needs)."""
    settings = system.settings()
    intake_log = (system.log_dir / "intake.log").read_text(errors="replace").splitlines()
    findings = []
    for payment_id in payment_ids:
        line = next((json.loads(l) for l in intake_log if payment_id in l and l.startswith("{")), None)
        finding = {"payment_id": payment_id, "intake": line and {k: line.get(k) for k in
                                                                ("ts", "tenant_id", "partition", "offset")}}
        if line and line.get("offset") is not None:
            topic = TopicNamer(settings.topic_template).topic(line["tenant_id"], "received")
            consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "diagnose",
                                 "isolation.level": "read_uncommitted"})
            partition = TopicPartition(topic, line["partition"], line["offset"])
            finding["watermarks"] = consumer.get_watermark_offsets(partition, timeout=10)
            consumer.assign([partition])
            message = consumer.poll(10)
            finding["at_offset"] = None if message is None or message.error() else (message.key() or b"").decode()
            consumer.close()
            # How far it got: the last event tracking recorded names the stage it waits behind.
            record = system.get(line["tenant_id"], payment_id)
            finding["timeline"] = ([(t["stage"], t["event_type"]) for t in record.json().get("timeline", [])]
                                   if record.status_code == 200 else record.status_code)
        findings.append(finding)
    findings.append({"processes": system.process_states(),
                     "warnings": {name: system.log_problems(name) for name in system.processes
                                  if name != "intake" and system.log_problems(name)}})
    return findings


@pytest.fixture(params=["exactly-once", "at-least-once"])
def system(request, kafka_bootstrap, tmp_path):
    # Both runtime modes must survive crashes: transactions, and idempotent at-least-once.
    exactly_once = "true" if request.param == "exactly-once" else "false"
    running = System(kafka_bootstrap, tmp_path, extra_env={"PAYORCH_RUNTIME__EXACTLY_ONCE": exactly_once})
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


def test_stages_killed_mid_flow_lose_nothing_and_post_nothing_twice(system):
    outcome = {}

    def load() -> None:
        # A 503 means "outcome unknown": the client sends again with the same key.
        outcome["result"] = asyncio.run(offer_load(system.base_url, system.api_keys, rate_per_s=OFFERED_RATE_PER_S,
                                                   duration_s=LOAD_DURATION_S, drain_timeout_s=120,
                                                   retry_unavailable_s=60))

    loader = threading.Thread(target=load)
    loader.start()
    for victim, after_s in (("ledger", 1.5), ("execution", 1.0), ("routing", 1.0), ("ledger", 1.0)):
        time.sleep(after_s)
        system.kill(victim, signal.SIGKILL)
        time.sleep(0.5)
        system.start(victim)
    loader.join(timeout=300)
    result = outcome["result"]
    print("\n".join(result.report_lines()))

    offered = OFFERED_RATE_PER_S * LOAD_DURATION_S
    assert result.accepted == offered, result.report_lines()
    assert not result.unfinished, f"lost or stuck: {diagnose(system, result.unfinished[:5])}"
    assert result.statuses == {"SETTLED": offered}

    # SETTLED does not wait for the ledger (it posts concurrently), and the ledger was
    # the last process killed: give the restarted one time to catch up.
    ledger = sqlite3.connect(system.data_dir / "ledger.sqlite")
    deadline = time.monotonic() + 60
    query = "SELECT payment_id, count(*) FROM entries WHERE phase='post' GROUP BY payment_id"
    while len(ledger.execute(query).fetchall()) < offered and time.monotonic() < deadline:
        time.sleep(0.5)
    posts = ledger.execute(query).fetchall()
    assert len(posts) == offered and all(count == 2 for _, count in posts), "one debit and one credit per payment"
    debits, credits = ledger.execute("SELECT sum(debits_posted), sum(credits_posted) FROM accounts").fetchone()
    assert debits == credits
    pending = ledger.execute("SELECT sum(debits_pending), sum(credits_pending) FROM accounts").fetchone()
    assert pending == (0, 0)

    verify = system.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "all invariants hold" in verify.stdout and f"{offered} ended payments checked" in verify.stdout

    tracking = sqlite3.connect(system.data_dir / "tracking.sqlite")
    duplicated = tracking.execute(
        "SELECT payment_id, event_type, count(*) FROM timeline GROUP BY payment_id, event_type HAVING count(*) > 1"
    ).fetchall()
    assert duplicated == [], f"events recorded twice: {duplicated[:5]}"
