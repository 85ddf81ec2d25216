"""The intake while the broker does not answer: a clear 503, nothing accepted, recovery.

A payment is accepted (202) only once the broker has it, so while the broker is away
the intake must refuse with problem+json `broker-unavailable`, report not ready, and
accept again by itself when the broker is back: the client retries with the same
Idempotency-Key and gets one payment, not two.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from orchestrator.kafka_local import LocalKafka, ensure_kafka_jars
from orchestrator.samples import sample_body
from orchestrator.settings import REPO_ROOT
from tests.harness import System

pytestmark = pytest.mark.integration

# Short, so the refused request does not hold the test for the default 10 s.
PUBLISH_TIMEOUT_S = 3


@pytest.fixture
def broker(tmp_path):
    ensure_kafka_jars(REPO_ROOT)
    local = LocalKafka(log_dir=tmp_path / "kafka-logs")
    try:
        local.start()
    except Exception as exc:  # a broker that cannot start is a failure, not a skip
        pytest.fail(f"the local Kafka broker could not start: {exc}", pytrace=False)
    yield local
    local.stop()


def test_intake_refuses_cleanly_while_the_broker_is_down_and_recovers(broker, tmp_path):
    system = System(broker.bootstrap_servers, tmp_path / "system",
                    extra_env={"PAYORCH_INTAKE__PUBLISH_TIMEOUT_S": str(PUBLISH_TIMEOUT_S)})
    try:
        system.start_all()
        body = sample_body("emea")
        assert system.post("emea", body, key="outage-0").status_code == 202

        # The whole broker freezes (as a hung host or a network partition looks to its
        # clients): connections stay open, nothing answers.
        os.kill(broker.pid, signal.SIGSTOP)
        started = time.monotonic()
        refused_body = sample_body("emea")
        refused = system.post("emea", refused_body, key="outage-1")
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["type"].endswith("/broker-unavailable")
        unconfirmed = refused.json()["payment_ids"]
        assert time.monotonic() - started < PUBLISH_TIMEOUT_S + 5
        deadline = time.monotonic() + 10
        while httpx.get(f"{system.base_url}/readyz").status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert httpx.get(f"{system.base_url}/readyz").status_code == 503
        assert httpx.get(f"{system.base_url}/healthz").status_code == 200

        os.kill(broker.pid, signal.SIGCONT)
        retry_body = sample_body("emea")
        deadline = time.monotonic() + 60
        while True:
            answer = system.post("emea", retry_body, key="outage-2")
            if answer.status_code == 202 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert answer.status_code == 202, answer.text
        again = system.post("emea", retry_body, key="outage-2")
        assert again.json()["payment_id"] == answer.json()["payment_id"]
        # The unconfirmed payment's fate is knowable, and its retry is the same payment.
        retried = system.post("emea", refused_body, key="outage-1")
        assert retried.status_code == 202 and retried.json()["payment_id"] == unconfirmed[0]
        records = system.wait_terminal({unconfirmed[0]: "emea", answer.json()["payment_id"]: "emea"})
        assert {r["status"] for r in records.values()} == {"SETTLED"}
    finally:
        os.kill(broker.pid, signal.SIGCONT)
        system.stop()
