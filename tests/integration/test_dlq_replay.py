"""The operator's path through dead letters, on the real broker.

A newer producer writes events with a schema version (v4) this deployment does not
know yet. The stages that read them cannot decode them and dead-letter them at once
(poison, not retries). `payorch dlq list` shows them by stage and error class; after the
cause is fixed (every stage restarted with the v4 schema), `payorch dlq replay` brings
the payments to SETTLED, and running it again changes nothing and says so.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime

import httpx
import pytest
from confluent_kafka import Producer

from orchestrator.events import EventCodec, received_event
from orchestrator.intake.models import CreditTransferIn
from orchestrator.wire import event_headers
from orchestrator.samples import sample_body
from orchestrator.settings import REPO_ROOT
from orchestrator.topics import TopicNamer
from orchestrator.validation import normalise_payment
from tests.harness import FAULT_REPORT_LINES, System

pytestmark = pytest.mark.integration

POISONED = 12


def schemas_with_v4(target) -> EventCodec:
    """The repo's schemas plus a v4 that adds an optional field, as a newer release would."""
    shutil.copytree(REPO_ROOT / "schemas", target)
    v3 = json.loads((target / "payment_event.v3.avsc").read_text())
    payment = next(f for f in v3["fields"] if f["name"] == "payment")["type"]
    payment["fields"].append({"name": "charge_bearer", "type": ["null", "string"], "default": None,
                              "doc": "test-only v4 field"})
    v3["doc"] = "test-only v4"
    (target / "payment_event.v4.avsc").write_text(json.dumps(v3))
    return EventCodec(target)


def dlq_rows(system: System) -> dict[tuple[str, str, str], int]:
    listing = system.cli("dlq", "list")
    assert listing.returncode == 0, listing.stderr
    rows = {}
    for line in listing.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3].isdigit():
            rows[(parts[0], parts[1], parts[2])] = int(parts[3])
    return rows


def test_dead_letters_replayed_after_the_fix_settle_and_a_second_replay_changes_nothing(kafka_bootstrap, tmp_path):
    system = System(kafka_bootstrap, tmp_path)
    try:
        system.start_all()
        v4 = schemas_with_v4(tmp_path / "schemas-v4")
        assert v4.writer.version == 4
        settings = system.settings()
        topic = TopicNamer(settings.topic_template).topic("emea", "received")
        producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "enable.idempotence": True})
        payment_ids = []
        for index in range(POISONED):
            body = CreditTransferIn.model_validate(sample_body("emea", index))
            payment = normalise_payment(body.to_payment(f"00000000-0000-4000-8000-{index:012d}", "emea"))
            event = received_event(payment, channel="json", idempotency_key=None, occurred_at=datetime.now(UTC),
                                   region="test")
            producer.produce(topic, key=payment.payment_id.encode(), value=v4.encode(event),
                             headers=event_headers(event, 4))
            payment_ids.append(payment.payment_id)
        assert producer.flush(30) == 0

        # Dead-lettered at once by both readers of `received`, with the error class.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = dlq_rows(system)
            if rows.get(("emea", "initiation", "UndecodableEvent")) == POISONED and \
                    rows.get(("emea", "tracking", "UndecodableEvent")) == POISONED:
                break
            time.sleep(1)
        assert rows == {("emea", "initiation", "UndecodableEvent"): POISONED,
                        ("emea", "tracking", "UndecodableEvent"): POISONED}, rows
        shown = system.cli("dlq", "show", payment_ids[0])
        assert shown.returncode == 0 and "writer schema fingerprint" in shown.stdout, shown.stdout

        dry = system.cli("dlq", "replay", "--tenant", "emea", "--stage", "initiation", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"{POISONED} dead letters matched: would replay {POISONED}" in dry.stdout, dry.stdout
        assert all(system.get("emea", p).status_code == 404 for p in payment_ids), "a dry run changes nothing"

        # The fix: roll out the release that knows v4, to every stage.
        system.env["PAYORCH_SCHEMAS_DIR"] = str(tmp_path / "schemas-v4")
        for stage in system.stage_processes:
            system.kill(stage)
            system.start(stage)

        replay = system.cli("dlq", "replay", "--tenant", "emea", "--rate", "50")
        print(replay.stdout)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert f"{2 * POISONED} dead letters matched: replayed {2 * POISONED}" in replay.stdout
        records = system.wait_terminal({p: "emea" for p in payment_ids}, timeout_s=120)
        assert {p: r["status"] for p, r in records.items()} == {p: "SETTLED" for p in payment_ids}

        # The ledger posts concurrently with settlement: let every timeline be complete
        # (FundsPosted in) before taking the picture the second replay must not change.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with httpx.Client() as client:
                before = {p: system.get("emea", p, client).json() for p in payment_ids}
            if all(any(t["event_type"] == "FundsPosted" for t in r["timeline"]) for r in before.values()):
                break
            time.sleep(1)
        again = system.cli("dlq", "replay", "--tenant", "emea")
        print(again.stdout)
        assert again.returncode == 0
        assert f"replayed 0, skipped {2 * POISONED} already replayed" in again.stdout, again.stdout
        time.sleep(3)
        with httpx.Client() as client:
            after = {p: system.get("emea", p, client).json() for p in payment_ids}
        assert after == before, "a second replay changes nothing"
        verify = system.cli("ledger", "verify")
        assert verify.returncode == 0 and "all invariants hold" in verify.stdout, verify.stdout + verify.stderr
        line = (f"FAULT poison-then-replay: offered={POISONED} settled={POISONED} dead_lettered_then_replayed="
                f"{2 * POISONED} second_replay=0 lost=0 duplicated=0")
        print(line)
        FAULT_REPORT_LINES.append(line)
    finally:
        system.stop()
